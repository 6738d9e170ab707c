"""What a derived `@function` backward keeps for slices whose bounds are int locals or negative numbers.

A slice's size decides whether the gradients around it need summing back (`grad.sum_to_size(mm.shape)`)
and whether the backward can write a shape it reads (`grad.new_zeros(part.shape)`) from the leaves' sizes.
A negative bound (`n = -2`, `x[..., -n:]`) counts from the end and is clamped into the dim as Python clamps
it: where that may apply, the slice's size is one symbol (`d[-2:]`), the same for every operand sliced
alike (autodiff/shapes.py `slice_dim`). A bound measured from an input (`size_at(y, -1) // 2`) is the dim
its declared shape names there (`e // 2`). A dim that is a sum or a quotient of the leaves' sizes
(`e - 1`, `e // 2`) is written from them (autodiff/shape_sources.py). A size Python's clamping decides
(`e[-2:]`, `e[-3::2]`) is written `len(range(w.shape[-1])[-2:])`. Each case fails on the code before:
the Function saved the products (or `x @ w`) whole for their shapes. Gradients agree with the plain module."""

from __future__ import annotations

import pytest
import torch

from tests.support import assert_same_function, compile_spec, function_and_plain, saved_bytes

SUMS = """\
@function
layer SlicedSum(d: int) {
    param w: [d, d]
    example(d = 4)
    forward(INPUTS) {
        BODY
    }
}
"""

SUM_CASES = {
    # a negative bound in the start and in the stop
    "negative_start_and_stop": (
        "x: [B, d]",
        "n = -3\n        m = -1\n" "        return x[:, n:m] @ w[n:m, :] + x[:, m:] @ w[m:, :] + x[:, :n] @ w[:n, :]",
        2,
    ),
    # `-n` of a measured n, after a `...`, on a 3-d input
    "negated_measured_after_ellipsis": (
        "x: [B, T, d]",
        "n = size_at(x, -1) // 4\n        return x[..., -n:] @ w[-n:, :] + x[..., :-n] @ w[:-n, :]",
        3,
    ),
    # a bound measured from another input's dim
    "measured_from_another_input": (
        "x: [B, d], y: [B, e]",
        "n = size_at(y, -1) // 2\n        return x[:, n:] @ w[n:, :] + x[:, :n] @ w[:n, :]",
        2,
    ),
    # steps beside bounds that may be clamped, sliced alike
    "steps_sliced_alike": (
        "x: [B, d]",
        "return x[:, -3::2] @ w[-3::2, :] + x[:, 1:9:3] @ w[1:9:3, :]",
        2,
    ),
    # a negative number local on a 3-d input
    "negative_on_a_3d_input": (
        "x: [B, T, d]",
        "n = -2\n        return x[:, :, n:] @ w[n:, :] + x[:, :, :n] @ w[:n, :]",
        3,
    ),
}


def _sum_inputs(case: str, d: int, batch: int) -> list[torch.Tensor]:
    inputs, _, rank = SUM_CASES[case]
    x = torch.randn(*(batch, 3)[: rank - 1], d, dtype=torch.float64, requires_grad=True)
    return [x, torch.randn(batch, 6, dtype=torch.float64)] if "y:" in inputs else [x]


@pytest.mark.parametrize("case", SUM_CASES)
def test_products_of_slices_alike_are_summed_without_their_shapes(case):
    inputs, body, _ = SUM_CASES[case]
    spec = SUMS.replace("INPUTS", inputs).replace("BODY", body)
    assert ".sum_to_size(mm" not in compile_spec(spec, f"sliced_sum_{case}_src")["SOURCE"]
    ours, plain = function_and_plain(spec, "SlicedSum", 64)
    args = _sum_inputs(case, 64, 32)
    assert saved_bytes(lambda: ours(*args), ours) <= saved_bytes(lambda: plain(*args), plain)
    for d in (1, 5):  # at 1, every bound passes an end of the dim and is clamped
        ours, plain = function_and_plain(spec, "SlicedSum", d)
        assert_same_function(ours, plain, *_sum_inputs(case, d, 2))


INDEXED = """\
@function
layer IndexedSlice(d: int, e: int) {
    param w: [d, e]
    example(d = 3, e = 5)
    forward(x: [B, d], i: long[K]) {
        BODY
    }
}
"""

INDEX_CASES = {
    # `e // 2` of w's measured size: `w.shape[-1] // 2`
    "measured_half": "n = size_at(w, -1) // 2\n        return (x @ w)[i, :n]",
    "measured_upper_half": "n = size_at(w, -1) // 2\n        return (x @ w)[i, n:]",
    # `:-1` of e: `e - 1`, `w.shape[-1] - 1`
    "negative_stop": "return (x @ w)[i, :-1]",
}


@pytest.mark.parametrize("case", INDEX_CASES)
def test_an_index_beside_a_slice_of_a_leaf_sized_dim_keeps_no_more_than_autograd(case):
    spec = INDEXED.replace("BODY", INDEX_CASES[case])
    ours, plain = function_and_plain(spec, "IndexedSlice", 64, 256)
    x, i = torch.randn(32, 64, dtype=torch.float64, requires_grad=True), torch.randint(0, 32, (16,))
    assert saved_bytes(lambda: ours(x, i), ours) <= saved_bytes(lambda: plain(x, i), plain)
    for e in (1, 7):  # at 1, the slice may be empty
        ours, plain = function_and_plain(spec, "IndexedSlice", 3, e)
        assert_same_function(
            ours, plain, torch.randn(4, 3, dtype=torch.float64, requires_grad=True), torch.tensor([0, 3, 3])
        )


CLAMPED_CASES = {
    # a negative start on a dim that may be shorter: `e[-2:]`, written `len(range(w.shape[-1])[-2:])`
    "negative_start": "return (x @ w)[i, -2:]",
    "negative_stop": "return (x @ w)[i, :-2]",
    "negative_start_and_stop": "return (x @ w)[i, -3:-1]",
    # bounds past the end of a dim that may be shorter
    "start_past_the_end": "return (x @ w)[i, 2:]",
    "stop_past_the_end": "return (x @ w)[i, 1:9]",
    "negative_start_past_the_front": "return (x @ w)[i, -9:]",
    # a step beside a bound that may be clamped
    "negative_start_with_a_step": "return (x @ w)[i, -3::2]",
    "both_bounds_with_a_step": "return (x @ w)[i, 1:-1:3]",
    "stop_past_the_end_with_a_step": "return (x @ w)[i, :9:4]",
}


@pytest.mark.parametrize("case", CLAMPED_CASES)
def test_an_index_beside_a_slice_of_a_clamped_size_keeps_no_more_than_autograd(case):
    spec = INDEXED.replace("BODY", CLAMPED_CASES[case])
    ours, plain = function_and_plain(spec, "IndexedSlice", 64, 256)
    assert_same_function(
        ours, plain, torch.randn(32, 64, dtype=torch.float64, requires_grad=True), torch.randint(0, 32, (16,))
    )
    x, i = torch.randn(32, 64, dtype=torch.float64, requires_grad=True), torch.randint(0, 32, (16,))
    assert saved_bytes(lambda: ours(x, i), ours) <= saved_bytes(lambda: plain(x, i), plain)
    for e in (1, 2, 3, 7):  # below, at and past each bound: the slice clamped, possibly empty
        ours, plain = function_and_plain(spec, "IndexedSlice", 3, e)
        assert_same_function(
            ours, plain, torch.randn(4, 3, dtype=torch.float64, requires_grad=True), torch.tensor([0, 3, 3])
        )
