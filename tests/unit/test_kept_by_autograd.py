"""What the optimizer believes autograd keeps, checked against torch: an operand whose derivative formula
reads only its shape is kept by torch for some ops (gather, pooling, rfft, ...). Updating such an operand
in place after the op read it breaks a backward that is itself differentiated (create_graph), so every
shape-only read of the op table is probed here, and an op added with one fails until it is probed."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from layerdsl.ir import build as B
from layerdsl.language.ops import OPS
from layerdsl.optimize.operations import saved

_IDX = torch.tensor([[[0, 1, 0, 2, 1, 0, 0, 1]] * 3] * 2)

# op -> (the operand probed, torch applied to that operand) on a [2, 3, 8] float64 tensor
PROBES = {
    "sum": ("input", lambda x: x.sum(-1)),
    "mean": ("input", lambda x: x.mean(-1)),
    "reshape": ("input", lambda x: x.reshape(6, 8)),
    "flatten": ("input", lambda x: x.flatten(1)),
    "squeeze": ("input", lambda x: x[:, :1].squeeze(1)),
    "unflatten": ("input", lambda x: x.unflatten(-1, (2, 4))),
    "align": ("input", lambda x: x[:, None]),
    "expand": ("input", lambda x: x.expand(4, 2, 3, 8)),
    "fft": ("input", lambda x: torch.fft.fft(x).real),
    "rfft": ("input", lambda x: torch.fft.rfft(x).real),
    "ifft": ("input", lambda x: torch.fft.ifft(x.to(torch.complex128)).real),
    "irfft": ("input", lambda x: torch.fft.irfft(x.to(torch.complex128))),
    "gather": ("input", lambda x: torch.gather(x, 2, _IDX)),
    "index_select": ("input", lambda x: torch.index_select(x, 2, torch.tensor([0, 2]))),
    "index": ("input", lambda x: x[:, torch.tensor([0, 2])]),
    "index_many": ("input", lambda x: x[:, torch.tensor([0, 2]), torch.tensor([1, 5])]),
    "slice": ("input", lambda x: x[:, :, 1:3]),
    "select": ("input", lambda x: x[:, 1]),
    "embedding": ("weight", lambda w: F.embedding(torch.tensor([0, 1]), w[0])),
    "pad": ("input", lambda x: F.pad(x, [1, 1], mode="reflect")),
    "nll_loss": ("input", lambda x: F.nll_loss(x, torch.tensor([[0, 1] * 4, [2, 0] * 4]))),
    **{
        f"conv_transpose{d}d": (
            "bias",
            lambda b, d=d: _conv_transpose(d)(torch.ones(1, 2, *[3] * d), torch.ones(2, 8, *[1] * d), b[0, 0]),
        )
        for d in (1, 2, 3)
    },
    "layer_norm": ("bias", lambda b: F.layer_norm(torch.ones(2, 3, 8, dtype=b.dtype), [8], None, b[0, 0])),
    **{f"max_pool{d}d": ("input", lambda x, d=d: getattr(F, f"max_pool{d}d")(_rank(x, d), 2)) for d in (1, 2, 3)},
    **{f"avg_pool{d}d": ("input", lambda x, d=d: getattr(F, f"avg_pool{d}d")(_rank(x, d), 2)) for d in (1, 2, 3)},
    **{
        f"fractional_max_pool{d}d": ("input", lambda x, d=d: _fractional(d)(_rank(x, d), 1, output_size=[1] * d))
        for d in (2, 3)
    },
    **{
        f"adaptive_{kind}_pool{d}d": (
            "input",
            lambda x, k=kind, d=d: getattr(F, f"adaptive_{k}_pool{d}d")(_rank(x, d), 2),
        )
        for kind in ("avg", "max")
        for d in (1, 2, 3)
    },
}


def _rank(x: torch.Tensor, d: int) -> torch.Tensor:
    """x as a batch of d-dimensional signals (size-2 dims added in front of its last dim)."""
    return x.reshape(*x.shape[:-1], *([1] * (d - 1)), 8).expand(*x.shape[:-1], *([2] * (d - 1)), 8)


def _conv_transpose(d: int):
    return lambda x, w, b: getattr(F, f"conv_transpose{d}d")(x.to(b.dtype), w.to(b.dtype), b)


def _fractional(d: int):
    return getattr(F, f"fractional_max_pool{d}d")


def _shape_only_reads() -> set[tuple[str, str]]:
    """(op, operand) for each tensor operand a derivative formula names but reads only for its shape."""
    out = set()
    for name, op in OPS.items():
        tensors = [p.name for p in op.params if p.tensor]
        for p in tensors:
            if any(t and re.search(rf"\b{p}\b", t) for t in op.grads.values()) and p not in _believed(name):
                out.add((name, p))
    return out


def _believed(name: str) -> frozenset[str]:
    """What the optimizer believes autograd keeps of a call of op `name` on tensor operands."""
    args = [B.name(p.name) if p.tensor else B.num(0) for p in OPS[name].params]
    return saved(B.call(name, *args))


def _torch_keeps(fn) -> bool:
    leaf = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    operand = leaf * 1
    out = fn(operand)
    operand.add_(1)
    try:
        out.sum().backward()
    except RuntimeError as e:
        assert "modified by an inplace operation" in str(e)
        return True
    return False


def test_every_shape_only_read_has_a_probe():
    missing = {op for op, _ in _shape_only_reads()} - PROBES.keys()
    assert not missing, f"probe these against torch in PROBES: {sorted(missing)}"


@pytest.mark.parametrize("op", sorted(PROBES))
def test_the_optimizer_knows_what_autograd_keeps(op):
    operand, fn = PROBES[op]
    assert (operand in _believed(op)) == _torch_keeps(fn)


def test_a_differentiated_backward_does_not_update_a_gathered_gradient_in_place():
    """The differential run's counterexample: scatter_add's src gradient is a gather of a temporary that
    the backward then updated in place, which autograd had kept for the double backward."""
    from tests.test_differential import _check

    _check("exp(scatter_add((x), 1, (arange(n) % 2)[none, :], (x * 0.5)[:1]))")
