"""What the tests of `@function` layers share: a `Function` against its plain form (autograd on the
functional form or the module without `@function`), in float64: equal outputs and first and second
derivatives, and gradcheck and gradgradcheck of the Function itself."""

from __future__ import annotations

import torch


def double(*shape: int, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    """A float64 leaf of `shape`, uniform in [lo, hi), that requires grad."""
    return torch.empty(shape, dtype=torch.float64).uniform_(lo, hi).requires_grad_()


def agree(got, want, inputs: list[torch.Tensor]) -> None:
    """Equal outputs (a tensor or a tuple of them), and equal first and second derivatives with respect to
    `inputs`."""
    got, want = (g if isinstance(g, tuple) else (g,) for g in (got, want))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    seeds = [torch.randn_like(w) for w in want]
    first = [torch.autograd.grad(list(outs), inputs, seeds, create_graph=True) for outs in (got, want)]
    for a, b in zip(*first):
        torch.testing.assert_close(a, b)
    weights = [torch.linspace(-1, 1, g.numel(), dtype=g.dtype).view_as(g) for g in first[1]]
    second = [torch.autograd.grad(sum((g * w).sum() for g, w in zip(gs, weights)), inputs) for gs in first]
    for a, b in zip(*second):
        torch.testing.assert_close(a, b)


def checked(fn, inputs: list[torch.Tensor]) -> None:
    """gradcheck and gradgradcheck of `fn` (a Function's `apply`, or a call of it) at `inputs`."""
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)
