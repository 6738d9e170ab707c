"""`@function` forwards with a loop whose count is known only when forward runs, where they were refused
before (issue 15): a loop on one side of an `if` only (`if bidirectional { for ... }`, nothing on the
other side); an optional input read outside the `if`s testing it (`h + g`, a side with it given and one
without), and a member built when a tensor argument is given (`param b: [d] if init != none`); and,
past 32 combinations of `if`s (each `if` then a segment of its own), a side binding a
number (`if a { k = 2 }`, a statement `k = 2 if a else k` of its own); a buffer update between loops
(running statistics: the Function returns the new value, the module writes it). Each agrees with the plain module (outputs, gradients of the inputs and parameters), passes
gradcheck and gradgradcheck in float64 with the argument, flag or optional input on and off, and saves no
more than autograd."""

from __future__ import annotations

import re

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .support import assert_same_function, function_and_plain, saved_bytes

STEPS = [1, 3]  # torch.stack of no items is an error

# torch.nn.RNN's reverse direction, run only when an argument says: nothing on the other side
ONE_SIDE = """
@function
layer OneSide(d: int, bidirectional: bool = true) {
    param w: [d, d] = uniform(-0.5, 0.5)
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [T, B, d] {
        y = tanh(x @ w + h0)
        if bidirectional {
            h = h0
            outputs = []
            for t in range(T) {
                h = tanh(h @ w + x[T - 1 - t])
                outputs.append(h)
            }
            y = y * flip(stack(outputs, dim = 0), [0])
        }
        return y
    }
}
"""

# the loop under a flag input, straight statements on the other side, a second loop under `hx != none`
# only, and an argument's `if` after both
SIDES = """
@function
layer Sides(d: int, scaled: bool = false) {
    param w: [d, d] = uniform(-0.5, 0.5)
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d], hx: [B, d]? = none, run: bool = true) -> [T, B, d] {
        h = sin(h0)
        outputs = []
        if run {
            for t in range(T) {
                h = tanh(h @ w + x[t])
                outputs.append(h)
            }
            y = stack(outputs, dim = 0)
        } else {
            y = x * sigmoid(h @ w)
        }
        if hx != none {
            g = hx
            gs = []
            for t in range(T) {
                g = tanh(g @ w + x[t])
                gs.append(g)
            }
            y = y * stack(gs, dim = 0)
        }
        if scaled {
            y = y * 2.0
        }
        return y
    }
}
"""


# an optional input read outside any `if`: `+ g` and `* g` are left out when it is not given
OPTIONAL_READ = """
@function
layer OptionalRead(d: int) {
    param w: [d, d] = uniform(-0.5, 0.5)
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d], g: [B, d]? = none) -> [B, d] {
        h = h0
        for t in range(T) {
            h = tanh(h @ w + x[t]) + g
        }
        if g != none {
            h = h * sigmoid(g)
        }
        return h * g
    }
}
"""

# a member built when a tensor argument is given: a side with it, one without (`+ b` left out)
TENSOR_ARGUMENT_MEMBER = """
@function
layer TensorArgumentMember(d: int, init: tensor? = none) {
    param w: [d, d] = uniform(-0.5, 0.5)
    param b: [d] = uniform(-0.5, 0.5) if init != none
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        h = h0
        for t in range(T) {
            h = tanh(h @ w + x[t]) + b
        }
        return h
    }
}
"""

FLAGS = ["a", "b", "c", "e", "f", "g"]

# six `if`s on arguments before a loop: 64 combinations, each `if` a segment of its own; `a`'s side binds
# the number the loop reads
MANY_IFS = (
    """
@function
layer ManyIfs(d: int, """
    + ", ".join(f"{f}: bool = true" for f in FLAGS)
    + """) {
    param w: [d, d] = uniform(-0.5, 0.5)
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        h = h0
        k = 1
        if a {
            k = 2
            h = h * 2.0
        }
        if b {
            h = sin(h)
        }
        if c {
            h = h + h0
        }
        if e {
            h = cos(h)
        }
        if f {
            h = tanh(h)
        }
        if g {
            h = h - h0
        }
        for t in range(T) {
            h = tanh(h @ w + x[t]) * k
        }
        return h
    }
}
"""
)


# running statistics of what a loop computes, updated when training, and a buffer updated on every call
STATISTICS = """
@function
layer Statistics(d: int, momentum: float = 0.1) {
    param w: [d, d] = uniform(-0.5, 0.5)
    buffer running_mean: [d] = zeros
    buffer last_scale: [d] = ones
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        h = h0
        for t in range(T) {
            h = tanh(h @ w + x[t])
        }
        if training {
            m = mean(h, dim = 0)
            update running_mean = running_mean * (1.0 - momentum) + m * momentum
        } else {
            m = running_mean
        }
        out = (h - m) * last_scale
        update last_scale = mean(h0 * h0, dim = 0) + last_scale * 0.5
        return out
    }
}
"""


def _inputs(steps: int, optional: bool) -> list[torch.Tensor]:
    torch.manual_seed(steps)
    shapes = [(steps, 2, 3), (2, 3)] + ([(2, 3)] if optional else [])
    return [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in shapes]


