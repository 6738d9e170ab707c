"""A generated Function's `apply` skips Function.apply's argument binding, and takes the full path where the
torch internals that tell when it must (a torch.func transform, torch.compile) are absent from this torch."""

from __future__ import annotations

import sys

import pytest
import torch

D = torch.float64
PROBES = [(torch._C, "_are_functorch_transforms_active"), (torch.compiler, "is_compiling")]


@pytest.fixture
def full_path_calls(monkeypatch):
    """How many calls went through `torch.autograd.Function.apply` (the full path)."""
    calls = []
    full = torch.autograd.Function.apply.__func__

    def counted(cls, *args, **kwargs):
        calls.append(cls.__name__)
        return full(cls, *args, **kwargs)

    monkeypatch.setattr(torch.autograd.Function, "apply", classmethod(counted))
    return calls


def step(gen):
    torch.manual_seed(0)
    layer = gen.SwishFunctional(6, dtype=D)
    x = torch.randn(4, 6, dtype=D, requires_grad=True)
    y = layer(x)
    return y, torch.autograd.grad(y.sum(), (x, *layer.parameters()))


def test_with_the_probes_the_call_goes_straight_to_the_cpp_entry_point(gen, full_path_calls):
    step(gen)
    assert full_path_calls == []


@pytest.mark.parametrize("owner, probe", PROBES, ids=[name for _, name in PROBES])
def test_without_a_probe_the_plain_function_apply_runs_and_gives_the_same_values(gen, monkeypatch, owner, probe):
    want, want_grads = step(gen)
    saved = getattr(owner, probe)
    full = torch.autograd.Function.apply.__func__
    calls = []

    def full_path(cls, *args):  # this torch's own Function.apply uses the probe: it gets it back meanwhile
        calls.append(cls.__name__)
        setattr(owner, probe, saved)
        try:
            return full(cls, *args)
        finally:
            delattr(owner, probe)

    monkeypatch.setattr(torch.autograd.Function, "apply", classmethod(full_path))
    monkeypatch.delattr(owner, probe)
    got, got_grads = step(gen)
    monkeypatch.undo()
    assert calls == ["SwishFunctionalFunction"]
    assert torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(got_grads, want_grads))


def test_every_generated_function_guards_its_fast_path(gen):
    import inspect

    module = sys.modules[gen.SwishFunctional.__module__]
    source = inspect.getsource(module.SwishFunctionalFunction.apply)
    assert 'getattr(torch._C, "_are_functorch_transforms_active", None)' in source
    assert 'getattr(torch.compiler, "is_compiling", None)' in source
