"""What round 22's attacker's trial found (a buffer updated between loops and read by the later loop, a chunk
into a run-time count of parts, a split loop's list joined by `cat` where a step slices by a varying size, a
nest's carried value whose start is smaller than its steps and which no step reads): each test fails on the
code before its fix, or is a strict xfail naming a problem still open."""

from __future__ import annotations

import functools
import re

import pytest
import torch

from tests.support import assert_same_function, compile_spec, function_and_plain

DECORATORS = {"saved": "@function", "replayed": '@function(save = "inputs")'}


def _agree(ours: torch.nn.Module, plain: torch.nn.Module, *inputs: torch.Tensor) -> None:
    """Same output and gradients of the inputs and parameters (zeros for one the output does not read)."""
    got, want = ours(*inputs), plain(*inputs)
    torch.testing.assert_close(got, want)
    weights = torch.linspace(-1, 2, got.numel(), dtype=got.dtype).reshape(got.shape)
    for g, w in zip(
        torch.autograd.grad(
            (got * weights).sum(), [*inputs, *ours.parameters()], allow_unused=True, materialize_grads=True
        ),
        torch.autograd.grad(
            (want * weights).sum(), [*inputs, *plain.parameters()], allow_unused=True, materialize_grads=True
        ),
        strict=True,
    ):
        torch.testing.assert_close(g, w)


# ---------------------------------------------------------------- fixed here

# `update avg = ...` between two loops, the second loop reading `avg`: the plain module reads the new value
# (the buffer was written), the Function's second loop read the old one (each segment of a forward with loops
# was linearized without the earlier segments' updates): a silently different output and gradients. A later
# segment now reads an earlier one's new value (autodiff/loops.py: LoopPlanner.buffer_updates, passed to each
# segment's Linearizer as `earlier`), of the value's shape (autodiff/shapes.step_shape).
BETWEEN = """\
DECORATOR
layer Between(d: int, momentum: float = 0.1) {
    param w: [d, d] = uniform(-1, 1)
    buffer avg: [d] = uniform(-1, 1)
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        h = h0
        for t in range(T) {
            h = tanh(h @ w + x[t])
        }
        if training {
            update avg = (1.0 - momentum) * avg + momentum * mean(h, dim = 0)
        }
        for t in range(T) {
            h = sin(h @ w) + x[t] * avg
        }
        return h * avg
    }
}
"""


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("policy", sorted(DECORATORS))
def test_a_buffer_updated_between_loops_is_read_new_by_the_later_loop(policy, steps):
    ours, plain = function_and_plain(BETWEEN.replace("DECORATOR", DECORATORS[policy]), "Between", 3)
    for training in (True, False, True):  # three calls: the buffers go on agreeing
        ours.train(training), plain.train(training)
        x = torch.randn(steps, 2, 3, dtype=torch.float64, requires_grad=True)
        h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
        assert_same_function(ours, plain, x, h0)
        torch.testing.assert_close(ours.avg, plain.avg)
    ours.eval()
    assert torch.autograd.gradgradcheck(ours, (x, h0))


# `a, b = chunk(v, n, dim = 1)` of an argument n: at n = 0 torch.chunk raises a RuntimeError ("chunk expects
# `chunks` to be greater than 0"); the Function's parts check divided by n first (a bare ZeroDivisionError
# from the generated code). The count is now checked first, raising torch's RuntimeError with the layer and
# the call's spec line (codegen/function_checks._chunk_count_lines).
CHUNKED = """\
@function
layer Chunked(d: int, n: int = 2) {
    param w: [d, d] = uniform(-1, 1)
    example(d = 4)
    forward(y: [B, d]) -> [B] {
        a, b = chunk(tanh(y @ w), n, dim = 1)
        return sum(a, dim = 1) + sum(b * b, dim = 1)
    }
}
"""


