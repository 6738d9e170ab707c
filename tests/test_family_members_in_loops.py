"""A loop that reads a family member (`w_l{k}`) at an index the loop does not change binds it once before the
loop, not with a getattr per iteration; one whose index the loop changes still reads it per iteration."""

from __future__ import annotations

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .support import compile_spec

SPEC = """
layer Stacked(n: int, steps: int, bias: bool = true) {
    for k in range(n) {
        param w_l{k}: [4] = uniform(0.5, 1.5)
        param b_l{k}: [4] = uniform(-0.5, 0.5) if bias
    }
    example(n = 2, steps = 3)

    forward(x: [B, 4]) -> [B, 4] {
        h = x
        for k in range(n) {
            for t in range(steps) {
                h = tanh(h * w_l{k} + b_l{k})
            }
        }
        return h
    }
}
"""


def reference(layer, x: torch.Tensor) -> torch.Tensor:
    h = x
    for k in range(layer.n):
        w, b = getattr(layer, f"w_l{k}"), getattr(layer, f"b_l{k}")
        for _ in range(layer.steps):
            h = torch.tanh(h * w + (b if b is not None else 0))
    return h


def test_a_member_at_an_index_the_inner_loop_keeps_is_bound_before_it():
    lines = _forward_lines()
    inner = next(i for i, line in enumerate(lines) if line.lstrip().startswith("for t in range"))
    before, loop = lines[:inner], lines[inner + 1 :]
    assert any('w_l = getattr(self, f"w_l{k}")' in line for line in before)
    assert any('b_l = getattr(self, f"b_l{k}")' in line for line in before)
    assert not any("getattr(" in line for line in loop)
    outer = next(i for i, line in enumerate(lines) if line.lstrip().startswith("for k in range"))
    assert not any("getattr(" in line for line in lines[:outer])  # k changes in its own loop: read per k


def test_the_bound_members_give_the_values_of_a_getattr_per_step():
    ns = compile_spec(SPEC, "stacked")
    for bias in (True, False):
        torch.manual_seed(0)
        layer = ns["Stacked"](2, 3, bias=bias, dtype=torch.float64)
        x = torch.randn(5, 4, dtype=torch.float64)
        assert torch.allclose(layer(x), reference(layer, x))


def _forward_lines() -> list[str]:
    """The generated module's forward, as lines."""
    spec = parse_file("stacked.layer", SPEC)
    source = emit_file(spec, check_program([spec]), "stacked.layer", {})
    start = source.index("    def forward(self")
    end = source.index("    def extra_repr", start)
    return source[start:end].splitlines()


NESTED = """
layer Nested(n: int, m: int, k: int) {
    for i in range(n) {
        param w_l{i}: [4] = uniform(0.5, 1.5)
    }
    example(n = 3, m = 2, k = 1)

    forward(x: [B, 4]) -> [B, 4] {
        h = x
        for j in range(m) {
            for t in range(2) {
                h = tanh(h * w_l{k} + w_l{j})
            }
        }
        return h
    }
}
"""


def test_members_bound_around_nested_loops_keep_their_own_values():
    """`w_l{k}` is bound before the loop over j, `w_l{j}` before the loop over t, each under its own name."""
    ns = compile_spec(NESTED, "nested")
    torch.manual_seed(0)
    layer = ns["Nested"](3, 2, 1, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64)
    h = x
    for j in range(2):
        for _ in range(2):
            h = torch.tanh(h * layer.w_l1 + getattr(layer, f"w_l{j}"))
    assert torch.allclose(layer(x), h)


# Under @function: the family's members are passed stacked (`torch.stack([getattr(self, f"w_l{k}") ...])`),
# the Function's loop reads `w_l[k]`, its backward gives the stacked gradient, which autograd's stack
# splits back into the members'.
FAMILY_FUNCTION = """
@function
layer FamilyScan(n: int, d: int, bias: bool = true) {
    for k in range(n) {
        param w_l{k}: [d, d]
        param s_l{k}: [d] = uniform(0.5, 1.5)
        param b_l{k}: [d] = uniform(-0.5, 0.5) if bias
    }
    example(n = 2, d = 3)
    forward(x: [B, d]) -> [B, d] {
        h = x
        for k in range(n) {
            h = tanh(h @ w_l{k} + b_l{k}) * s_l{k} + h
        }
        return h * 2
    }
}
"""


@pytest.mark.parametrize("n", [0, 1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_a_family_read_in_a_loop_over_its_count_derives_under_function(n, bias):
    ours = compile_spec(FAMILY_FUNCTION, "family_scan")["FamilyScan"]
    plain = compile_spec(FAMILY_FUNCTION.replace("@function\n", ""), "family_scan_plain")["FamilyScan"]
    torch.manual_seed(0)
    a, b = ours(n, 3, bias=bias).double(), plain(n, 3, bias=bias).double()
    b.load_state_dict(a.state_dict())
    members = "wsb" if bias else "ws"
    assert list(a.state_dict()) == list(b.state_dict()) == [f"{m}_l{k}" for k in range(n) for m in members]
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    out, ref = a(x), b(x)
    torch.testing.assert_close(out, ref)
    got = torch.autograd.grad(out.sum(), [x, *a.parameters()])
    want = torch.autograd.grad(ref.sum(), [x, *b.parameters()])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    names = [name for name, _ in a.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in a.parameters()]

    def run(x, *tensors):
        return torch.func.functional_call(a, dict(zip(names, tensors)), (x,))

    assert torch.autograd.gradcheck(run, (x, *params))
    assert torch.autograd.gradgradcheck(run, (x, *params))


FAMILY_SHAPED_BY_INDEX = """
@function
layer Widening(n: int, d: int) {
    for k in range(n) {
        param w_l{k}: [d * (k + 1), 2 * d]  # every member its own shape (a first one alone is peeled)
    }
    example(n = 2, d = 3)
    forward(x: [B, d]) -> [B, d] {
        h = x
        for k in range(n) {
            h = tanh(h @ w_l{k})
        }
        return h
    }
}
"""


def test_a_family_whose_shapes_depend_on_the_index_is_refused_at_the_family():
    spec = parse_file("widening.layer", FAMILY_SHAPED_BY_INDEX)
    check_program([spec])
    _, problems = plan_backwards([spec])
    assert [(p.span.line, p.span.col) for p in problems] == [(5, 15)]
    assert "the family 'w_l{k}'" in problems[0].message and "depend on 'k'" in problems[0].message
