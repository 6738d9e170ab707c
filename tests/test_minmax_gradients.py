"""`maximum`/`minimum` (and the piecewise-linear `relu` and `clamp`) derived under `@function` give torch's gradients where the values are not ordinary:
a tie splits the gradient in half, the losing side gets 0 even where the incoming gradient is inf (not
0 * inf = NaN), and a NaN input passes the gradient to both sides, as torch's derivatives.yaml has it."""

from __future__ import annotations

import pytest
import torch

from .support import compile_spec

SPEC = """
@function
layer Larger() {
    forward(x: [N], y: [N]) -> [N] {
        return maximum(x, y)
    }
}

@function
layer Smaller() {
    forward(x: [N], y: [N]) -> [N] {
        return minimum(x, y)
    }
}

@function
layer ExpLarger() {
    forward(x: [N], y: [N]) -> [N] {
        return exp(maximum(x, y))
    }
}

@function
layer ExpRelu() {
    forward(x: [N], y: [N]) -> [N] {
        return exp(relu(x) * 1000 - x * 1000) + y
    }
}

@function
layer ExpClamp() {
    forward(x: [N], y: [N]) -> [N] {
        return exp(clamp(x, -0.5, 0.5) * 1000 - x * 1000) + y
    }
}

@function
layer ExpSmaller() {
    forward(x: [N], y: [N]) -> [N] {
        return exp(-minimum(x, y))
    }
}
"""

INF, NAN = float("inf"), float("nan")
X = [1000.0, 0.0, -1000.0, 1.0, INF, INF, -INF, NAN, 2.0, 3.0]
Y = [0.0, 1000.0, 0.0, 1.0, INF, 1.0, -INF, 1.0, NAN, 3.0]

CASES = {
    "Larger": torch.maximum,
    "Smaller": torch.minimum,
    "ExpLarger": lambda x, y: torch.exp(torch.maximum(x, y)),
    "ExpSmaller": lambda x, y: torch.exp(-torch.minimum(x, y)),
    # The clipped side's incoming gradient is inf: torch gives it 0 there, not 0 * inf = NaN.
    "ExpRelu": lambda x, y: torch.exp(torch.relu(x) * 1000 - x * 1000) + y,
    "ExpClamp": lambda x, y: torch.exp(torch.clamp(x, -0.5, 0.5) * 1000 - x * 1000) + y,
}


@pytest.fixture(scope="module")
def layers():
    return compile_spec(SPEC, "minmax")


def _grads(f, x, y):
    x = x.clone().requires_grad_()
    y = y.clone().requires_grad_()
    f(x, y).sum().backward()
    return x.grad, y.grad


@pytest.mark.parametrize("name", list(CASES))
def test_ties_infs_and_nans_get_torchs_gradients(layers, name):
    x, y = torch.tensor(X, dtype=torch.float64), torch.tensor(Y, dtype=torch.float64)
    got = _grads(layers[name](), x, y)
    want = _grads(CASES[name], x, y)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, equal_nan=True)


def test_an_inf_incoming_gradient_leaves_the_smaller_side_at_zero(layers):
    x = torch.tensor([1000.0], dtype=torch.float64)
    y = torch.tensor([0.0], dtype=torch.float64)
    gx, gy = _grads(layers["ExpLarger"](), x, y)
    assert gx.item() == INF and gy.item() == 0.0