@pytest.mark.parametrize("n", [0, -1, 1, 2, 3])
def test_a_chunk_into_a_run_time_count_raises_as_torch_does(n):
    ours, plain = function_and_plain(CHUNKED, "Chunked", 4, n)
    y = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    if len(torch.chunk(torch.empty(4), n) if n > 0 else []) == 2:
        assert_same_function(ours, plain, y)
        return
    with pytest.raises((RuntimeError, ValueError)) as plain_error:
        plain(y)
    with pytest.raises(plain_error.type) as ours_error:
        ours(y)
    if n <= 0:
        assert "chunk expects `chunks` to be greater than 0" in str(ours_error.value)
        assert str(ours_error.value).startswith("Chunked: chunk() at chunked_0.layer:6")


CHUNKED_IN_A_LOOP = """\
@function
layer ChunkedLoop(d: int, n: int = 2) {
    param w: [d, d] = uniform(-1, 1)
    example(d = 4)
    forward(x: [T, B, d], h0: [B, d]) -> [T, B, d] {
        h = h0
        outs = []
        for t in range(T) {
            if t == 0 {
                a, b = chunk(h, n, dim = 1)
                h = tanh(cat([b, a], dim = 1) @ w + x[t])
            } else {
                h = tanh(h @ w + x[t])
            }
            outs.append(h)
        }
        return stack(outs, dim = 0)
    }
}
"""


@pytest.mark.parametrize("n", [0, 2])
def test_a_chunk_into_a_run_time_count_in_a_loop_raises_as_torch_does(n):
    """In a loop's body the parts check comes after the step's slices, which divide by the count: the count
    is checked before them (codegen/function_checks.segment_count_lines)."""
    ours, plain = function_and_plain(CHUNKED_IN_A_LOOP, "ChunkedLoop", 4, n)
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    if n > 0:
        _agree(ours, plain, x, h0)
        return
    with pytest.raises(RuntimeError, match="chunk expects `chunks` to be greater than 0, got: 0"):
        plain(x, h0)
    with pytest.raises(RuntimeError, match=r"^ChunkedLoop: chunk\(\) at chunkedloop_0\.layer:10: chunk expects"):
        ours(x, h0)


# A loop split at `if t < k` appending to a list joined by `cat`, one side slicing by a size that varies from
# step to step (`sum(x[:t + 1], dim = 0)`, [B, d] at every step): refused ("the size of what a step appends to
# it is known only when forward runs"), while `stack` of it derived. The carried value's shape is now found
# with each slice's size the difference of its bounds (autodiff/loop_ints.steady_carried_shapes, steady_shape).
SPLIT_CAT = """\
@function
layer SplitCat(d: int, k: int = 1) {
    param w: [d, d] = uniform(-1, 1)
    param u: [d, d] = uniform(-1, 1)
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [...] {
        h = h0
        outs = []
        for t in range(T) {
            if t < k {
                h = tanh(h @ w + sum(x[:t + 1], dim = 0))
            } else {
                h = sin(h @ u) + x[t]
            }
            outs.append(h)
        }
        return cat(outs, dim = 0)
    }
}
"""


