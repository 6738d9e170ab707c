"""`@function` forwards with a loop whose count is known only when forward runs (issue 15):

- a buffer updated in the loop's body (a running mean of what each step computes, under `if training`
  too, a count, a scale the next step reads by value): carried through the loop as a value of its own, not
  differentiable, and returned for the module to write. After every call the buffers are bit for bit the
  plain module's, in train and eval; outputs, gradients and second derivatives agree with it at 0, 1, 2
  and 5 steps, gradcheck and gradgradcheck pass in float64, with `save = "inputs"` too, and no more is
  saved than autograd saves;
- a buffer updated before a loop and read after it reads the new value (as the plain module does);
- an RNN-like loop of no steps saves nothing (autograd saves nothing), and as before at one step or more;
- a carried value whose static shape is unknown (an operation whose shape rule gives none) and changes
  from step to step raises a located ValueError in the Function's forward, not torch's error in backward.
"""

from __future__ import annotations

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .support import compile_spec, function_and_plain, saved_bytes

STEPS = [0, 1, 2, 5]

# a running mean under `if training`, a scale each step reads by value (autograd keeps a clone of it per
# step) and updates, a count, and the scale updated once before the loop too
RUNNING = """
@function
layer Running(d: int, momentum: float = 0.1) {
    param w: [d, d] = uniform(-0.5, 0.5)
    buffer avg: [d] = zeros
    buffer scale: [d] = ones
    buffer count: [] = zeros
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        update scale = scale * 0.5 + mean(h0 * h0, dim = 0)
        h = h0
        for t in range(T) {
            h = tanh(h @ w + x[t] + avg) * scale
            if training {
                update avg = avg * (1.0 - momentum) + mean(h, dim = 0) * momentum
            }
            update scale = scale * 0.9 + mean(h * h, dim = 0) * 0.1
            update count = count + 1.0
        }
        return h * avg + scale * count
    }
}
"""

# for gradcheck: what the outputs read of the buffers does not depend on the inputs of the same call (the
# plain module's numerical Jacobian would see the updates as RUNNING's do, the analytical one not): a
# running mean read in eval only, a count each step reads and updates
STATISTICS = """
@function
layer Statistics(d: int, momentum: float = 0.1) {
    param w: [d, d] = uniform(-0.5, 0.5)
    buffer avg: [d] = zeros
    buffer count: [] = zeros
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        h = h0
        for t in range(T) {
            h = tanh(h @ w + x[t]) * (1.0 + count * 0.1)
            if training {
                update avg = avg * (1.0 - momentum) + mean(h, dim = 0) * momentum
            } else {
                h = h - avg
            }
            update count = count + 1.0
        }
        return h
    }
}
"""

# a buffer updated before the loop, read after it: its new value
BEFORE = """
@function
layer Before(d: int) {
    param w: [d, d] = uniform(-0.5, 0.5)
    buffer avg: [d] = zeros
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        update avg = avg * 0.5 + mean(h0, dim = 0)
        h = h0
        for t in range(T) {
            h = tanh(h @ w + x[t])
        }
        return h * avg
    }
}
"""

RNN = """
@function
layer Rnn(d: int) {
    param w: [d, d] = uniform(-0.5, 0.5)
    param b: [d] = zeros
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        h = h0
        for t in range(T) {
            h = tanh(h @ w + x[t] + b)
        }
        return h
    }
}
"""

# h gains a row at every step, through a slice whose static shape is unknown (reshape to [-1, d], then :k)
GROW = """
@function
layer Grow(d: int, k: int = 1) {
    param w: [d, d] = uniform(-0.5, 0.5)
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [1, d] {
        h = h0
        for t in range(T) {
            h = tanh(cat([h, reshape(h0, [-1, d])[:k]], dim = 0) @ w)
        }
        return sum(h, dim = 0, keepdim = true)
    }
}
"""

SAVES = ["@function", '@function(save = "inputs")']


