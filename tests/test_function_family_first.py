"""A family whose first member has a shape of its own (`w_l{k}: [d_in if k == 0 else d, d]`, an RNN's
`weight_ih_l{k}`) under `@function`: the loop over it runs its first step on its own, with member 0 as
itself, and the rest as a loop over the members from 1 on stacked. Against the plain form (outputs,
gradients, gradcheck and gradgradcheck in float64) at 0, 1, 2 and 3 members."""

from __future__ import annotations

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .test_function_sub_lists import compare_with_plain, plain_pair

WIDENING = """
@function
layer WideningFirst(n: int, d_in: int, d: int, bias: bool = true) {
    for k in range(n) {
        param w_l{k}: [d_in if k == 0 else d, d] = uniform(-0.5, 0.5)
        param s_l{k}: [d] = uniform(0.5, 1.5)
        param b_l{k}: [d] = uniform(-0.5, 0.5) if bias
    }
    example(n = 3, d_in = 2, d = 3)
    forward(x: [B, d_in]) -> [B, ...] {
        h = x
        for k in range(n) {
            h = tanh(h @ w_l{k} * s_l{k} + b_l{k}) * (k + 1)
        }
        return h
    }
}
"""

SHRINKING = """
@function
layer ShrinkingFirst(n: int, d: int) {
    for i in range(n) {
        param w_l{i}: [2 * d if i != 0 else d, d]
    }
    example(n = 2, d = 3)
    forward(x: [B, d]) -> [B, ...] {
        h = x
        for i in range(n) {
            h = cat([sin(h @ w_l{i}), h], dim = -1)[:, : 2 * d]
        }
        return h
    }
}
"""


@pytest.mark.parametrize("n", [0, 1, 2, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_a_family_whose_first_member_differs_derives_against_the_plain_form(n, bias):
    a, b = plain_pair(WIDENING, "widening", "WideningFirst", n=n, d_in=2, d=3, bias=bias)
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


@pytest.mark.parametrize("n", [1, 3])
def test_the_first_member_may_be_the_else_side(n):
    a, b = plain_pair(SHRINKING, "shrinking", "ShrinkingFirst", n=n, d=3)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


def test_the_module_passes_member_0_as_itself_and_the_rest_stacked():
    from layerdsl.codegen.module import emit_file

    spec = parse_file("widening.layer", WIDENING)
    program = check_program([spec])
    plans, problems = plan_backwards([spec])
    assert not problems
    source = emit_file(spec, program, "widening.layer", plans)
    assert "self.w_l0 if self.n > 0 else x.new_empty(0)" in source
    assert 'torch.stack([getattr(self, f"w_l{k}") for k in range(1, self.n)])' in source
    assert "for k in range(n - 1):" in source


def test_a_loop_over_another_range_than_the_familys_is_refused_at_its_range():
    refused = """
@function
layer FirstOutside(n: int, d: int) {
    for k in range(n) {
        param w_l{k}: [1 if k == 0 else d, d]
    }
    example(n = 2, d = 3)
    forward(x: [B, d]) -> [B, d] {
        h = x
        for j in range(2 * n) {
            h = tanh(h @ w_l{j})
        }
        return h
    }
}
"""
    spec = parse_file("outside.layer", refused)
    check_program([spec])
    _, problems = plan_backwards([spec])
    assert [(p.span.line, p.span.col) for p in problems] == [(10, 18)]
    assert "over another range than the family's" in problems[0].message
