"""What a user's trial of round 12's @function derivations found: a list of subs of an argument's count,
built with a written count inside a @function layer, had its loop unrolled and its optional member (stacked
across the items) read as `b[0]` whether or not it was built ("NoneType is not subscriptable" without it)."""

from __future__ import annotations

import pytest
import torch

from .test_function_sub_lists import compare_with_plain, plain_pair

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