def _agrees(ours: torch.nn.Module, plain: torch.nn.Module, inputs: list, **flags) -> None:
    """Same values and gradients as the plain module, gradcheck and gradgradcheck, no more saved."""

    def run(module):
        return lambda *tensors: module(*tensors, **flags)

    assert_same_function(_Called(ours, flags), _Called(plain, flags), *inputs)
    assert torch.autograd.gradcheck(run(ours), inputs)
    assert torch.autograd.gradgradcheck(run(ours), inputs)
    assert saved_bytes(lambda: ours(*inputs, **flags), ours) <= saved_bytes(lambda: plain(*inputs, **flags), plain)


class _Called(torch.nn.Module):
    """`module` called with keyword inputs besides the tensors (a flag), its parameters its own."""

    def __init__(self, module: torch.nn.Module, flags: dict) -> None:
        super().__init__()
        self.module, self.flags = module, flags

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.module(*tensors, **self.flags)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("bidirectional", [True, False])
def test_a_loop_on_one_side_of_an_if_on_an_argument(steps, bidirectional):
    ours, plain = function_and_plain(ONE_SIDE, "OneSide", 3, bidirectional)
    _agrees(ours, plain, _inputs(steps, False))


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("scaled", [True, False])
@pytest.mark.parametrize("given", [True, False])
@pytest.mark.parametrize("run", [True, False])
def test_loops_under_a_flag_and_an_optional_input_on_one_side(steps, scaled, given, run):
    ours, plain = function_and_plain(SIDES, "Sides", 3, scaled)
    _agrees(ours, plain, _inputs(steps, given), run=run)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("given", [True, False])
def test_an_optional_input_read_outside_its_ifs_in_a_forward_with_a_loop(steps, given):
    ours, plain = function_and_plain(OPTIONAL_READ, "OptionalRead", 3)
    _agrees(ours, plain, _inputs(steps, given))


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("built", [True, False])
def test_a_member_built_when_a_tensor_argument_is_given_read_in_a_loop(steps, built):
    init = torch.zeros(3) if built else None
    ours, plain = function_and_plain(TENSOR_ARGUMENT_MEMBER, "TensorArgumentMember", 3, init)
    assert (ours.b is not None) == built
    _agrees(ours, plain, _inputs(steps, False))


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize(
    "on", [set(FLAGS), set(), {"a", "c", "f"}, {"b", "e", "g"}, {"a", "b"}], ids=lambda on: "-".join(sorted(on))
)
def test_a_side_of_an_if_of_its_own_binds_a_number(steps, on):
    ours, plain = function_and_plain(MANY_IFS, "ManyIfs", 3, *(f in on for f in FLAGS))
    _agrees(ours, plain, _inputs(steps, False))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_buffers_updated_in_a_forward_with_a_loop(training):
    ours, plain = function_and_plain(STATISTICS, "Statistics", 3)
    ours.train(training)
    plain.train(training)
    for steps in (1, 3, 2):  # each step's buffers are the plain module's after the step before
        inputs = _inputs(steps, False)
        assert_same_function(ours, plain, *inputs)  # (each module called once: its buffers updated once)
        for (name, got), (_, want) in zip(ours.named_buffers(), plain.named_buffers(), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
        assert not any(b.requires_grad for b in ours.buffers())
    before = {k: v.clone() for k, v in ours.named_buffers()}
    inputs = _inputs(2, False)

    def restored(module: torch.nn.Module) -> torch.nn.Module:
        with torch.no_grad():
            for name, b in module.named_buffers():
                b.copy_(before[name])
        return module

    def run(*tensors: torch.Tensor) -> torch.Tensor:  # each call from the same buffers
        return restored(ours)(*tensors)

    assert torch.autograd.gradcheck(run, inputs)
    assert torch.autograd.gradgradcheck(run, inputs)
    # the new values are returned, not saved: no more than the same layer without its updates
    without, _ = function_and_plain(re.sub(r"update \w+ = [^\n]*\n", "", STATISTICS), "Statistics", 3)
    without.train(training)
    assert saved_bytes(lambda: restored(ours)(*inputs), ours) <= saved_bytes(lambda: without(*inputs), without)


def test_buffers_updated_in_a_forward_with_a_loop_save_no_more_than_autograd():
    ours, plain = function_and_plain(STATISTICS, "Statistics", 3)
    inputs = _inputs(2, False)
    assert saved_bytes(lambda: ours(*inputs), ours) <= saved_bytes(lambda: plain(*inputs), plain)


def _problems(text: str) -> list[str]:
    spec = parse_file("sites.layer", text)
    check_program([spec])
    return [p.message for p in plan_backwards([spec])[1]]


@pytest.mark.parametrize(
    "text",
    [ONE_SIDE, SIDES, OPTIONAL_READ, TENSOR_ARGUMENT_MEMBER, MANY_IFS, STATISTICS],
    ids=["one side", "flag and optional input", "optional input read", "member", "a side binding a number", "buffers"],
)
def test_a_loop_on_one_side_is_planned(text):
    assert _problems(text) == []
