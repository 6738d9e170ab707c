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


def compare_with_plain(a: torch.nn.Module, b: torch.nn.Module, *inputs: torch.Tensor) -> None:
    """A `@function` module `a` against its plain module `b` (same state): equal outputs and gradients of the
    inputs and parameters, and gradcheck and gradgradcheck of `a` over both."""
    assert list(a.state_dict()) == list(b.state_dict())
    out, ref = a(*inputs), b(*inputs)
    torch.testing.assert_close(out, ref)
    seed = torch.randn_like(ref)
    got = torch.autograd.grad(out, [*inputs, *a.parameters()], seed, allow_unused=True)
    want = torch.autograd.grad(ref, [*inputs, *b.parameters()], seed, allow_unused=True)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w)
    names = [n for n, _ in a.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in a.parameters()]
    n_in = len(inputs)

    def run(*tensors):
        return torch.func.functional_call(a, dict(zip(names, tensors[n_in:])), tensors[:n_in])

    assert torch.autograd.gradcheck(run, (*inputs, *params))
    assert torch.autograd.gradgradcheck(run, (*inputs, *params))


def agree_with_plain(ours: torch.nn.Module, plain: torch.nn.Module, *inputs: torch.Tensor) -> None:
    """A `@function` module `ours` against its plain module `plain` (same state): same output, buffers, first
    and second derivatives of the inputs that require them and of the parameters, each run from one random
    state (a dropout draws the same mask in both)."""
    unused = {"allow_unused": True, "materialize_grads": True}
    wrt = [t for t in inputs if t.requires_grad]  # (not the int ones)
    torch.manual_seed(7)
    got = ours(*inputs)
    torch.manual_seed(7)
    want = plain(*inputs)
    torch.testing.assert_close(got, want)
    for (name, mine), (_, theirs) in zip(ours.named_buffers(), plain.named_buffers(), strict=True):
        torch.testing.assert_close(mine, theirs, msg=lambda m, name=name: f"buffer {name}: {m}")
    weights = torch.linspace(-1, 2, got.numel(), dtype=got.dtype).reshape(got.shape)
    firsts = [
        torch.autograd.grad((value * weights).sum(), [*wrt, *m.parameters()], create_graph=True, **unused)
        for m, value in ((ours, got), (plain, want))
    ]
    for g, p in zip(*firsts, strict=True):
        torch.testing.assert_close(g, p)
    seconds = [
        torch.autograd.grad(sum((g * g).sum() for g in first), [*wrt, *m.parameters()], **unused)
        for m, first in zip((ours, plain), firsts)
    ]
    for g, p in zip(*seconds, strict=True):
        torch.testing.assert_close(g, p)


def half_normal(*shape: int) -> torch.Tensor:
    """A float64 leaf of `shape`, normal with deviation 0.5, that requires grad."""
    return (0.5 * torch.randn(*shape, dtype=torch.float64)).requires_grad_()
