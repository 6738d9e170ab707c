"""`@function` layers that measure a size: `size_at(x, k)` of an input declared without a shape (`[...]`)
or at a dim its shape gives as an argument, and `x.ndim`. Forward reads the size from the input, and the
backward from `ctx`, where setup_context keeps it as an int (no tensor saved for it), also where it
chooses a branch or counts a loop's steps. Against the functional form (plain autograd): outputs, first
and second derivatives, gradcheck and gradgradcheck in float64."""

from __future__ import annotations

import pytest
import torch

from .function_agreement import agree, checked, double
from .support import compile_spec

SPEC = """
@function
layer Unshaped() {
    forward(x: [...]) {
        if size_at(x, -1) > 2 {
            return sum(sin(x)) / size_at(x, 0)
        }
        return sin(x) * size_at(x, -1)
    }
}

@function
layer ArgDim(d: int) {
    param w: [d, d]
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        n = size_at(x, -1)
        return tanh(x @ w) / n + size_at(w, 0)
    }
}

@function
layer BatchMean() {
    forward(x: [...]) {
        if x.ndim == 0 {
            return sin(x)
        }
        return sum(sin(x) * x) / size_at(x, 0)
    }
}

@function
layer RowGram(n: int) {
    example(n = 4)
    forward(x: [..., L, n]) -> [..., L, L] {
        if x.ndim == 2 {
            return sin(x) @ transpose(x, 0, 1) + 1.0
        }
        return sin(x) @ transpose(x, -2, -1)
    }
}

@function
layer SizesSum() {
    forward(x: [...]) {
        s = 0
        for t in range(2) {
            s = s + size_at(x, t)
        }
        return sin(x) * s
    }
}

@function
layer RowScan(d: int) {
    param w: [d, d]
    example(d = 3)
    forward(x: [...]) {
        h = sin(x[0])
        for t in range(1, size_at(x, 0)) {
            h = tanh(h @ w + x[t])
        }
        return h / size_at(x, 0)
    }
}
"""


@pytest.fixture(scope="module")
def ns() -> dict:
    return compile_spec(SPEC, "function_sizes")


@pytest.mark.parametrize("shape", [(4, 3), (5, 2, 2), (3,)])  # last size > 2 or not: either side
def test_sizes_of_an_input_without_a_shape_choose_the_side_and_scale(ns, shape):
    torch.manual_seed(0)
    x = double(*shape)
    agree(ns["Unshaped"]()(x), ns["unshaped"](x), [x])
    checked(ns["UnshapedFunction"].apply, [x])


def test_a_measured_size_is_kept_on_ctx_as_an_int_not_a_saved_tensor(ns):
    x = double(5, 3)
    y = ns["UnshapedFunction"].apply(x)
    assert y.grad_fn.x_size0 == 5 and y.grad_fn.x_size_last == 3
    assert [tuple(t.shape) for t in y.grad_fn.saved_tensors] == [(5, 3)]  # x, for cos(x); nothing for the sizes
    (grad,) = torch.autograd.grad(y, x)
    torch.testing.assert_close(grad, torch.cos(x) / 5)


def test_sizes_the_shape_gives_as_an_argument_are_measured(ns):
    torch.manual_seed(1)
    layer = ns["ArgDim"](3, dtype=torch.float64)
    x = double(4, 3)
    agree(layer(x), ns["arg_dim"](x, layer.w), [x, layer.w])
    checked(lambda x, w: ns["ArgDimFunction"].apply(x, w)[0], [x, layer.w])


@pytest.mark.parametrize("shape", [(), (4,), (3, 2)])
def test_the_number_of_dims_of_an_input_chooses_the_side(ns, shape):
    torch.manual_seed(2)
    x = double(*shape)
    agree(ns["BatchMean"]()(x), ns["batch_mean"](x), [x])
    checked(ns["BatchMeanFunction"].apply, [x])


def _output(result):
    """The layer's output of a Function's result: the first of several (an intermediate it returns too), or
    the only one."""
    return result[0] if isinstance(result, tuple) else result


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4)])
def test_the_number_of_dims_chooses_the_side_of_rank_branching(ns, shape):
    torch.manual_seed(5)
    x = double(*shape)
    y = _output(ns["RowGramFunction"].apply(x))
    assert y.grad_fn.x_ndim == len(shape)
    agree(ns["RowGram"](4)(x), ns["row_gram"](x, n=4), [x])
    checked(lambda x: _output(ns["RowGramFunction"].apply(x)), [x])


@pytest.mark.parametrize("steps", [1, 2, 4])  # the loop runs steps - 1 times: none, once, several
def test_a_measured_size_counts_a_loops_steps(ns, steps):
    torch.manual_seed(3)
    layer = ns["RowScan"](3, dtype=torch.float64)
    x = double(steps, 2, 3)
    inputs = [x, layer.w] if steps > 1 else [x]  # no step: w is not used
    agree(layer(x), ns["row_scan"](x, layer.w), inputs)
    checked(lambda x, w: ns["RowScanFunction"].apply(x, w)[0], [x, layer.w.detach().requires_grad_(steps > 1)])


def test_sizes_at_an_unrolled_loops_variable_are_measured(ns):
    torch.manual_seed(4)
    x = double(3, 4, 2)
    y = ns["SizesSumFunction"].apply(x)
    assert (y.grad_fn.x_size0, y.grad_fn.x_size1) == (3, 4)
    agree(ns["SizesSum"]()(x), ns["sizes_sum"](x), [x])
    checked(ns["SizesSumFunction"].apply, [x])