@pytest.mark.parametrize("steps", [1, 2, 5])
@pytest.mark.parametrize("k", [-1, 0, 2, 7])
def test_a_split_loops_list_joined_by_cat_derives_through_a_varying_slice(k, steps):
    ours, plain = function_and_plain(SPLIT_CAT, "SplitCat", 3, k)
    x = torch.randn(steps, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    _agree(ours, plain, x, h0)
    assert torch.autograd.gradcheck(ours, (x, h0))
    assert torch.autograd.gradgradcheck(ours, (x, h0))


# A loop holding a loop, the inner loop's carried `h` starting as `z[l] * 1.0` ([d]) and its steps making it
# [B, d] without reading it (`if t == 0 { h = tanh(inp[t] @ w) }`, or no read at all): backward passed the
# steps' zeros ([B, d]) to the start, and select_backward into z's gradient raised "output with shape [3]
# doesn't match the broadcast shape [2, 3]". The gradient is now summed to the start's shape where no step
# reads the carried value (codegen/loop_backward.LoopBackward.to_start).
NEST = """\
@function
layer Nest(d: int) {
    param w: [d, d] = uniform(-1, 1)
    param u: [d, d] = uniform(-1, 1)
    example(d = 3)
    forward(x: [T, B, d], z: [L, d]) -> [...] {
        inp = x
        for l in range(size_at(z, 0)) {
            h = z[l] * 1.0
            outs = []
            for t in range(T) {
                BODY
                outs.append(h)
            }
            inp = stack(outs, dim = 0)
        }
        return inp
    }
}
"""

NEST_BODIES = {
    "first step reads no state": "if t == 0 { h = tanh(inp[t] @ w) } else { h = tanh(inp[t] @ u + h) }",
    "no step reads it": "h = tanh(inp[t] @ u)",
}


@pytest.mark.parametrize("layers", [0, 1, 2])
@pytest.mark.parametrize("body", sorted(NEST_BODIES))
def test_a_nests_carried_value_starting_smaller_and_unread_derives(body, layers):
    ours, plain = function_and_plain(NEST.replace("BODY", NEST_BODIES[body]), "Nest", 3)
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    z = torch.randn(layers, 3, dtype=torch.float64, requires_grad=True)
    _agree(ours, plain, x, z)
    assert torch.autograd.gradcheck(ours, (x, z))
    assert torch.autograd.gradgradcheck(ours, (x, z))


def test_the_nests_start_is_kept_only_for_its_shape():
    """What the fix reads of the start is its shape: a zero-stride stand-in, no bytes per layer."""
    source = compile_spec(NEST.replace("BODY", NEST_BODIES["no step reads it"]), "nest_start")["SOURCE"]
    assert "h_layers.append(h.new_zeros(()).expand(h.shape))  # only its shape is read" in source


# A loop on one side of `if flag` only and an optional input read outside the `if`s testing it (`h * g`
# after the `if`): each derives alone, together they were refused ("a loop ... on one side of this `if`
# only (not derived yet)"): the side keeping no loop, reading `g`, was not made a loop Function's. It now
# branches on whether `g` was given as the loop's side does (autodiff/plan._side_as_loop_plan).
ONE_SIDE = """\
DECORATOR
layer OneSide(d: int, flag: bool = true) {
    param w: [d, d] = uniform(-1, 1)
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d], g: [B, d]? = none) -> [B, d] {
        h = h0
        if flag {
            outs = []
            for t in range(T) {
                if t == 0 {
                    h = tanh(x[t] @ w) + g
                } else {
                    h = tanh(h @ w + x[t]) - g
                }
                outs.append(h)
            }
            h = sum(stack(outs, dim = 0), dim = 0)
        }
        return h / 2.0 + g
    }
}
"""


@pytest.mark.parametrize("given", [True, False])
@pytest.mark.parametrize("flag", [True, False])
@pytest.mark.parametrize("policy", sorted(DECORATORS))
def test_a_loop_on_one_side_and_an_optional_input_read_outside_derive_together(policy, flag, given):
    ours, plain = function_and_plain(ONE_SIDE.replace("DECORATOR", DECORATORS[policy]), "OneSide", 3, flag)
    inputs = [torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in [(3, 2, 3), (2, 3), (2, 3)]]
    inputs = inputs if given else inputs[:2]
    _agree(ours, plain, *inputs)
    assert torch.autograd.gradcheck(ours, tuple(inputs))
    assert torch.autograd.gradgradcheck(ours, tuple(inputs))


# `cat(outs, dim = 0)` of a list a split loop appends to, with no items before it, after a loop of no steps:
# the plain module raises torch.cat's ValueError ("expected a non-empty list of Tensors"); the Function, which
# joins the steps' items by a stack, raised stack's RuntimeError, naming an operation the spec does not call.
# It now raises cat's (codegen/function_loops.LoopFunction.joined).
def test_a_cat_of_no_items_raises_as_the_plain_modules():
    text = SPLIT_CAT.replace("sum(x[:t + 1], dim = 0)", "x[t]")
    ours, plain = function_and_plain(text, "SplitCat", 3, 1)
    x, h0 = torch.randn(0, 2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="expected a non-empty list of Tensors") as plain_error:
        plain(x, h0)
    with pytest.raises(ValueError) as ours_error:
        ours(x, h0)
    assert str(ours_error.value) == str(plain_error.value)


# A loop holding a loop split at two bounds of its variable (`if l == 0` in the inner loop, `if l < L - 1`
# after it: loops in a row): a later piece's `l`, bound by `l = l_step + l_at`, was named apart and started as
# the value before (`l1 = l`), which read the earlier piece's Python variable: unbound after a first piece of
# no steps (L = 0: forward raised UnboundLocalError where the plain module returns x) and always unbound in
# backward's prelude, which replayed the later pieces' numbers in dead `for t in range(ctx.T): pass` loops. A
# number each step binds before reading, and that nothing after the loop reads, now takes no start
# (autodiff/loop_ints.fresh_each_step), and the prelude replays nothing.
THREE_PIECES = """\
@function
layer Pieces(d: int, p: float = 0.0) {
    param w: [d, d] = uniform(-1, 1)
    param u: [d, d] = uniform(-1, 1)
    example(d = 3)
    forward(x: [T, B, d], z: [L, d]) -> [...] {
        inp = x
        for l in range(size_at(z, 0)) {
            h = z[l] * 1.0
            outs = []
            for t in range(T) {
                if l == 0 {
                    h = tanh(inp[t] @ w + h @ u)
                } else {
                    h = tanh(inp[t] @ u + h @ w + z[l])
                }
                outs.append(h)
            }
            inp = stack(outs, dim = 0)
            if l < size_at(z, 0) - 1 {
                inp = dropout(inp, p)
            }
        }
        return inp
    }
}
"""


@functools.cache
def _pieces(policy: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    return function_and_plain(THREE_PIECES.replace("@function", DECORATORS[policy]), "Pieces", 3, 0.0)


def _agree_twice(ours: torch.nn.Module, plain: torch.nn.Module, *inputs: torch.Tensor) -> None:
    """Same output, gradients of the inputs and parameters, and second derivatives (of the squared gradients)."""
    unused = {"allow_unused": True, "materialize_grads": True}
    got, want = ours(*inputs), plain(*inputs)
    torch.testing.assert_close(got, want)
    weights = torch.linspace(-1, 2, got.numel(), dtype=got.dtype).reshape(got.shape)
    firsts, seconds = [], []
    for module, value in ((ours, got), (plain, want)):
        wrt = [*inputs, *module.parameters()]
        first = torch.autograd.grad((value * weights).sum(), wrt, create_graph=True, **unused)
        square = sum((g * g).sum() for g in first)
        firsts.append(first)
        seconds.append(
            torch.autograd.grad(square, wrt, **unused) if square.requires_grad else [torch.zeros_like(t) for t in wrt]
        )
    for g, w in zip(*firsts, strict=True):
        torch.testing.assert_close(g, w)
    for g, w in zip(*seconds, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("steps", [0, 1, 3])
@pytest.mark.parametrize("layers", [0, 1, 2, 3])
@pytest.mark.parametrize("policy", sorted(DECORATORS))
def test_a_nest_split_into_loops_in_a_row_derives(policy, layers, steps):
    ours, plain = _pieces(policy)
    torch.manual_seed(layers * 10 + steps)
    x = torch.randn(steps, 2, 3, dtype=torch.float64, requires_grad=True)
    z = torch.randn(layers, 3, dtype=torch.float64, requires_grad=True)
    if steps == 0 and layers > 0:  # an inner loop of no steps: stack() of no items raises, alike
        with pytest.raises(RuntimeError) as plain_error:
            plain(x, z)
        with pytest.raises(type(plain_error.value)):
            ours(x, z)
        return
    _agree_twice(ours, plain, x, z)
    assert torch.autograd.gradcheck(ours, (x, z))
    assert torch.autograd.gradgradcheck(ours, (x, z))


@pytest.mark.parametrize("policy", sorted(DECORATORS))
def test_a_nest_split_into_loops_in_a_row_replays_no_dead_loop(policy):
    """Backward's prelude ran the later pieces' numbers again, binding nothing it reads (`for ...: pass`)."""
    source = compile_spec(THREE_PIECES.replace("@function", DECORATORS[policy]), f"pieces_{policy}")["SOURCE"]
    assert "l_at_2 = " in source  # (split where its `if`s turn, one piece counted from l_at_2)
    assert not re.search(r"^( *)for [^\n]*:\n\1    pass$", source, re.M)
    assert not re.search(r"^ *l\d* = l\d*$", source, re.M)  # no start read from an earlier piece
