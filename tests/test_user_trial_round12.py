"""What a user's trial of round 12's @function derivations found: a list of subs of an argument's count,
built with a written count inside a @function layer, had its loop unrolled and its optional member (stacked
across the items) read as `b[0]` whether or not it was built ("NoneType is not subscriptable" without it);
a branching setup_context kept an optional member's shape on ctx twice (once before the sides, once in the
side); and a cross_entropy mean over targets all ignored had a NaN gradient where torch's is zero."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .test_function_sub_lists import compare_with_plain, plain_pair

SPECS = Path(__file__).parent.parent / "specs" / "torch_nn"

# UDeep's count is an argument; Outer writes it (2), so the inlined loop is unrolled
OPTIONAL_MEMBER_OF_UNROLLED_ITEMS = """
layer Block(d: int, bias: bool = true) {
    param w: [d, d] = normal(0, 0.3)
    param b: [d] = uniform(-0.5, 0.5) if bias
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        return tanh(x @ w + b)
    }
}

layer UDeep(d: int, n: int, bias: bool = true) {
    sub blocks = [Block(d, bias) for i in range(n)]
    example(d = 3, n = 2)
    forward(x: [B, d]) -> [B, d] {
        h = x
        for blk in blocks {
            h = blk(h) + h
        }
        return h
    }
}

@function
layer Outer(d: int, bias: bool = true) {
    sub deep = UDeep(d, 2, bias = bias)
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        return deep(x)
    }
}
"""


@pytest.mark.parametrize("bias", [False, True])
def test_an_optional_member_of_unrolled_items_makes_a_side_without_it(bias):
    a, b = plain_pair(OPTIONAL_MEMBER_OF_UNROLLED_ITEMS, f"unrolled_items_{bias}", "Outer", d=3, bias=bias)
    assert (a.deep.blocks[0].b is None) == (not bias)
    compare_with_plain(a, b, torch.randn(2, 3, dtype=torch.float64, requires_grad=True))


def _setup_context(code: str, function: str) -> str:
    body = code[code.index(f"class {function}") :]
    return body[body.index("def setup_context") : body.index("def backward")]


def test_a_branching_setup_keeps_an_optional_members_shape_once():
    spec = parse_file("unrolled_items.layer", OPTIONAL_MEMBER_OF_UNROLLED_ITEMS)
    code = emit_file(spec, check_program([spec]), "unrolled_items.layer", {})
    assert _setup_context(code, "OuterFunction").count("ctx.deep_blocks_b_shape = ") == 1


def test_linear_cross_entropy_keeps_its_bias_shape_once():
    loss = (SPECS / "loss.layer").read_text()
    text = (SPECS / "linear.layer").read_text() + loss.replace(
        "\nlayer LinearCrossEntropyLoss(", "\n@function\nlayer LinearCrossEntropyLoss("
    )
    spec = parse_file("lce.layer", text)
    code = emit_file(spec, check_program([spec]), "lce.layer", {})
    setup = _setup_context(code, "LinearCrossEntropyLossFunction")
    assert setup.count("ctx.linear_bias_shape = ") == 1


def test_a_size_not_followed_back_says_why_without_listing_a_few_ops():
    """local_sizes.py follows any op through the shape engine: the message names no short list of ops."""
    spec = parse_file("unanswered_pad.layer", UNANSWERED_PAD)
    check_program([spec])
    _, problems = plan_backwards([spec])
    (problem,) = problems
    assert (problem.span.line, problem.span.col) == (7, 28)
    assert "`h` is a tensor forward computes, whose size there is not followed back to one" in problem.message
    assert "matmul, cat and stack" not in problem.message
    assert "shape rules" in problem.message and "a dim of a `...` group" in problem.message


UNANSWERED_PAD = """@function
layer UnansweredPad(n: int) {
    example(n = 4)

    forward(x: [..., n]) {
        h = pad(x, [1, 1, 1, 1])
        return h / size_at(h, 0)
    }
}
"""


# reduction "mean" over targets that are all ignore_index: the loss is NaN (0 / 0), and ATen's backward
# writes no gradient for an ignored target, so the gradient is all zeros
ALL_IGNORED = """
@function
layer AllIgnored(d: int, c: int, smoothing: float = 0.0) {
    param w: [c, d] = normal(0, 0.3)
    param b: [c] = uniform(-0.5, 0.5)
    example(d = 3, c = 4)
    forward(x: [N, d], t: long[N]) {
        return linear_cross_entropy(x, w, t, linear_bias = b, ignore_index = 1, label_smoothing = smoothing)
    }
}
"""


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_a_mean_over_targets_all_ignored_has_a_zero_gradient_as_torchs(smoothing):
    a, b = plain_pair(ALL_IGNORED, "all_ignored", "AllIgnored", d=3, c=4, smoothing=smoothing)
    x = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    for t in (torch.tensor([1, 1, 1]), torch.tensor([0, 1, 3])):
        out, ref = a(x, t), b(x, t)
        torch.testing.assert_close(out, ref, equal_nan=True)
        got = torch.autograd.grad(out, [x, *a.parameters()], create_graph=True)
        want = torch.autograd.grad(ref, [x, *b.parameters()], create_graph=True)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
        second = torch.autograd.grad(sum(g.sum() for g in got[:2]), [x, a.w])
        second_want = torch.autograd.grad(sum(g.sum() for g in want[:2]), [x, b.w])
        for g, w in zip(second, second_want):
            torch.testing.assert_close(g, w)
