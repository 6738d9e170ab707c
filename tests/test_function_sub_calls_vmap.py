"""The composed Functions of `@function` stacks (torch's TransformerEncoder and Transformer; a small stack and
a layer of stacks) under `torch.func`: their `setup_context` rebuilds each call's context from the outputs
forward returns, so `vmap` over a batch of inputs, `jacrev`, `grad` and per-sample gradients (`vmap` of
`grad`) agree with the plain modules (autograd), in float64."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, jacrev, vmap

from .test_function_sub_calls import _pair, small, torch_nn  # noqa: F401  (torch_nn: a fixture)


def _same(got, want) -> None:
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def _transforms_agree(a: torch.nn.Module, b: torch.nn.Module, batch: list[torch.Tensor], **kwargs) -> None:
    """`a` (composed) and `b` (plain, same state) under vmap over the first dim of `batch`, jacrev of the
    first example, and per-sample gradients of the parameters."""
    assert type(a(*[x[0].requires_grad_() for x in batch], **kwargs).grad_fn).__name__.endswith("FunctionBackward")
    batch = [x.detach() for x in batch]
    _same(vmap(lambda *xs: a(*xs, **kwargs))(*batch), vmap(lambda *xs: b(*xs, **kwargs))(*batch))
    first = tuple(x[0] for x in batch)
    argnums = tuple(range(len(first)))
    _same(jacrev(lambda *xs: a(*xs, **kwargs), argnums)(*first), jacrev(lambda *xs: b(*xs, **kwargs), argnums)(*first))

    def per_sample(m: torch.nn.Module) -> dict:
        def loss(p: dict, *xs: torch.Tensor) -> torch.Tensor:
            y = functional_call(m, p, xs, kwargs)
            return (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum()

        params = {k: v.detach() for k, v in m.named_parameters()}
        return vmap(grad(loss), in_dims=(None, *[0] * len(batch)))(params, *batch)

    got, want = per_sample(a), per_sample(b)
    assert got.keys() == want.keys() and got
    for k in want:
        _same(got[k], want[k])


@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_a_small_stack_under_vmap_jacrev_and_grad(norm, masked):
    def build(ns):
        torch.manual_seed(0)
        return ns["Stack"](ns["Block"](3, a=False), 2, ns["Norm"](3) if norm else None).double()

    a, b = build(small(True)), build(small(False))
    b.load_state_dict(a.state_dict())
    batch = [torch.randn(4, 2, 3, dtype=torch.float64)]
    batch += [torch.rand(4, 2, 3, dtype=torch.float64)] if masked else []
    _transforms_agree(a, b, batch)


def test_a_layer_of_stacks_under_vmap_jacrev_and_grad():
    def build(ns):
        torch.manual_seed(0)
        return ns["Pair"](3, 2).double()

    a, b = build(small(True)), build(small(False))
    b.load_state_dict(a.state_dict())
    _transforms_agree(a, b, [torch.randn(4, 2, 3, dtype=torch.float64), torch.randn(4, 2, 3, dtype=torch.float64)])


def test_a_small_stacks_second_derivatives_under_jacrev():
    def build(ns):
        torch.manual_seed(0)
        return ns["Stack"](ns["Block"](3, b=False), 2, ns["Norm"](3)).double()

    a, b = build(small(True)), build(small(False))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, dtype=torch.float64)
    _same(jacrev(jacrev(lambda v: a(v).sum(0)))(x), jacrev(jacrev(lambda v: b(v).sum(0)))(x))


@pytest.mark.parametrize(("norm_first", "norm", "masked"), [(False, True, True), (True, False, False)])
def test_torch_nns_encoder_stack_under_vmap_jacrev_and_grad(torch_nn, norm_first, norm, masked):  # noqa: F811
    def build(ns):
        layer = ns.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, norm_first=norm_first)
        return ns.TransformerEncoder(layer, 2, ns.LayerNorm(8) if norm else None)

    a, b = _pair(torch_nn, build)
    masks = {}
    if masked:
        masks = {"mask": torch.triu(torch.ones(3, 3, dtype=torch.bool), 1)}
    _transforms_agree(a, b, [torch.randn(4, 3, 1, 8, dtype=torch.float64)], **masks)


def test_torch_nns_transformer_under_vmap_jacrev_and_grad(torch_nn):  # noqa: F811
    a, b = _pair(torch_nn, lambda ns: ns.Transformer(8, 2, 1, 1, dim_feedforward=16, dropout=0.0))
    masks = {"tgt_mask": torch.triu(torch.ones(2, 2, dtype=torch.bool), 1)}
    batch = [torch.randn(3, 2, 1, 8, dtype=torch.float64), torch.randn(3, 2, 1, 8, dtype=torch.float64)]
    _transforms_agree(a, b, batch, **masks)
