"""Ints a loop kept as one (its count known only when forward runs) carries from step to step, or leaves bound
for after it: under `@function` the loop Function names them apart and its backward runs their numbers again,
recording each step's (`autodiff/loop_ints.py`). Each spec here was refused before ("cannot derive through the
number 'n' yet"); each now agrees with the plain module: outputs, first and second derivatives, and
gradcheck in float64, over loops of 0, 1, 2 and 5 steps."""

from __future__ import annotations

import re

import pytest
import torch

from layerdsl.diagnostics import SpecError
from tests.support import compile_spec, function_and_plain

STEPS = [0, 1, 2, 5]

LAYER = """\
@function
layer Ints(d: int, flip: bool = false) {
    param w: [d, d] = uniform(-1, 1)
    example(d = 4)
    forward(x: [T, B, d], y: [B, d]) -> [B, d] {
        h = y
        BODY
    }
}
"""

SPECS = {
    # a carried counter in a slice's bounds
    "counter in a slice": """n = 0
        for t in range(T) {
            n = n + 1
            k = n % d
            h = tanh(h @ w) * y[:, k:k + 1] + x[t]
        }
        return h""",
    # a counter read after the loop (the value before it when the loop takes no step)
    "counter after the loop": """n = 1
        for t in range(T) {
            n = t
            h = tanh(h @ w + x[t])
        }
        m = (n + 2) % d
        h = h * y[:, m:m + 1]
        m = (m + 1) % d
        return h * y[:, n % d:n % d + 1] + y[:, m:m + 1]""",
    # two ints swapped at each step (Fibonacci modulo d)
    "two ints swapping": """a = 0
        b = 1
        for t in range(T) {
            c = a
            a = b
            b = (c + b) % d
            h = tanh(h @ w) * y[:, a:a + 1] + x[t] * y[:, b:b + 1]
        }
        return h * y[:, b:b + 1]""",
    # an int carried through an `if` on an argument in the body (taken out of the loop, a loop per side)
    "if in the body": """n = 0
        for t in range(T) {
            if flip {
                n = (n + 1) % d
            } else {
                n = (n + 3) % d
            }
            h = tanh(h @ w) * y[:, n:n + 1] + x[t]
        }
        return h * y[:, n:n + 1]""",
    # a step reads the carried int before it rebinds it (the Function computes a step's ints first)
    "read before the step rebinds it": """n = 1
        for t in range(T) {
            h = tanh(h @ w) * y[:, n:n + 1] + x[t]
            n = (n + 1) % d
            h = h * y[:, n:n + 1]
            n = (n + 2) % d
        }
        return h * y[:, n:n + 1]""",
    # a kept loop inside a loop of a written count (unrolled): the int carried through both
    "nested loops": """n = 0
        for k in range(2) {
            for t in range(T) {
                n = (n + k + 1) % d
                h = tanh(h @ w) * y[:, n:n + 1] + x[t]
            }
            h = h * y[:, n:n + 1]
        }
        return h""",
    # two loops one after the other, the second starting from what the first leaves
    "two loops": """n = 0
        for t in range(T) {
            n = n + 1
            h = tanh(h @ w) + x[t] * y[:, n % d:n % d + 1]
        }
        for s in range(T) {
            n = n + 2
            h = tanh(h @ w) * y[:, n % d:n % d + 1]
        }
        return h * n""",
}


def _pair(body: str, *args, decorator: str = "@function") -> tuple[torch.nn.Module, torch.nn.Module]:
    """The layer with `body` under `decorator` and plain, float64, one state."""
    text = LAYER.replace("BODY", body)
    modules = []
    for k, spec in enumerate([text.replace("@function", decorator), text.replace("@function\n", "")]):
        torch.manual_seed(0)
        modules.append(compile_spec(spec, f"ints_{k}")["Ints"](*args).double())
    modules[1].load_state_dict(modules[0].state_dict())
    return modules[0], modules[1]


