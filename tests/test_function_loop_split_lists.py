"""A loop of a run-time count whose body tests its variable against a bound (`t == 0`, `t < k`, `t == T - 1`)
and appends to a list read by `stack` or `cat` after it: under `@function` the loop is split where the `if`
turns (`autodiff/loop_split.py`) and the list is collected over the loops in a row, one list whose items
each loop's backward cuts its slice of (`loops.Loop.before`). Each spec here was refused before ("the loop
appends to a list: splitting it ... would collect the list in several loops"); each now agrees with the
plain module (outputs, first and second derivatives) and passes gradcheck and gradgradcheck in float64, over
loops of 0, 1, 2 and 5 steps and at a bound k before, at the edges of, inside and after them, and keeps no
more for backward than autograd does."""

from __future__ import annotations

import functools

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file
from tests.support import compile_spec, function_and_plain, saved_bytes

STEPS = [0, 1, 2, 5]
BOUNDS = [-1, 0, 1, 4, 7]  # k before the steps, at the first, inside, at the last of 5, after them

LAYER = """\
@function
layer Steps(d: int, k: int = 1) {
    param w: [d, d] = uniform(-1, 1)
    param u: [d, d] = uniform(-1, 1)
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [...] {
        h = h0
        BODY
    }
}
"""

SPECS = {
    # the RNN of issue 15: the first step reads no state
    "t == 0, stack": """outs = []
        for t in range(T) {
            if t == 0 {
                h = tanh(x[t] @ w)
            } else {
                h = tanh(x[t] @ w + h @ u)
            }
            outs.append(h)
        }
        return stack(outs, dim = 0)""",
    "t == 0, cat": """outs = []
        for t in range(T) {
            if t == 0 {
                h = tanh(x[t] @ w)
            } else {
                h = tanh(x[t] @ w + h @ u)
            }
            outs.append(h)
        }
        return cat(outs, dim = 1)""",
    # items before the loop (`outs = [h0]`)
    "heads, stack": """outs = [h0, h0 * 2.0]
        for t in range(T) {
            if t == 0 {
                h = tanh(x[t] @ w)
            } else {
                h = tanh(x[t] @ w + h @ u)
            }
            outs.append(h)
        }
        return stack(outs, dim = 0)""",
    "heads, cat": """outs = [h0]
        for t in range(T) {
            if t < k {
                h = tanh(x[t] @ w + h @ u)
            } else {
                h = sin(h) * x[t]
            }
            outs.append(h * 3.0)
        }
        return cat(outs, dim = 0)""",
    # a bound that may leave the first loop without steps while the second has some
    "t < k, stack at -2": """outs = []
        for t in range(T) {
            if t < k {
                h = tanh(x[t] @ w + h @ u)
            } else {
                h = sin(h @ u) + x[t]
            }
            outs.append(h)
        }
        return transpose(stack(outs, dim = -2), 0, 1)""",
    # the last step on its own, and an item appended in one side only
    "t == T - 1": """outs = []
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            if t == T - 1 {
                outs.append(h @ w)
            } else {
                outs.append(h)
            }
        }
        return stack(outs, dim = 0)""",
    # three loops (`t == k` turns twice), a stack read before the cat
    "t == k, both": """outs = [h0]
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            if t == k {
                h = h * h0
            }
            outs.append(h)
        }
        return stack(outs, dim = 1) * 2.0 + reshape(cat(outs, dim = 1), [size_at(h0, 0), -1, size_at(h0, 1)])""",
    # loops written in a row appending to one list (no `if`), a stack of it read between them
    "two loops": """outs = [h0]
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            outs.append(h)
        }
        first = stack(outs, dim = 0)
        for s in range(2, T) {
            h = sin(h @ u) * x[s]
            outs.append(h * 2.0)
        }
        return cat([first, stack(outs, dim = 0)], dim = 0)""",
}


@functools.cache
def _namespaces(name: str) -> tuple[dict, dict]:
    """The module generated from spec `name` with `@function`, and without it."""
    text = LAYER.replace("BODY", SPECS[name])
    stem = "".join(c if c.isalnum() else "_" for c in name)
    return compile_spec(text, f"lists_{stem}_f"), compile_spec(text.replace("@function\n", ""), f"lists_{stem}_p")


