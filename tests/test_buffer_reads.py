"""A buffer read where autograd keeps it, in a forward that also updates it in place (`update b = ...`,
`copy_`): the read goes through a clone, so that backward works after the update, in the same call or after
a second forward (two forwards, one backward), in the plain module and under `@function`. Reads autograd
does not keep, and reads no call runs together with an update, stay plain."""

from __future__ import annotations

import pytest
import torch

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
