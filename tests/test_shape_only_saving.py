"""Scores whose backward would read them only for their shape are not kept (issue 15, item 2).

The gradient of `s * 0.5` (or `relu(s)`) has the shape of `s` however `s` was computed: an elementwise operand
broadcast against numbers (0-dim values) or against itself alone needs no summing back, so its shape is not
read. And a slice bounded by an int local (`h = d // 2; q[..., :h]`) has the size the shape rules prove for
the local's value (`d // 2`), so the scores `q @ transpose(q)` have the static shape [B, T, T]: adding a bias
or scaling them by an input needs no `sum_to_size(scores.shape)` either. Where the operand really is smaller
than the result, its gradient is still summed back. Saved bytes measured with saved_tensors_hooks against
the plain (autograd) module, in float64."""

from __future__ import annotations

import pytest
import torch

from .function_agreement import compare_with_plain
from .support import compile_spec, saved_bytes

LET_SLICED = """\
@function
layer Scores(d: int) {
    let h = d // 2
    param w: [d, d]
    example(d = 4)

    forward(x: [B, T, d]) {
        q = (x @ w)[..., :h]
        return softmax(q @ transpose(q, -2, -1) * 0.5, dim = -1)
    }
}
"""

MATMUL_CALL = """\
@function
layer Scores(d: int) {
    param w: [d, d]
    example(d = 4)

    forward(x: [B, T, d]) {
        h = d // 2
        q = (x @ w)[:, :, :h]
        return softmax(matmul(q, transpose(q, 1, 2)) * 0.5, dim = -1)
    }
}
"""

BIASED = """\
@function
layer Scores(d: int, t: int) {
    param w: [d, d]
    param bias: [t, t]
    example(d = 4, t = 6)

    forward(x: [B, t, d]) {
        h = d // 2
        q = (x @ w)[..., :h]
        return softmax(q @ transpose(q, -2, -1) + bias, dim = -1)
    }
}
"""

SCALED = """\
@function
layer Scores(d: int) {
    param w: [d, d]
    example(d = 4)

    forward(x: [B, T, d], s: [B, 1, 1]) {
        h = d // 2
        q = (x @ w)[..., :h]
        return softmax(q @ transpose(q, -2, -1) * s, dim = -1)
    }
}
"""

CASES = {
    "let_sized_slice": (LET_SLICED, {"d": 4}, False),
    "matmul_call": (MATMUL_CALL, {"d": 4}, False),
    "broadcast_bias": (BIASED, {"d": 4, "t": 64}, False),
    "scaled_by_an_input": (SCALED, {"d": 4}, True),
}


def _pair(spec: str, stem: str, args: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    ours = compile_spec(spec, f"{stem}_f")["Scores"](**args).double()
    theirs = compile_spec(spec.replace("@function\n", ""), f"{stem}_p")["Scores"](**args).double()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize("case", CASES)
def test_scores_read_only_for_their_shape_are_not_kept(case):
    spec, args, scaled = CASES[case]
    assert "sum_to_size(mm1.shape)" not in compile_spec(spec, f"shape_only_{case}_src")["SOURCE"]
    ours, theirs = _pair(spec, f"shape_only_{case}", args)
    x = torch.randn(2, 64, 4, dtype=torch.float64, requires_grad=True)
    inputs = [x, torch.rand(2, 1, 1, dtype=torch.float64)] if scaled else [x]
    assert saved_bytes(lambda: ours(*inputs), ours) <= saved_bytes(lambda: theirs(*inputs), theirs)
    # without the reduction, the gradients are autograd's (at a size gradcheck takes)
    ours, theirs = _pair(spec, f"shape_only_{case}_small", args | ({"t": 6} if "t" in args else {}))
    x = torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True)
    compare_with_plain(
        ours, theirs, *([x, torch.rand(2, 1, 1, dtype=torch.float64).requires_grad_()] if scaled else [x])
    )


# A slice bounded by an int argument (`[:, :1, :k]`: k may pass the end) has a size known only as Python's
# clamping gives it (`d[:k]`), and the operand really is smaller than the result (broadcast over T) in
# `a * y`: that gradient is still summed back to its shape; `a * 0.5`'s is not.
BROADCAST = """\
@function
layer Scores(d: int, k: int) {
    param w: [d, d]
    example(d = 4, k = 2)

    forward(x: [B, T, d], y: [B, T, k]) {
        a = (x @ w)[:, :1, :k]
        return a * y + a * 0.5
    }
}
"""


def test_only_an_operand_smaller_than_the_result_is_summed_back():
    ours, theirs = _pair(BROADCAST, "shape_only_broadcast", {"d": 4, "k": 2})
    # `(grad_mul * y).sum_to_size(a.shape)` stays; `a * 0.5`'s gradient has a's shape without it
    source = compile_spec(BROADCAST, "shape_only_broadcast_src")["SOURCE"]
    assert source.count(".sum_to_size(a.shape)") + source.count(".sum_to_size(*a.shape)") == 1
    x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 5, 2, dtype=torch.float64, requires_grad=True)
    compare_with_plain(ours, theirs, x, y)