def _pair(name: str, k: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Layer `Steps` of spec `name` under `@function` and plain: float64, one state."""
    modules = []
    for namespace in _namespaces(name):
        torch.manual_seed(0)
        modules.append(namespace["Steps"](3, k).double())
    modules[1].load_state_dict(modules[0].state_dict())
    return modules[0], modules[1]


def _inputs(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(steps)
    x = torch.randn(steps, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    return x, h0


def _agree(ours: torch.nn.Module, plain: torch.nn.Module, x: torch.Tensor, h0: torch.Tensor) -> None:
    """Same output, same gradients of x, h0 and the parameters, same second derivatives."""
    unused = {"allow_unused": True, "materialize_grads": True}  # u, in a loop of one step
    got, want = ours(x, h0), plain(x, h0)
    torch.testing.assert_close(got, want)
    weights = torch.linspace(-1, 2, got.numel(), dtype=got.dtype).reshape(got.shape)
    grads = []
    for module, value in ((ours, got), (plain, want)):
        wrt = [x, h0, *module.parameters()]
        grads.append(torch.autograd.grad((value * weights).sum(), wrt, create_graph=True, **unused))
    for g, p in zip(*grads, strict=True):
        torch.testing.assert_close(g, p)
    seconds = []
    for module, first in zip((ours, plain), grads):
        square = sum((g * g).sum() for g in first)
        seconds.append(torch.autograd.grad(square, [x, h0, *module.parameters()], **unused))
    for g, p in zip(*seconds, strict=True):
        torch.testing.assert_close(g, p)


def _raises_alike(ours: torch.nn.Module, plain: torch.nn.Module, x: torch.Tensor, h0: torch.Tensor) -> bool:
    """Whether the plain module raises on these inputs (a stack of no items); then ours raises too."""
    try:
        plain(x, h0)
    except (RuntimeError, ValueError):  # torch.stack's, torch.cat's
        with pytest.raises((RuntimeError, ValueError)):
            ours(x, h0)
        return True
    return False


@pytest.mark.parametrize("k", BOUNDS)
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_list_collected_over_the_split_loops_derives(name, steps, k):
    ours, plain = _pair(name, k)
    x, h0 = _inputs(steps)
    if _raises_alike(ours, plain, x, h0):
        return
    _agree(ours, plain, x, h0)
    assert torch.autograd.gradcheck(ours, (x, h0))
    assert torch.autograd.gradgradcheck(ours, (x, h0))


def test_the_pieces_append_to_one_list():
    """The Function runs two loops appending to one list, stacked once after the second."""
    source = _namespaces("t == 0, stack")[0]["SOURCE"]
    forward = source[source.index("class StepsFunction") : source.index("def setup_context")]
    assert "range(0, t_at)" in forward and "range(t_at, T)" in forward
    assert forward.count("outs = []") == 1 and forward.count("outs.append(") == 2
    assert forward.count("torch.stack(outs") == 1


@pytest.mark.parametrize("name", sorted(SPECS))
def test_backward_keeps_no_more_than_autograd(name):
    ours, plain = _pair(name, 2)
    x, h0 = _inputs(6)
    assert saved_bytes(lambda: ours(x, h0), ours) <= saved_bytes(lambda: plain(x, h0), plain)


NEST = """\
@function
layer Stacked(d: int) {
    param w: [d, d] = uniform(-1, 1)
    param u: [d, d] = uniform(-1, 1)
    example(d = 3)
    forward(input: [T, B, d], h0: [L, B, d]) -> [T, B, d] {
        x = input
        for l in range(L) {
            h = h0[l]
            OUTER
            outs = []
            for t in range(T) {
                if t == 0 {
                    h = tanh(x[t] @ w + h)
                } else {
                    h = tanh(x[t] @ w + h @ u)
                }
                outs.append(h)
            }
            x = stack(outs, dim = 0)
        }
        return x
    }
}
"""
# `if`s on the outer loop's variable, in the body of the loop holding the loop: it is split too
OUTER = {
    "l == 0": "if l == 0 {\n                h = h * 2.0\n            }",
    "l >= L - 1": "if l >= L - 1 {\n                h = sin(h)\n            } else {\n                h = h * 0.5\n            }",
}


@pytest.mark.parametrize("layers", [0, 1, 2, 3])
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("outer", ["", *OUTER])
def test_a_nest_and_its_inner_loop_are_split(outer, layers, steps):
    """A stacked RNN whose inner loop tests its variable (split in the nest's body), and whose outer loop
    tests its own (split into nests in a row, each from step 0: `codegen.function_nest` keeps what a step
    reads at its variable's index)."""
    ours, plain = function_and_plain(NEST.replace("OUTER", OUTER.get(outer, "")), "Stacked", 3)
    x, _ = _inputs(steps)
    h0 = torch.randn(layers, 2, 3, dtype=torch.float64, requires_grad=True)
    if _raises_alike(ours, plain, x, h0):
        return
    _agree(ours, plain, x, h0)
    if layers and steps:
        assert torch.autograd.gradcheck(ours, (x, h0))
        assert torch.autograd.gradgradcheck(ours, (x, h0))


def test_another_test_of_the_outer_variable_of_a_nest_is_refused_saying_why():
    spec = parse_file(
        "nest.layer", NEST.replace("OUTER", "if l % 2 == 0 {\n                h = h * 2.0\n            }")
    )
    check_program([spec])
    _, problems = plan_backwards([spec])
    assert [(p.span.line, p.span.col) for p in problems] == [(10, 13)]
    assert "in the body of a loop holding a loop" in problems[0].message
    assert "tests the loop's variable `l` other than by comparing it" in problems[0].message
    assert "compare `l` with an int the loop does not change" in (problems[0].hint or "")


def test_pieces_appending_several_items_a_step_derive():
    """Refused before (`loops.Planner.continue_list`); compared with the plain module in
    tests/test_function_loop_lists2.py."""
    body = """outs = []
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            if t == 0 {
                outs.append(h)
            } else {
                outs.append(h)
                outs.append(h * 3.0)
            }
        }
        return stack(outs, dim = 0)"""
    spec = parse_file("several.layer", LAYER.replace("BODY", body))
    check_program([spec])
    _, problems = plan_backwards([spec])
    assert problems == []
