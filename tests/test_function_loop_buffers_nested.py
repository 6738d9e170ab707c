"""`@function` forwards whose buffer updates are in a loop holding a loop (a `Nest`, in its outer body or its
inner loop's body), in a loop whose `if` picks its side per step (outside the `if`, or on one of its sides),
or in an `if` of such a loop's body (issue 15): each loop carries the buffers it updates as locals of its own
(`autodiff.loop_buffers.as_carried_locals`), whose gradient stops at every update. After every call the
buffers are bit for bit the plain module's, in train and eval, and outputs, gradients and second
derivatives agree with it at 0, 1, 2 and 5 steps, with `save = "inputs"` too; gradcheck and gradgradcheck
pass in float64, and no more is saved than autograd saves.
"""

from __future__ import annotations

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .support import compile_spec, function_and_plain, saved_bytes
from .test_function_loop_buffers_in_body import _grads, _restoring, _same_buffers

STEPS = [0, 1, 2, 5]
SAVES = ["@function", '@function(save = "inputs")']

# the updates in the outer body, after the inner loop; the next outer step reads them by value (count) and
# as an operand of `+` (avg)
NEST_OUTER = """
@function
layer NestOuter(d: int, layers: int) {
    param w: [d, d] = uniform(-0.5, 0.5)
    buffer avg: [d] = zeros
    buffer count: [] = zeros
    example(d = 3, layers = 2)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        h = h0
        for k in range(layers) {
            g = h * (1.0 + count * 0.1)
            for t in range(T) {
                g = tanh(g @ w + x[t])
            }
            h = g + avg
            update avg = avg * 0.9 + mean(h, dim = 0) * 0.1
            update count = count + 1.0
        }
        return h
    }
}
"""

# the updates in the inner loop's body: every inner step of every outer step reads what the one before wrote
NEST_INNER = """
@function
layer NestInner(d: int, layers: int) {
    param w: [d, d] = uniform(-0.5, 0.5)
    buffer avg: [d] = zeros
    buffer count: [] = zeros
    example(d = 3, layers = 2)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        h = h0
        for k in range(layers) {
            for t in range(T) {
                h = tanh(h @ w + x[t] + avg) * (1.0 + count * 0.1)
                update avg = avg * 0.9 + mean(h, dim = 0) * 0.1
                update count = count + 1.0
            }
        }
        return h * avg
    }
}
"""

# a choice per step, the updates after it
STEP_AFTER = """
@function
layer StepAfter(d: int) {
    param w: [d, d] = uniform(-0.5, 0.5)
    buffer avg: [d] = zeros
    buffer count: [] = zeros
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        h = h0
        for t in range(T) {
            if t % 2 == 1 {
                h = tanh(h @ w + x[t] + avg)
            } else {
                h = sigmoid(h @ w - x[t]) * (1.0 + count * 0.1)
            }
            update avg = avg * 0.9 + mean(h, dim = 0) * 0.1
            update count = count + 1.0
        }
        return h
    }
}
"""

# a choice per step, each side updating a buffer of its own
STEP_SIDES = """
@function
layer StepSides(d: int) {
    param w: [d, d] = uniform(-0.5, 0.5)
    buffer avg: [d] = zeros
    buffer count: [] = zeros
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        h = h0
        for t in range(T) {
            if t % 2 == 1 {
                h = tanh(h @ w + x[t] + avg)
                update avg = avg * 0.9 + mean(h, dim = 0) * 0.1
            } else {
                h = sigmoid(h @ w - x[t]) * (1.0 + count * 0.1)
                update count = count + 1.0
            }
        }
        return h * avg
    }
}
"""

# an `if` in the outer body of a nest, tested at each outer step, updating a buffer
NEST_IF = """
@function
layer NestIf(d: int, layers: int) {
    param w: [d, d] = uniform(-0.5, 0.5)
    buffer avg: [d] = zeros
    example(d = 3, layers = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        h = h0
        for k in range(layers) {
            for t in range(T) {
                h = tanh(h @ w + x[t])
            }
            if k % 2 == 0 {
                update avg = avg * 0.5 + mean(h, dim = 0)
            }
            h = h * avg
        }
        return h
    }
}
"""