def _inputs(steps: int) -> list[torch.Tensor]:
    torch.manual_seed(steps)
    x = torch.randn(steps, 2, 3, dtype=torch.float64, requires_grad=True)
    return [x, torch.randn(2, 3, dtype=torch.float64, requires_grad=True)]


def _grads(module: torch.nn.Module, inputs: list[torch.Tensor], create_graph: bool = False) -> list[torch.Tensor]:
    """The output (weighted) and the gradients of the inputs and parameters: zeros where one is not read
    (the loop's own at no steps)."""
    out = module(*inputs)
    weights = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).reshape(out.shape)
    wrt = [*inputs, *module.parameters()]
    grads = torch.autograd.grad((out * weights).sum(), wrt, allow_unused=True, create_graph=create_graph)
    return [out] + [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)]


def _second(module: torch.nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Second derivatives: the gradients of a weighted sum of the first ones."""
    first = _grads(module, inputs, create_graph=True)[1:]
    total = sum(((g * g).sum() for g in first if g.requires_grad), torch.zeros((), dtype=torch.float64))
    wrt = [*inputs, *module.parameters()]
    if not total.requires_grad:
        return []
    grads = torch.autograd.grad(total, wrt, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)]


def _same_buffers(ours: torch.nn.Module, plain: torch.nn.Module) -> None:
    for (name, got), (_, want) in zip(ours.named_buffers(), plain.named_buffers(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
    assert not any(b.requires_grad for b in ours.buffers())


def _restoring(module: torch.nn.Module):
    """`module` called from the buffers it holds now, at every call (gradcheck calls it many times)."""
    before = {k: v.clone() for k, v in module.named_buffers()}

    def run(*tensors: torch.Tensor) -> torch.Tensor:  # new tensors: what an earlier call saved stays as it was
        for name, b in before.items():
            setattr(module, name, b.clone())
        return module(*tensors)

    return run


def _problems(text: str) -> list[str]:
    spec = parse_file("loop_buffers.layer", text)
    check_program([spec])
    return [p.message for p in plan_backwards([spec])[1]]


@pytest.mark.parametrize("text", [RUNNING, BEFORE], ids=["in the body", "before the loop"])
def test_buffer_updates_of_a_forward_with_a_loop_are_planned(text):
    assert _problems(text) == []


@pytest.mark.parametrize("save", SAVES, ids=["saved", "inputs"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_buffers_updated_in_a_loop_body_agree_with_the_plain_module(training, save):
    ours, plain = function_and_plain(RUNNING.replace("@function", save), "Running", 3)
    ours.train(training)
    plain.train(training)
    calls = [*STEPS, 3, 0, 2]
    for steps in calls:  # each call's buffers are the plain module's after the call before
        inputs = _inputs(steps)
        for got, want in zip(_grads(ours, inputs), _grads(plain, inputs), strict=True):
            torch.testing.assert_close(got, want)
        _same_buffers(ours, plain)
    # the buffers change as the steps run (not left as they were)
    assert ours.count.item() == sum(calls)
    assert (ours.avg != 0).all() == training


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_buffers_updated_in_a_loop_body_second_derivatives(steps, training):
    ours, plain = function_and_plain(RUNNING, "Running", 3)
    ours.train(training)
    plain.train(training)
    inputs = _inputs(steps)
    for got, want in zip(_second(ours, inputs), _second(plain, inputs)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("save", SAVES, ids=["saved", "inputs"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_buffers_updated_in_a_loop_body_gradcheck(steps, save, training):
    ours, plain = function_and_plain(STATISTICS.replace("@function", save), "Statistics", 3)
    with torch.no_grad():
        ours.avg.uniform_(-1, 1)  # as after training
    plain.load_state_dict(ours.state_dict())
    ours.train(training)
    plain.train(training)
    for calls in range(2):
        inputs = _inputs(steps + calls)
        for got, want in zip(_grads(ours, inputs), _grads(plain, inputs), strict=True):
            torch.testing.assert_close(got, want)
        _same_buffers(ours, plain)
    run = _restoring(ours)
    inputs = _inputs(steps)
    assert torch.autograd.gradcheck(run, inputs)
    assert torch.autograd.gradgradcheck(run, inputs)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_buffers_updated_in_a_loop_body_save_no_more_than_autograd(steps, training):
    ours, plain = function_and_plain(RUNNING, "Running", 3)
    ours.train(training)
    plain.train(training)
    inputs = _inputs(steps)
    assert saved_bytes(lambda: ours(*inputs), ours) <= saved_bytes(lambda: plain(*inputs), plain)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_buffers_updated_in_a_loop_body_save_inputs_saves_no_more_than_autograd(steps):
    ours, plain = function_and_plain(RUNNING.replace("@function", SAVES[1]), "Running", 3)
    inputs = _inputs(steps)
    assert saved_bytes(lambda: ours(*inputs), ours) <= saved_bytes(lambda: plain(*inputs), plain)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_a_buffer_updated_before_a_loop_is_read_after_it_as_updated(training):
    ours, plain = function_and_plain(BEFORE, "Before", 3)
    ours.train(training)
    plain.train(training)
    for steps in [2, 0, 1, 5]:
        inputs = _inputs(steps)
        for got, want in zip(_grads(ours, inputs), _grads(plain, inputs), strict=True):
            torch.testing.assert_close(got, want)
        _same_buffers(ours, plain)


@pytest.mark.parametrize("steps", STEPS)
def test_a_loop_of_no_steps_saves_nothing(steps):
    ours, plain = function_and_plain(RNN, "Rnn", 3)
    inputs = _inputs(steps)
    for got, want in zip(_grads(ours, inputs), _grads(plain, inputs), strict=True):
        torch.testing.assert_close(got, want)
    mine, autograd = saved_bytes(lambda: ours(*inputs), ours), saved_bytes(lambda: plain(*inputs), plain)
    assert mine <= autograd
    if steps == 0:
        assert mine == autograd == 0
    else:  # as before: h0 and each step's h (w is the module's own)
        assert mine == 8 * 6 * (1 + steps)


def test_a_loop_of_no_steps_saves_nothing_under_save_inputs():
    ours, plain = function_and_plain(RNN.replace("@function", SAVES[1]), "Rnn", 3)
    inputs = _inputs(0)
    assert saved_bytes(lambda: ours(*inputs), ours) == saved_bytes(lambda: plain(*inputs), plain) == 0


@pytest.mark.parametrize("steps", [1, 2])
def test_a_loop_of_no_steps_saves_nothing_gradcheck(steps):
    ours, _ = function_and_plain(RNN, "Rnn", 3)
    assert torch.autograd.gradcheck(ours, _inputs(steps))
    assert torch.autograd.gradgradcheck(ours, _inputs(steps))


@pytest.mark.parametrize("steps", [2, 3])
def test_a_carried_value_of_unknown_shape_that_changes_raises_a_located_error(steps):
    ours, plain = function_and_plain(GROW, "Grow", 3)
    inputs = _inputs(steps)
    plain(*inputs).sum().backward()  # the plain module grows h
    with pytest.raises(ValueError) as caught:
        ours(*inputs)
    message = str(caught.value)
    assert message.startswith("Grow: under @function, each step of the loop at grow_0.layer:8 keeps the shape of 'h'")
    assert "after the first (a derived backward keeps its steps at one shape)" in message
    assert "grow_0.layer:9 made it (4, 3) from (3, 3) at step 1" in message


def test_a_carried_value_of_unknown_shape_is_checked_only_there():
    grow = compile_spec(GROW, "grow")["SOURCE"]
    assert grow.count("keeps the shape of 'h'") == 1
    assert "keeps the shape of" not in compile_spec(RNN, "rnn")["SOURCE"]  # its static shape is known
    ours, plain = function_and_plain(GROW, "Grow", 3)
    inputs = _inputs(0)
    torch.testing.assert_close(ours(*inputs), plain(*inputs))  # no step: nothing to check
