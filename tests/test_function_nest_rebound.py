"""A loop holding a loop (`autodiff.nest.Nest`) rebinds its carried value at each outer step of backward; the
backward written after the nest's (the double backward's section after the main one's) reads that value's
last value by value (`2 * grad_y_out * h` of `y = h * h`), not the start the nest's last step rebound it to:
each outer step binds it under a name of its own (`h_at`, `function_nest.step_spelling`; a number the nest
carries, `n1_now`). Checked with one backward of a loss reading both the output and its first derivatives
(the Function's backward then given the output's gradient and the extra outputs' at once), against the plain
module (issue 15)."""

from __future__ import annotations

import pytest
import torch

from .function_agreement import compare_with_plain
from .support import function_and_plain

LAYER = """\
DECORATOR
layer Nest(d: int) {
    param w: [d, d] = uniform(-1, 1)
    param u: [d, d] = uniform(-1, 1)
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d], z: [L, d]) -> [B, d] {
        h = h0
        for l in range(size_at(z, 0)) {
            for t in range(T) {
                h = tanh(x[t] @ w + h @ u)
            }
            AFTER
        }
        RETURN
    }
}
"""

BODIES = {"inner loop alone": "", "a step after the inner loop": "h = sin(h) * z[l]"}
RETURNS = {"h * h kept": "y = h * h\n        return y * y", "sin(sin(h))": "return sin(sin(h))"}
DECORATORS = {"function": "@function", "save inputs": '@function(save = "inputs")'}


def _inputs(inner: int, outer: int) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(10 * inner + outer)
    shapes = [(inner, 2, 3), (2, 3), (outer, 3)]
    return tuple(torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in shapes)


def _output_and_first_derivatives(module: torch.nn.Module, inputs) -> tuple[torch.Tensor | None, ...]:
    """The derivatives of a loss reading the output and its first derivatives (over inputs and parameters)."""
    wrt = [*inputs, *module.parameters()]
    out = module(*inputs)
    seed = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view_as(out)
    first = torch.autograd.grad(out, wrt, seed, create_graph=True, allow_unused=True)
    loss = (out * seed).sum() + sum(
        (g * torch.linspace(-1, 1, g.numel(), dtype=g.dtype).view_as(g)).sum() for g in first if g is not None
    )
    return torch.autograd.grad(loss, wrt, allow_unused=True)


def _text(body: str, ret: str, decorator: str) -> str:
    return LAYER.replace("DECORATOR", decorator).replace("AFTER", body).replace("RETURN", ret)


@pytest.mark.parametrize("counts", [(2, 3), (3, 1), (0, 2)], ids=lambda c: f"T{c[0]}-L{c[1]}")
@pytest.mark.parametrize("decorator", sorted(DECORATORS))
@pytest.mark.parametrize("ret", sorted(RETURNS))
@pytest.mark.parametrize("body", sorted(BODIES))
def test_the_last_value_read_after_the_nest_is_the_last_one(body, ret, decorator, counts):
    ours, plain = function_and_plain(_text(BODIES[body], RETURNS[ret], DECORATORS[decorator]), "Nest", 3)
    inputs = _inputs(*counts)
    for got, want in zip(_output_and_first_derivatives(ours, inputs), _output_and_first_derivatives(plain, inputs)):
        if got is not None and want is not None:
            torch.testing.assert_close(got, want)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("ret", sorted(RETURNS))
@pytest.mark.parametrize("body", sorted(BODIES))
def test_the_nest_read_after_by_value_agrees_with_autograd(body, ret):
    ours, plain = function_and_plain(_text(BODIES[body], RETURNS[ret], "@function"), "Nest", 3)
    compare_with_plain(ours, plain, *_inputs(2, 2))


# a number the nest carries, read after it (`4 * n1 * grad_y * h`): recorded per step, bound there as `n1_now`
NUMBER = """\
@function
layer Nest(d: int) {
    param w: [d, d] = uniform(-1, 1)
    param u: [d, d] = uniform(-1, 1)
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d], z: [L, d]) -> [B, d] {
        h = h0
        n = 1
        for l in range(size_at(z, 0)) {
            for t in range(T) {
                h = tanh(x[t] @ w + h @ u)
            }
            n = n + 2
        }
        y = h * h * n
        return y * y
    }
}
"""


@pytest.mark.parametrize("counts", [(2, 3), (0, 2)], ids=lambda c: f"T{c[0]}-L{c[1]}")
def test_a_number_the_nest_carries_read_after_it_is_its_last_value(counts):
    ours, plain = function_and_plain(NUMBER, "Nest", 3)
    inputs = _inputs(*counts)
    for got, want in zip(_output_and_first_derivatives(ours, inputs), _output_and_first_derivatives(plain, inputs)):
        if got is not None and want is not None:
            torch.testing.assert_close(got, want)
