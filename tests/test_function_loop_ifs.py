"""An `if` in the body of a loop whose count is known only when forward runs, comparing the loop's variable
with an int the loop does not change (`t == 0`, `t > 0`, `t < k`, `t == T - 1`): under `@function` the
loop is split where the `if` turns into loops in a row, each with the `if` decided (`autodiff/loop_split.py`).
Each spec here was refused before ("cannot derive through this `if` yet"); each now agrees with the plain
module (outputs, first and second derivatives) and passes gradcheck and gradgradcheck in float64, over loops
of 0, 1, 2 and 5 steps and at a bound k before, inside and after them."""

from __future__ import annotations

import functools

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file
from tests.support import compile_spec, saved_bytes

STEPS = [0, 1, 2, 5]
BOUNDS = [-1, 1, 7]  # k before the steps, inside them, after them

LAYER = """\
@function
layer Steps(d: int, k: int = 1, flip: bool = false) {
    param w: [d, d] = uniform(-1, 1)
    example(d = 3)
    forward(x: [T, B, d], y: [B, d]) -> [B, d] {
        h = y
        out = y
        BODY
    }
}
"""

SPECS = {
    # RNN-style: the first step reads h0 (y) on its own
    "t == 0": """for t in range(T) {
            if t == 0 {
                h = tanh(y @ w + x[t]) * 2.0
            } else {
                h = tanh(h @ w + x[t])
            }
        }
        return h""",
    "t > 0": """for t in range(T) {
            h = tanh(h @ w + x[t])
            if t > 0 {
                h = h * x[t]
            }
        }
        return h""",
    "t >= 1": """for t in range(T) {
            if t >= 1 {
                h = sin(h) + x[t]
            } else {
                h = h @ w
            }
        }
        return h""",
    "0 != t": """for t in range(T) {
            if 0 != t {
                h = tanh(h @ w + x[t])
            }
        }
        return h""",
    "t < k": """for t in range(T) {
            if t < k {
                h = tanh(h @ w + x[t])
            } else {
                h = sin(h) * x[t]
            }
        }
        return h""",
    "t <= k": """for t in range(T) {
            if t <= k {
                h = tanh(h @ w + x[t])
            } else {
                h = sin(h) * x[t]
            }
        }
        return h""",
    "k > t": """for t in range(T) {
            if k > t {
                h = tanh(h @ w + x[t])
            }
            h = h + x[t] * h
        }
        return h""",
    "t == k": """for t in range(T) {
            h = tanh(h @ w + x[t])
            if t == k {
                h = h * y
            }
        }
        return h""",
    # the last step emits
    "t == T - 1": """for t in range(T) {
            h = tanh(h @ w + x[t])
            if t == T - 1 {
                out = h @ w
            }
        }
        return out + h""",
    # against a local bound before the loop
    "t >= m": """m = k + 1
        for t in range(T) {
            if t >= m {
                h = tanh(h @ w + x[t])
            } else {
                h = h * x[t]
            }
        }
        return h""",
    # several `if`s, nested sides, `and`, `or`, `not`
    "several": """for t in range(T) {
            if t != k {
                h = tanh(h @ w + x[t])
            }
            if t == 0 or t >= k + 1 {
                if t == T - 1 {
                    h = h * 3.0
                } else {
                    h = h * x[t]
                }
            }
            if not (t > 0 and t < k) {
                h = sin(h)
            }
        }
        return h""",
    # a loop from 1 on
    "range(1, T)": """for t in range(1, T) {
            if t == k {
                h = h @ w
            } else {
                h = tanh(h + x[t])
            }
        }
        return h""",
    # an `if` on an argument around it (taken out of the loop, `loops.unswitched`)
    "under an argument": """for t in range(T) {
            if flip {
                if t == 0 {
                    h = tanh(y @ w + x[t])
                } else {
                    h = tanh(h @ w + x[t])
                }
            } else {
                h = sin(h) + x[t]
            }
        }
        return h""",
}


@functools.cache
def _namespaces(name: str) -> tuple[dict, dict]:
    """The module generated from spec `name` with `@function`, and without it."""
    text = LAYER.replace("BODY", SPECS[name])
    stem = "".join(c if c.isalnum() else "_" for c in name)
    return compile_spec(text, f"ifs_{stem}_f"), compile_spec(text.replace("@function\n", ""), f"ifs_{stem}_p")


