"""A loop Function's last carried value, read after the loop by nothing of its backward (`h * 2.0` after an RNN's
loop), is returned for the gradient the double backward gives it but not saved: the zeros that gradient starts
as, when none is given, take its shape kept on ctx (issue 15, deliverable 2: a derived `@function` backward
saves no more bytes than autograd). Checked against the plain module in float64: outputs, gradients, gradcheck
and gradgradcheck, and the bytes saved."""

from __future__ import annotations

import pytest
import torch

from .support import assert_same_function, function_and_plain, saved_bytes

SCALED = """
@function
layer Scaled(d: int) {
    param w: [d, d] = uniform(-0.5, 0.5)
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        h = h0
        for t in range(T) {
            h = tanh(h @ w + x[t])
        }
        return h * 2.0
    }
}
"""

SHIFTED = """
@function
layer Shifted(d: int) {
    param w: [d, d] = uniform(-0.5, 0.5)
    param u: [d, d] = uniform(-0.5, 0.5)
    param b: [d] = zeros
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        h = h0
        for t in range(T) {
            h = tanh(h @ w + x[t] @ u)
        }
        return h + b
    }
}
"""

SPECS = [(SCALED, "Scaled"), (SHIFTED, "Shifted")]


def _inputs(steps: int) -> list[torch.Tensor]:
    torch.manual_seed(steps)
    return [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in [(steps, 2, 3), (2, 3)]]


@pytest.mark.parametrize("text, name", SPECS, ids=["scaled", "shifted"])
@pytest.mark.parametrize("steps", [1, 4])
def test_the_last_value_is_not_saved(text, name, steps):
    ours, plain = function_and_plain(text, name, 3)
    inputs = _inputs(steps)
    assert saved_bytes(lambda: ours(*inputs), ours) <= saved_bytes(lambda: plain(*inputs), plain)


@pytest.mark.parametrize("text, name", SPECS, ids=["scaled", "shifted"])
@pytest.mark.parametrize("steps", [1, 4])
def test_first_and_second_derivatives_agree_with_autograd(text, name, steps):
    ours, plain = function_and_plain(text, name, 3)
    inputs = _inputs(steps)
    assert_same_function(ours, plain, *inputs)
    assert torch.autograd.gradcheck(ours, inputs)
    assert torch.autograd.gradgradcheck(ours, inputs)


@pytest.mark.parametrize("steps", [1, 4])
def test_a_double_backward_given_only_the_steps_gradient(steps):
    """The last value's gradient not given (None), the per-step values' given: its zeros come from its shape."""
    ours, plain = function_and_plain(SCALED, "Scaled", 3)
    inputs = _inputs(steps)
    results = []
    for module in (ours, plain):
        (grad_x,) = torch.autograd.grad(module(*inputs).pow(2).sum(), inputs[0], create_graph=True)
        results.append(torch.autograd.grad(grad_x.sum(), [*inputs, *module.parameters()]))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want)