def _agree(ours: torch.nn.Module, plain: torch.nn.Module, *inputs: torch.Tensor) -> None:
    """Same output, same gradients of the inputs and the parameters, same second derivatives."""
    wrt = [*inputs, *ours.parameters()]
    got, want = ours(*inputs), plain(*inputs)
    torch.testing.assert_close(got, want)
    weights = torch.linspace(-1, 2, got.numel(), dtype=got.dtype).reshape(got.shape)
    unused = {"allow_unused": True, "materialize_grads": True}  # x, in a loop of no steps
    ours_grads = torch.autograd.grad((got * weights).sum(), wrt, create_graph=True, **unused)
    plain_grads = torch.autograd.grad(
        (want * weights).sum(), [*inputs, *plain.parameters()], create_graph=True, **unused
    )
    for g, p in zip(ours_grads, plain_grads, strict=True):
        torch.testing.assert_close(g, p)
    second = sum((g * g).sum() for g in ours_grads)
    second_plain = sum((g * g).sum() for g in plain_grads)
    for g, p in zip(
        torch.autograd.grad(second, wrt, **unused),
        torch.autograd.grad(second_plain, [*inputs, *plain.parameters()], **unused),
        strict=True,
    ):
        torch.testing.assert_close(g, p)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_an_int_a_loop_carries_derives(name, steps):
    args = (4, True) if name == "if in the body" else (4,)
    ours, plain = _pair(SPECS[name], *args)
    torch.manual_seed(steps)
    x = torch.randn(steps, 2, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    _agree(ours, plain, x, y)
    if name == "if in the body":
        other, other_plain = _pair(SPECS[name], 4, False)
        _agree(other, other_plain, x, y)
    assert torch.autograd.gradcheck(ours, (x, y))
    assert torch.autograd.gradgradcheck(ours, (x, y))


def test_the_backward_reads_each_steps_recorded_int():
    """The carried int is recorded per step in backward's prelude and read at each step, not recomputed
    from the loop's variable alone."""
    source = compile_spec(LAYER.replace("BODY", SPECS["counter in a slice"]), "ints_source")["SOURCE"]
    backward = source[source.index("def backward") :]
    assert "n1_at.append(n1)" in backward
    assert "n1 = n1_at[t]" in backward


@pytest.mark.parametrize("steps", [0, 1, 3])
@pytest.mark.parametrize(
    "body",
    [
        SPECS["counter in a slice"],
        # an int each step computes from the loop's variable alone: its slice's shape is known only at run
        # time, so the step's values may be smaller at step 0; backward's placeholders of those (kept as
        # their shapes on ctx) were made from shapes setup_context does not keep when backward runs the
        # forward again (an AttributeError), codegen/loop_backward.py
        SPECS["counter in a slice"].replace("n = n + 1\n            k = n % d", "k = (t + 1) % d"),
    ],
    ids=["carried", "per step"],
)
def test_an_int_a_loop_carries_derives_when_backward_runs_the_forward_again(body, steps):
    ours, plain = _pair(body, 4, decorator='@function(save = "inputs")')
    torch.manual_seed(steps)
    x = torch.randn(steps, 2, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    _agree(ours, plain, x, y)
    assert torch.autograd.gradcheck(ours, (x, y))


# ---------------------------------------------------------------- in a loop holding a loop (a `Nest`)

NEST_LAYER = """\
@function
layer Nested(d: int) {
    param w: [d, d] = uniform(-1, 1)
    example(d = 4)
    forward(x: [T, B, d], y: [B, d], z: [L, d]) -> [B, d] {
        h = y
        BODY
    }
}
"""

NEST_SPECS = {
    # carried by the inner loop, and so from one outer step to the next
    "carried by the inner loop": """n = 0
        for j in range(size_at(z, 0)) {
            for t in range(T) {
                n = (n + 1) % d
                h = tanh(h @ w) * y[:, n:n + 1] + x[t]
            }
            h = h + z[j]
        }
        return h""",
    # carried by the outer loop, read by the inner loop and after the loops
    "carried by the outer loop": """n = 1
        for j in range(size_at(z, 0)) {
            n = (n * 3 + 1) % d
            h = h * y[:, n:n + 1] + z[j]
            for t in range(T) {
                h = tanh(h @ w + x[t]) * y[:, n:n + 1]
            }
        }
        return h * y[:, n:n + 1] + n""",
    # both: the inner loop reads its int before rebinding it, the outer one's reads the inner one's
    "carried by both loops": """n = 0
        m = 1
        for j in range(size_at(z, 0)) {
            m = (m + n) % d
            for t in range(T) {
                h = tanh(h @ w) * y[:, n:n + 1] + x[t]
                n = (n + m) % d
                h = h * y[:, n:n + 1]
            }
            h = h + z[j] * y[:, m:m + 1]
        }
        k = (n + m) % d
        return h * y[:, k:k + 1]""",
    # read after the inner loop that carries it, in the body and by a second inner loop
    "read after the inner loop": """n = 0
        for j in range(size_at(z, 0)) {
            for t in range(T) {
                n = (n + 1) % d
                h = tanh(h @ w) + x[t]
            }
            h = h * y[:, n:n + 1] + z[j]
            for s in range(T) {
                h = tanh(h @ w) * y[:, n:n + 1]
            }
        }
        return h""",
    # a loop, then a nest starting from what it leaves
    "after a loop": """n = 0
        for t in range(T) {
            n = n + 1
            h = tanh(h @ w) + x[t] * y[:, n % d:n % d + 1]
        }
        for j in range(size_at(z, 0)) {
            for s in range(T) {
                n = n + 2
                h = tanh(h @ w) * y[:, n % d:n % d + 1] + z[j]
            }
        }
        return h * n""",
}

# (inner steps T, outer steps L): no step of either, inner loops of no step, one step, several
NEST_STEPS = [(0, 0), (0, 2), (3, 0), (1, 1), (2, 3), (4, 2)]


def _nest_inputs(steps: int, outer: int) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(10 * steps + outer)
    return tuple(
        torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in [(steps, 2, 4), (2, 4), (outer, 4)]
    )


@pytest.mark.parametrize("steps,outer", NEST_STEPS)
@pytest.mark.parametrize("name", sorted(NEST_SPECS))
def test_an_int_a_nest_carries_derives(name, steps, outer):
    ours, plain = function_and_plain(NEST_LAYER.replace("BODY", NEST_SPECS[name]), "Nested", 4)
    inputs = _nest_inputs(steps, outer)
    _agree(ours, plain, *inputs)
    assert torch.autograd.gradcheck(ours, inputs)
    assert torch.autograd.gradgradcheck(ours, inputs)


@pytest.mark.parametrize("steps,outer", [(0, 2), (2, 3)])
def test_an_int_a_nest_carries_derives_when_backward_runs_the_forward_again(steps, outer):
    text = NEST_LAYER.replace("BODY", NEST_SPECS["carried by both loops"])
    ours, plain = function_and_plain(text.replace("@function", '@function(save = "inputs")'), "Nested", 4)
    inputs = _nest_inputs(steps, outer)
    _agree(ours, plain, *inputs)
    assert torch.autograd.gradcheck(ours, inputs)


def test_a_nests_backward_reads_each_steps_recorded_int():
    """Backward's prelude records the inner loop's int per outer step and per step, and each step reads it."""
    source = compile_spec(NEST_LAYER.replace("BODY", NEST_SPECS["carried by the inner loop"]), "nest_src")["SOURCE"]
    backward = source[source.index("def backward") :]
    assert "n1_rows.append(" in backward
    assert re.search(r"(n1_at_?) = n1_rows\[j\]\n(.|\n)*n1 = \1\[t\]", backward)


def test_a_number_bound_after_the_inner_loop_reading_it_is_refused():
    """The Function computes a nest body's numbers at the start of each step: a number the body binds after
    its loop reads it (from the step before) is refused at the number, with a hint."""
    body = """m = 0
        for j in range(size_at(z, 0)) {
            for t in range(T) {
                h = tanh(h @ w) * y[:, m:m + 1] + x[t]
            }
            m = (j + 1) % d
        }
        return h"""
    with pytest.raises(SpecError) as error:
        compile_spec(NEST_LAYER.replace("BODY", body), "nest_refused")
    message = str(error.value)
    assert "nest_refused.layer:12:13: error: cannot derive through the number 'm' yet" in message
    assert "computes the numbers its body binds at the start of each step" in message
    assert "hint: bind it at the start of the loop's body" in message