# a buffer updated before a nest, in it, then in a side of a choice per step, read by value throughout
TWICE = """
@function
layer Twice(d: int, layers: int) {
    param w: [d, d] = uniform(-0.5, 0.5)
    buffer avg: [d] = zeros
    example(d = 3, layers = 2)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        update avg = avg * 0.5 + mean(h0, dim = 0)
        h = h0 * avg
        for k in range(layers) {
            for t in range(T) {
                h = tanh(h @ w + x[t]) * avg
            }
            update avg = avg * 0.9 + mean(h, dim = 0) * 0.1
        }
        g = h * avg
        for t in range(T) {
            if t % 2 == 0 {
                g = tanh(g @ w) + avg
                update avg = avg * 0.9 + mean(g, dim = 0) * 0.1
            } else {
                g = g * avg
            }
        }
        return g * avg + h
    }
}
"""

SPECS = {
    "nest outer": (NEST_OUTER, "NestOuter", (3, 2)),
    "nest inner": (NEST_INNER, "NestInner", (3, 2)),
    "step after": (STEP_AFTER, "StepAfter", (3,)),
    "step sides": (STEP_SIDES, "StepSides", (3,)),
    "nest if": (NEST_IF, "NestIf", (3, 3)),
    "twice": (TWICE, "Twice", (3, 2)),
}

# for gradcheck: what the outputs read of the buffers does not depend on the inputs of the same call (a count
# each step reads and updates, a running mean read in eval only)
NEST_STATISTICS = """
@function
layer NestStatistics(d: int, layers: int, momentum: float = 0.1) {
    param w: [d, d] = uniform(-0.5, 0.5)
    buffer avg: [d] = zeros
    buffer count: [] = zeros
    example(d = 3, layers = 2)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        h = h0
        for k in range(layers) {
            for t in range(T) {
                h = tanh(h @ w + x[t]) * (1.0 + count * 0.1)
                update count = count + 1.0
            }
            if training {
                update avg = avg * (1.0 - momentum) + mean(h, dim = 0) * momentum
            } else {
                h = h - avg
            }
        }
        return h
    }
}
"""

STEP_STATISTICS = """
@function
layer StepStatistics(d: int, momentum: float = 0.1) {
    param w: [d, d] = uniform(-0.5, 0.5)
    buffer avg: [d] = zeros
    buffer count: [] = zeros
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        h = h0
        for t in range(T) {
            if t % 2 == 1 {
                h = tanh(h @ w + x[t]) * (1.0 + count * 0.1)
                update count = count + 1.0
            } else {
                h = sigmoid(h @ w - x[t])
            }
            if training {
                update avg = avg * (1.0 - momentum) + mean(h, dim = 0) * momentum
            } else {
                h = h - avg
            }
        }
        return h
    }
}
"""

STATISTICS = {
    "nest": (NEST_STATISTICS, "NestStatistics", (3, 2)),
    "step": (STEP_STATISTICS, "StepStatistics", (3,)),
}


def _inputs(steps: int) -> list[torch.Tensor]:
    torch.manual_seed(steps)
    x = torch.randn(steps, 2, 3, dtype=torch.float64, requires_grad=True)
    return [x, torch.randn(2, 3, dtype=torch.float64, requires_grad=True)]


def _modules(key: str, save: str, training: bool, specs=SPECS) -> tuple[torch.nn.Module, torch.nn.Module]:
    text, name, args = specs[key]
    text = text.replace("@function", save)
    assert f"class {name}Function(" in compile_spec(text, name.lower())["SOURCE"]  # derived, not autograd's
    ours, plain = function_and_plain(text, name, *args)
    ours.train(training)
    plain.train(training)
    return ours, plain