def _pair(name: str, *args) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Layer `Steps` of spec `name` under `@function` and plain: float64, one state."""
    modules = []
    for namespace in _namespaces(name):
        torch.manual_seed(0)
        modules.append(namespace["Steps"](*args).double())
    modules[1].load_state_dict(modules[0].state_dict())
    return modules[0], modules[1]


def _agree(ours: torch.nn.Module, plain: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Same output, same gradients of x, y and the parameters, same second derivatives."""
    unused = {"allow_unused": True, "materialize_grads": True}  # x, in a loop of no steps
    got, want = ours(x, y), plain(x, y)
    torch.testing.assert_close(got, want)
    weights = torch.linspace(-1, 2, got.numel(), dtype=got.dtype).reshape(got.shape)
    grads = []
    for module, value in ((ours, got), (plain, want)):
        grads.append(
            torch.autograd.grad((value * weights).sum(), [x, y, *module.parameters()], create_graph=True, **unused)
        )
    for g, p in zip(*grads, strict=True):
        torch.testing.assert_close(g, p)
    seconds = []
    for module, first in zip((ours, plain), grads):
        square = sum((g * g).sum() for g in first)
        seconds.append(torch.autograd.grad(square, [x, y, *module.parameters()], **unused))
    for g, p in zip(*seconds, strict=True):
        torch.testing.assert_close(g, p)


@pytest.mark.parametrize("k", BOUNDS)
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_an_if_on_the_loop_variable_derives(name, steps, k):
    ours, plain = _pair(name, 3, k, True)
    torch.manual_seed(steps)
    x = torch.randn(steps, 2, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    _agree(ours, plain, x, y)
    assert torch.autograd.gradcheck(ours, (x, y))
    assert torch.autograd.gradgradcheck(ours, (x, y))


def test_the_loop_is_split_where_the_if_turns():
    """The Function runs two loops, over the first step and the rest, the bound clamped to the count."""
    source = _namespaces("t == 0")[0]["SOURCE"]
    forward = source[source.index("class StepsFunction") : source.index("def setup_context")]
    assert "t_at = min(1, T)" in forward
    assert "range(0, t_at)" in forward and "range(t_at, T)" in forward
    assert "if t" not in forward


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_backward_keeps_no_more_than_autograd(name, k):
    """A value carried from one loop to the next is kept once: the later loop's start is the last row of the
    earlier loop's buffer of its steps (saved on its own only after a loop of no steps)."""
    ours, plain = _pair(name, 3, k, True)
    torch.manual_seed(0)
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert saved_bytes(lambda: ours(x, y), ours) <= saved_bytes(lambda: plain(x, y), plain)


def _problems(text: str) -> list[str]:
    spec = parse_file("ifs.layer", text)
    check_program([spec])
    _, problems = plan_backwards([spec])
    return [f"{p.span.line}:{p.span.col}: {p.message} (hint: {p.hint})" for p in problems]


@pytest.mark.parametrize(
    ("body", "why", "hint"),
    [
        (  # (a nested `if` of tensor statements derives: tests/test_function_loop_step_numbers.py)
            "if t % 2 == 0 {\n                if t > k {\n                    hs.append(h)\n"
            "                }\n            }",
            ": an `if` inside a side of another `if` is not a choice per step yet",
            "test both conditions in one `if`",
        ),
        (  # (a side binding a number derives: tests/test_function_loop_step_numbers.py)
            "if t % 2 == 0 {\n                n = n + 1\n                hs.append(h)\n            }",
            ": a side holding a loop, an append or a `return` is not a choice per step yet",
            "compute both sides and choose with where(cond, a, b)",
        ),
        (
            "if t % 2 == 0 {\n                hs.append(h)\n            }",
            ": a side holding a loop, an append or a `return` is not a choice per step yet",
            "compute both sides and choose with where(cond, a, b)",
        ),
    ],
    ids=["a nested if appending", "a side binding a number and appending", "an append in a side"],
)
def test_another_test_of_the_loop_variable_is_refused_saying_why(body, why, hint):
    loop = f"n = 0\n        hs = []\n        for t in range(T) {{\n            {body}\n        }}\n        return h"
    problems = _problems(LAYER.replace("BODY", loop))
    assert len(problems) == 1
    line = 11
    assert problems[0].startswith(f"{line}:13: cannot derive through this `if` yet: it is in the body of a loop whose")
    assert why in problems[0]
    assert f"(hint: {hint}" in problems[0]
