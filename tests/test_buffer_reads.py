"""A buffer read where autograd keeps it, in a forward that also updates it in place (`update b = ...`,
`copy_`): the read goes through a clone, so that backward works after the update, in the same call or after
a second forward (two forwards, one backward), in the plain module and under `@function`. Reads autograd
does not keep, and reads no call runs together with an update, stay plain."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .support import compile_spec

READ_THEN_UPDATE = """
layer EmaScale(d: int, momentum: float = 0.5) {
    buffer c: [d] = ones
    example(d = 4)
    forward(x: [B, d]) -> [B, d] {
        y = x * c
        if training {
            update c = (1 - momentum) * c + momentum * mean(abs(x), dim = 0)
        }
        return y
    }
}
"""

UPDATE_THEN_READ = """
layer PowerScale(d: int) {
    buffer u: [d] = ones
    example(d = 4)
    forward(x: [B, d]) -> [B, d] {
        update u = u * 0.5 + mean(abs(x), dim = 0)
        return x * u
    }
}
"""

CENTRED = """
layer EmaCentre(d: int) {
    buffer c: [d] = zeros
    example(d = 4)
    forward(x: [B, d]) -> [B, d] {
        y = (x - c) * 2
        if training {
            update c = 0.5 * c + 0.5 * mean(x, dim = 0)
        }
        return y
    }
}
"""

EXCLUSIVE = """
layer Exclusive(d: int, track: bool = true) {
    buffer c: [d] = ones if track
    example(d = 4)
    forward(x: [B, d]) -> [B, d] {
        if track and not training {
            s = c
        } else {
            s = mean(abs(x), dim = 0)
        }
        if track and training {
            update c = 0.5 * c + 0.5 * s
        }
        return x * s
    }
}
"""


def _module_source(text: str, function: bool) -> str:
    return compile_spec(("@function\n" if function else "") + text, "spec")["SOURCE"]


def _module(text: str, stem: str, name: str, function: bool):
    ns = compile_spec(("@function\n" if function else "") + text, stem + ("_f" if function else ""))
    return ns[name]


@pytest.mark.parametrize("function", [False, True])
def test_a_buffer_read_then_updated_in_the_same_call_backpropagates(function):
    m = _module(READ_THEN_UPDATE, "ema_scale", "EmaScale", function)(4).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    before = m.c.clone()
    m(x).sum().backward()
    assert not torch.equal(m.c, before)  # it was updated
    torch.testing.assert_close(x.grad, before.expand(3, 4))  # the value the forward read, not the new one


@pytest.mark.parametrize("function", [False, True])
def test_two_forwards_then_one_backward_see_each_forwards_buffer(function):
    m = _module(READ_THEN_UPDATE, "ema_scale2", "EmaScale", function)(4).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    first = m.c.clone()
    y1 = m(x)
    second = m.c.clone()
    y2 = m(x)
    (y1.sum() + y2.sum()).backward()
    torch.testing.assert_close(x.grad, (first + second).expand(3, 4))


@pytest.mark.parametrize("function", [False, True])
def test_a_buffer_updated_then_read_survives_the_next_calls_update(function):
    """The spectral-norm pattern: update, then read; a second forward updates again before backward."""
    m = _module(UPDATE_THEN_READ, "power_scale", "PowerScale", function)(4).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y1 = m(x)
    first = m.u.clone()
    y2 = m(x)
    second = m.u.clone()
    (y1.sum() + y2.sum()).backward()
    torch.testing.assert_close(x.grad, (first + second).expand(3, 4))


@pytest.mark.parametrize("function", [False, True])
def test_reads_autograd_does_not_keep_or_that_never_meet_an_update_are_not_cloned(function):
    for text in (CENTRED, EXCLUSIVE):
        assert ".clone()" not in _module_source(text, function)
    m = _module(EXCLUSIVE, "exclusive", "Exclusive", function)(4).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    m(x).sum().backward()  # training: reads its batch's statistic, updates c
    m.eval()
    m(x).sum().backward()


@pytest.mark.parametrize("function", [False, True])
def test_a_kept_read_is_written_as_a_clone(function):
    assert "self.c.clone()" in _module_source(READ_THEN_UPDATE, function)


WITH_A_SUB = """
layer MixedScale(d: int, momentum: float = 0.5) {
    sub mix = Mix(d)
    buffer c: [d] = ones
    example(d = 4)
    forward(x: [B, d]) -> [B, d] {
        y = mix(x) * c
        if training {
            update c = (1 - momentum) * c + momentum * mean(abs(x), dim = 0)
        }
        return y
    }
}

layer Mix(d: int) {
    param w: [d, d] = uniform(-0.5, 0.5)
    example(d = 4)
    forward(x: [B, d]) -> [B, d] {
        return x @ w
    }
}
"""


@pytest.mark.parametrize("function", [False, True])
def test_a_layer_with_an_inlined_sub_clones_its_buffer_too(function):
    """Under @function the module passes an inlined layer's tensors by `function_members`: the buffer's
    clone is taken there as well (two forwards, one backward)."""
    m = _module(WITH_A_SUB, "mixed_scale", "MixedScale", function)(4).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    first = m.c.clone()
    y1 = m(x)
    second = m.c.clone()
    y2 = m(x)
    (y1.sum() + y2.sum()).backward()
    assert not torch.equal(first, second)  # the second forward read the updated buffer
    torch.testing.assert_close(m.mix.w.grad, x.detach().T @ (first + second).expand(3, 4))


class _Clones(TorchDispatchMode):
    """Counts the ATen clone calls run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.overloadpacket.__name__ == "clone"
        return func(*args, **(kwargs or {}))


def _clones(m: torch.nn.Module, x: torch.Tensor) -> int:
    with _Clones() as counted:
        m(x)
    return counted.count


@pytest.mark.parametrize("function", [False, True])
@pytest.mark.parametrize(
    ("text", "stem", "name", "in_eval"),
    [(READ_THEN_UPDATE, "ema_eval", "EmaScale", 0), (WITH_A_SUB, "mixed_eval", "MixedScale", 0)]
    + [(UPDATE_THEN_READ, "power_eval", "PowerScale", 1)],
    ids=["updated_in_training", "with_a_sub", "updated_in_eval_too"],
)
def test_a_buffer_only_training_updates_is_cloned_only_in_training(function, text, stem, name, in_eval):
    m = _module(text, stem, name, function)(4).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert _clones(m, x) == 1
    m.eval()
    assert _clones(m, x) == in_eval
    m(x).sum().backward()  # eval: no update, the buffer itself is read
