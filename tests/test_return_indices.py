"""`return_indices`: an argument that picks how many outputs forward gives (`return pooled, indices` or
`return pooled`), and the pooling ops `*_with_indices` that give the indices of the maxima."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from .support import compile_spec

POOL = """
layer Pool(kernel_size: ints, return_indices: bool = false) {
    example(kernel_size = 2)

    forward(input: [C, ..., L]) {
        if return_indices {
            pooled, indices = max_pool1d_with_indices(input, kernel_size)
            return pooled, indices
        }
        return max_pool1d(input, kernel_size)
    }
}

layer Pool2(return_indices: bool = false) {
    example()

    forward(input: [B, C, H, W]) {
        if return_indices {
            pooled, indices = fractional_max_pool2d_with_indices(input, 2, output_size = [3, 3])
            return pooled, indices
        }
        return fractional_max_pool2d(input, 2, output_size = [3, 3])
    }
}
"""


@pytest.fixture(scope="module")
def ns():
    return compile_spec(POOL)


def test_the_argument_picks_one_output_or_the_pair(ns):
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    alone = ns["Pool"](2)(x)
    assert isinstance(alone, torch.Tensor)
    torch.testing.assert_close(alone, F.max_pool1d(x, 2))
    pooled, indices = ns["Pool"](2, return_indices=True)(x)
    want, want_indices = F.max_pool1d(x, 2, return_indices=True)
    torch.testing.assert_close(pooled, want)
    assert indices.dtype == torch.int64 and torch.equal(indices, want_indices)
    pooled.sum().backward()  # the pooled output is differentiable, the indices are not
    assert x.grad is not None and x.grad.sum() == pooled.numel()


def test_fractional_pooling_gives_indices_of_its_output_shape(ns):
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    torch.manual_seed(0)
    pooled, indices = ns["Pool2"](return_indices=True)(x)
    torch.manual_seed(0)
    want, want_indices = F.fractional_max_pool2d(x, 2, output_size=3, return_indices=True)
    torch.testing.assert_close(pooled, want)
    assert indices.shape == pooled.shape == (2, 3, 3, 3) and torch.equal(indices, want_indices)


def test_the_return_type_is_the_union_fewest_outputs_first(ns):
    hint = inspect.signature(ns["Pool"].forward).return_annotation
    assert hint == "Tensor | tuple[Tensor, Tensor]"
