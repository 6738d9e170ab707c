"""`size_at()` of a slice by arguments under `@function` (issue 15), in the body of a loop whose count is
known only when forward runs and in straight code: the slice's length as torch clamps its bounds (negative
bounds counted from the end, bounds past the end, an empty slice), an int the Function computes from
the arguments and the sizes it keeps on ctx. The Function agrees with the plain module (outputs,
gradients, second derivatives) at 0, 1 and 3 steps, passes gradcheck and gradgradcheck in float64, with
`save = "inputs"` too, and saves no more than autograd."""

from __future__ import annotations

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .support import function_and_plain, saved_bytes

IN_A_LOOP = """
@function
layer SliceSize(d: int, a: int = 1, b: int = 3) {
    param w: [d, d] = uniform(-0.5, 0.5)
    example(d = 4)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        h = h0
        for t in range(T) {
            p = h[:, a:b]
            n = size_at(p, 1)
            h = tanh(h @ w + x[t]) * (n + 1)
        }
        return h
    }
}
"""

STRAIGHT = """
@function
layer SliceSize(d: int, a: int = 1, b: int = 3) {
    param w: [d, d] = uniform(-0.5, 0.5)
    example(d = 4)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        n = size_at(h0[:, a:b], 1) + size_at(x[1:, :, :b], 0)
        return tanh(h0 @ w) * (n + 1)
    }
}
"""

BOUNDS = [(1, 3), (0, 10), (-2, 4), (-10, -1), (3, 1), (2, -1)]


def _inputs(steps: int) -> list[torch.Tensor]:
    torch.manual_seed(steps)
    x = torch.randn(steps, 2, 4, dtype=torch.float64, requires_grad=True)
    return [x, torch.randn(2, 4, dtype=torch.float64, requires_grad=True)]


def _grads(module: torch.nn.Module, inputs: list[torch.Tensor], create_graph: bool = False) -> list[torch.Tensor]:
    out = module(*inputs)
    weights = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).reshape(out.shape)
    wrt = [*inputs, *module.parameters()]
    grads = torch.autograd.grad((out * weights).sum(), wrt, allow_unused=True, create_graph=create_graph)
    return [out] + [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)]


def _second(module: torch.nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The gradients of a weighted sum of the first derivatives (zeros where one is not read)."""
    first = _grads(module, inputs, create_graph=True)[1:]
    total = sum(((g * g).sum() for g in first if g.requires_grad), torch.zeros((), dtype=torch.float64))
    if not total.requires_grad:
        return []
    wrt = [*inputs, *module.parameters()]
    grads = torch.autograd.grad(total, wrt, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)]


@pytest.mark.parametrize("text", [IN_A_LOOP, STRAIGHT], ids=["in a loop", "straight"])
def test_size_at_of_a_slice_by_arguments_is_planned(text):
    spec = parse_file("slices.layer", text)
    check_program([spec])
    assert [p.message for p in plan_backwards([spec])[1]] == []


@pytest.mark.parametrize("save", ["@function", '@function(save = "inputs")'], ids=["saved", "inputs"])
@pytest.mark.parametrize("bounds", BOUNDS, ids=lambda b: f"{b[0]}:{b[1]}")
@pytest.mark.parametrize("text", [IN_A_LOOP, STRAIGHT], ids=["in a loop", "straight"])
def test_size_at_of_a_slice_by_arguments_agrees_with_the_plain_module(text, bounds, save):
    ours, plain = function_and_plain(text.replace("@function", save), "SliceSize", 4, *bounds)
    for steps in [0, 1, 3]:
        inputs = _inputs(steps)
        for got, want in zip(_grads(ours, inputs), _grads(plain, inputs), strict=True):
            torch.testing.assert_close(got, want)
        for got, want in zip(_second(ours, inputs), _second(plain, inputs), strict=True):
            torch.testing.assert_close(got, want)
        if steps or save == "@function":  # (the forward run again saves h0 at no steps: a strict xfail elsewhere)
            mine = saved_bytes(lambda inputs=inputs: ours(*inputs), ours)
            assert mine <= saved_bytes(lambda inputs=inputs: plain(*inputs), plain)
    inputs = _inputs(3)
    assert torch.autograd.gradcheck(ours, inputs)
    assert torch.autograd.gradgradcheck(ours, inputs)