def _second(module: torch.nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Second derivatives: the gradients of a weighted sum of the first ones (zeros where the first ones
    read no input, as at no steps of a loop)."""
    first = _grads(module, inputs, create_graph=True)[1:]
    total = sum(((g * g).sum() for g in first if g.requires_grad), torch.zeros((), dtype=torch.float64))
    wrt = [*inputs, *module.parameters()]
    if not total.requires_grad:
        return [torch.zeros_like(t) for t in wrt]
    grads = torch.autograd.grad(total, wrt, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)]


def _problems(text: str) -> list[str]:
    spec = parse_file("loop_buffers_nested.layer", text)
    check_program([spec])
    return [p.message for p in plan_backwards([spec])[1]]


@pytest.mark.parametrize("key", [*SPECS, *STATISTICS])
def test_buffer_updates_in_nests_and_choices_per_step_are_planned(key):
    assert _problems({**SPECS, **STATISTICS}[key][0]) == []


@pytest.mark.parametrize("save", SAVES, ids=["saved", "inputs"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("key", SPECS)
def test_buffers_updated_in_nests_and_choices_agree_with_the_plain_module(key, training, save):
    ours, plain = _modules(key, save, training)
    calls = [*STEPS, 3, 0, 2]
    for steps in calls:  # each call's buffers are the plain module's after the call before
        inputs = _inputs(steps)
        for got, want in zip(_grads(ours, inputs), _grads(plain, inputs), strict=True):
            torch.testing.assert_close(got, want)
        _same_buffers(ours, plain)
    assert all((b != 0).any() for b in ours.buffers())  # the buffers change as the steps run


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("save", SAVES, ids=["saved", "inputs"])
@pytest.mark.parametrize("key", SPECS)
def test_buffers_updated_in_nests_and_choices_second_derivatives(key, save, steps):
    ours, plain = _modules(key, save, True)
    for calls in range(2):  # the second call reads the buffers the first one wrote
        inputs = _inputs(steps + calls)
        for got, want in zip(_second(ours, inputs), _second(plain, inputs), strict=True):
            torch.testing.assert_close(got, want)
        _same_buffers(ours, plain)


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("save", SAVES, ids=["saved", "inputs"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("key", STATISTICS)
def test_buffers_updated_in_nests_and_choices_gradcheck(key, training, save, steps):
    ours, plain = _modules(key, save, training, STATISTICS)
    with torch.no_grad():
        ours.avg.uniform_(-1, 1)  # as after training
    plain.load_state_dict(ours.state_dict())
    for calls in range(2):
        inputs = _inputs(steps + calls)
        for got, want in zip(_grads(ours, inputs), _grads(plain, inputs), strict=True):
            torch.testing.assert_close(got, want)
        _same_buffers(ours, plain)
    run = _restoring(ours)
    inputs = _inputs(steps)
    assert torch.autograd.gradcheck(run, inputs)
    assert torch.autograd.gradgradcheck(run, inputs)


# what the Function keeps past autograd here, as it does without the updates (not the buffers' doing)
_EXCESS = pytest.mark.xfail(
    strict=True,
    reason="codegen/function_nest.py keeps more than autograd where no step of the outer loop runs and the inner"
    " loop's start is computed in the outer body (as it does without the buffer updates); next: keep a nest's"
    " per-outer-step values only where an inner step runs (`loop_starts.when_a_step_runs`)",
)
_EXCESS_AT_NO_STEPS = {"nest inner", "nest if", "twice"}
_SAVING = [
    pytest.param(
        key,
        steps,
        marks=[_EXCESS] if steps == 0 and key in _EXCESS_AT_NO_STEPS else [],
    )
    for key in SPECS
    for steps in STEPS
]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(("key", "steps"), _SAVING)
def test_buffers_updated_in_nests_and_choices_save_no_more_than_autograd(key, steps, training):
    ours, plain = _modules(key, SAVES[0], training)
    inputs = _inputs(steps)
    assert saved_bytes(lambda: ours(*inputs), ours) <= saved_bytes(lambda: plain(*inputs), plain)


# `save = "inputs"`: the Function saves the buffers it is passed, so one the module then updates in place goes
# through a clone even where autograd keeps no read of it (`+ avg`): before, backward failed with torch's
# "modified by an inplace operation", in a forward without loops and with them alike
PLUS_STRAIGHT = """
@function
layer PlusStraight(d: int) {
    param w: [d, d] = uniform(-0.5, 0.5)
    buffer avg: [d] = zeros
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        h = tanh(h0 @ w + avg)
        update avg = avg * 0.9 + mean(h, dim = 0) * 0.1
        return h
    }
}
"""

PLUS_LOOP = """
@function
layer PlusLoop(d: int, track: bool = true) {
    param w: [d, d] = uniform(-0.5, 0.5)
    buffer avg: [d] = zeros
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        h = h0
        for t in range(T) {
            h = tanh(h @ w + x[t] + avg)
            if track {
                update avg = avg * 0.9 + mean(h, dim = 0) * 0.1
            }
        }
        return h
    }
}
"""

PLUS = {"straight": (PLUS_STRAIGHT, "PlusStraight", (3,)), "loop": (PLUS_LOOP, "PlusLoop", (3,))}


@pytest.mark.parametrize("key", PLUS)
def test_save_inputs_clones_a_buffer_it_updates(key):
    ours, plain = _modules(key, SAVES[1], True, PLUS)
    for steps in [2, 0, 1]:
        inputs = _inputs(steps)
        for got, want in zip(_grads(ours, inputs), _grads(plain, inputs), strict=True):
            torch.testing.assert_close(got, want)
        for got, want in zip(_second(ours, inputs), _second(plain, inputs), strict=True):
            torch.testing.assert_close(got, want)
        _same_buffers(ours, plain)
