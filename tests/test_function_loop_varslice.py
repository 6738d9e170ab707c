"""A loop kept as one (its count known only when forward runs) whose body slices by bounds whose difference
varies from step to step (`h[:, :k]` with `k = t % 2`, `x[t][:, a:a + k]` of a growing `k`, `x[:t + 1]`): the
step's values then change shape from step to step, so the Function's backward computes them again from what
the step keeps (`autodiff/loop_ints.sized_per_step`) rather than keeping them per step. Each spec here was
refused before ("cannot derive through this slice ... yet"); each now agrees with the plain module: outputs,
first and second derivatives, gradcheck and gradgradcheck in float64, over loops of 0, 1, 2 and 5 steps, and
keeps no more bytes for backward than autograd does."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from layerdsl.diagnostics import SpecError
from tests.support import compile_spec, function_and_plain, saved_bytes

STEPS = [0, 1, 2, 5]

LAYER = """\
@function
layer Sliced(d: int) {
    param w: [d, d] = uniform(-1, 1)
    example(d = 4)
    forward(x: [T, B, d], y: [B, d]) -> [B, d] {
        h = y
        BODY
    }
}
"""

SPECS = {
    # the spec tests/test_function_loop_ints.py left open: a size from the loop's variable
    "by the variable": """for t in range(T) {
            k = t % 2
            h = cat([h[:, :k] * 2.0, tanh(h[:, k:])], dim = 1) @ w
        }
        return h""",
    # a size from an int the loop carries
    "by a carried int": """n = 0
        for t in range(T) {
            n = (n + 1) % d
            h = tanh(cat([h[:, :n] * 2.0, sigmoid(h[:, n:])], dim = 1) @ w) + x[t]
        }
        return h""",
    # the carried value's slice read only for its size (`h[:, :n] * 2.0`'s gradient): `h` kept as its shape
    "a slice read for its size": """n = 0
        for t in range(T) {
            n = (n + 1) % d
            h = tanh(cat([h[:, :n] * 2.0, sigmoid(x[t][:, n:])], dim = 1) @ w) + x[t]
        }
        return h""",
    # a value of the step's own shape in no `cat`, computed from the carried value: backward computes it again
    "outside a cat": """n = 0
        for t in range(T) {
            n = (n + 1) % d
            h = tanh(sigmoid(h[:, n:]) @ w[n:, :]) + x[t]
        }
        return h""",
    # the same, of two views of the carried value (its shape their broadcast): kept flattened too
    "outside a cat, of two views": """n = 0
        for t in range(T) {
            n = (n + 1) % d
            h = tanh(exp(h[:, n:] - h[:, :1]) @ w[n:, :]) + x[t]
        }
        return h""",
    # a window of the step's input at a moving offset, growing: `x[..., a:a + k]`
    "a growing window": """k = 1
        for t in range(T) {
            a = t % 2
            s = sum(exp(x[t][:, a:a + k]) * 0.5, dim = 1, keepdim = true)
            h = tanh(h @ w) * s + x[t]
            k = k % 3 + 1
        }
        return h""",
    # a prefix of the input, longer at each step (`h[:t]`)
    "a growing prefix": """for t in range(T) {
            h = tanh(h @ w + sum(sin(x[:t + 1]), dim = 0))
        }
        return h""",
    # the sliced part contracted away (`h[:, :k] @ w[:k]`), its size from an int read after the loop
    "contracted": """k = 1
        for t in range(T) {
            k = t % d + 1
            h = tanh(h[:, :k] @ w[:k, :]) + x[t]
        }
        return h * k""",
}


def _inputs(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (of `steps` steps: a loop of none reads nothing of it, and it requires no gradient), y."""
    torch.manual_seed(steps)
    x = torch.randn(steps, 2, 4, dtype=torch.float64, requires_grad=steps > 0)
    y = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    return x, y


def _pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    return function_and_plain(LAYER.replace("BODY", SPECS[name]), "Sliced", 4)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_slice_of_a_size_varying_per_step_derives(name, steps):
    ours, plain = _pair(name)
    x, y = _inputs(steps)
    torch.testing.assert_close(ours(x, y), plain(x, y))
    given = [t for t in (x, y) if t.requires_grad]
    wrt, plain_wrt = [*given, *ours.parameters()], [*given, *plain.parameters()]
    unused = {"allow_unused": True, "materialize_grads": True}  # (a spec that reads no x)
    grads = torch.autograd.grad(ours(x, y).sin().sum(), wrt, create_graph=True, **unused)
    plain_grads = torch.autograd.grad(plain(x, y).sin().sum(), plain_wrt, create_graph=True, **unused)
    for g, p in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(g, p)
    second = torch.autograd.grad(sum((g * g).sum() for g in grads), wrt, **unused)
    plain_second = torch.autograd.grad(sum((g * g).sum() for g in plain_grads), plain_wrt, **unused)
    for g, p in zip(second, plain_second, strict=True):
        torch.testing.assert_close(g, p)
    assert torch.autograd.gradcheck(ours, (x, y))
    assert torch.autograd.gradgradcheck(ours, (x, y))


@pytest.mark.parametrize("steps", [0, 3])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_slice_of_a_size_varying_per_step_derives_when_backward_runs_the_forward_again(name, steps):
    text = LAYER.replace("BODY", SPECS[name]).replace("@function", '@function(save = "inputs")')
    ours, plain = function_and_plain(text, "Sliced", 4)
    x, y = _inputs(steps)
    torch.testing.assert_close(ours(x, y), plain(x, y))
    assert torch.autograd.gradcheck(ours, (x, y))
    assert torch.autograd.gradgradcheck(ours, (x, y))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_slice_of_a_size_varying_per_step_keeps_no_more_than_autograd(name):
    """Bytes kept for backward besides the inputs and parameters (the caller holds them anyway)."""
    ours, plain = _pair(name)
    x, y = _inputs(5)

    def beyond_inputs(module: torch.nn.Module) -> SimpleNamespace:
        return SimpleNamespace(parameters=lambda: [x, y, *module.parameters()])

    ours_bytes = saved_bytes(lambda: ours(x, y), beyond_inputs(ours))  # type: ignore[arg-type]
    assert ours_bytes <= saved_bytes(lambda: plain(x, y), beyond_inputs(plain))  # type: ignore[arg-type]


def test_the_backward_computes_the_steps_values_again():
    """The values of a step's own shape are not kept per step (no buffer of them is made): the step of
    backward reads `tanh(h[:, k:])` back from the `cat` it keeps anyway (`loop_backward.read_from_cats`),
    so the carried `h`, read only for its shape then, is kept as one element expanded (no memory)."""
    source = compile_spec(LAYER.replace("BODY", SPECS["by the variable"]), "varslice_source")["SOURCE"]
    forward = source[source.index("def forward") : source.index("def setup_context")]
    backward = source[source.index("def backward") :]
    assert "th_steps" not in forward and "h_steps[t - 1] = h" not in forward
    assert "h_steps = h2.new_zeros(()).expand((n_steps - 1, *h2.shape))  # only its shape is read" in forward
    assert "th = torch.narrow(cat, 1, mul.shape[1], cat.shape[1] - mul.shape[1])" in backward
    assert "torch.tanh(" not in backward


def test_a_value_read_only_for_its_shape_is_not_computed_again():
    """`sum`'s gradient reads only the shape of `sin(x[:t + 1])`: backward binds it to `x[:t + 1]`, of its
    shape, rather than computing the sine of every prefix again."""
    source = compile_spec(LAYER.replace("BODY", SPECS["a growing prefix"]), "varslice_prefix")["SOURCE"]
    backward = source[source.index("def backward") :]
    assert "sin = part  # of its shape: only that is read" in backward
    assert "torch.sin(" not in backward


@pytest.mark.parametrize("name", ["outside a cat", "outside a cat, of two views"])
def test_a_value_computed_from_the_carried_one_is_kept_flattened(name):
    """`sigmoid(h[:, n:])`, in no `cat`: computed again, it would keep `h` per step for it alone; it is kept
    instead, each step's flattened into one buffer (`codegen/flat_steps.py`), which backward cuts back from
    its end at its operands' shape, so `h` is kept as its shape alone (one element expanded)."""
    source = compile_spec(LAYER.replace("BODY", SPECS[name]), "varslice_flat")["SOURCE"]
    forward = source[source.index("def forward") : source.index("def setup_context")]
    backward = source[source.index("def backward") :]
    value = "s" if name == "outside a cat" else "sub"  # (`exp` of it computed again)
    assert f"{value}_parts.append({value}.reshape(-1))" in forward
    assert f"{value}_steps = torch.cat({value}_parts) if {value}_parts else None" in forward
    assert "h_steps = h" in forward and "# only its shape is read" in forward and "h_steps[t - 1] = h" not in forward
    assert f"{value} = {value}_steps[{value}_end:{value}_end + {value}_shape.numel()].view({value}_shape)" in backward


# A loop whose `if` picks its side at each step (`autodiff/step_choices.py`, planned as a loop holding a loop of
# none): a slice of the carried value or of an input outside the `if`, of which nothing computed varies in shape,
# derives (`autodiff/choice_slices.py`): backward computes the slice again from the carried value at each step.
CHOICE_SPECS = {
    # refused before (tests/test_user_trial_round23.py): a size from the loop's variable
    "by the variable": """for t in range(T) {
            m = t % 3
            p = sum(h[:, :m])
            if t % 2 == 0 {
                h = tanh(h @ w) * p
            } else {
                h = h * x[t]
            }
        }
        return h""",
    # a size from an int the loop carries, the slice reduced to the step's shape
    "by a carried int": """n = 0
        for t in range(T) {
            n = (n + 1) % d
            s = sum(h[:, n:], dim = 1, keepdim = true)
            if t % 2 == 1 {
                h = tanh(h @ w) + s * x[t]
            } else {
                h = h * sigmoid(s)
            }
        }
        return h""",
    # a prefix of the input, longer at each step, beside a slice of the carried value
    "a growing prefix": """for t in range(T) {
            q = sum(x[:t + 1], dim = 0) + sum(h[:, t % 2:], dim = 1, keepdim = true)
            if t % 3 == 0 {
                h = tanh(h @ w + q)
            } else {
                h = h + q * 0.5
            }
        }
        return h""",
    # a prefix of the input alone (its gradient's slices, `slice_backward` into x's shape)
    "a growing prefix of the input": """for t in range(T) {
            q = sum(x[:t + 1], dim = 0)
            if t % 3 == 0 {
                h = tanh(h @ w) * q
            } else {
                h = h * sigmoid(q)
            }
        }
        return h""",
}

# where the Function keeps more than autograd, and why (320 bytes to autograd's 192 at five steps)
CHOICE_KEEPS_MORE = (
    "codegen/step_rows.py lazy_updates: a carried value sliced by a slice of varying size (choice_slices."
    "sliced_carried: `h[:, t % 2:]` before the `if`) is read back at the head of every step of backward, where"
    " the slice is computed again (function_nest.choice_slices_again), so `h` is kept at every step, though the"
    " slice is read only for its shape (`sum`'s gradient, and `slice_backward`'s `h_at.shape`) and the sides read"
    " `h` at the `tanh` steps only: next, where the slice and the carried value are read only for their shapes"
    " outside the sides, bind them from the carried value's shape (every step's is its start's, checked in"
    " forward) and keep the carried value lazily (step_rows.Lazy)"
)
CHOICE_MORE = {"a growing prefix"}


def _choice_pair(name: str, save: str = "") -> tuple[torch.nn.Module, torch.nn.Module]:
    text = LAYER.replace("BODY", CHOICE_SPECS[name])
    if save:
        text = text.replace("@function", f'@function(save = "{save}")')
    return function_and_plain(text, "Sliced", 4)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name", sorted(CHOICE_SPECS))
def test_a_slice_of_a_size_varying_per_step_derives_in_a_loop_with_a_choice_per_step(name, steps):
    ours, plain = _choice_pair(name)
    x, y = _inputs(steps)
    torch.testing.assert_close(ours(x, y), plain(x, y))
    given = [t for t in (x, y) if t.requires_grad]
    wrt, plain_wrt = [*given, *ours.parameters()], [*given, *plain.parameters()]
    unused = {"allow_unused": True, "materialize_grads": True}
    grads = torch.autograd.grad(ours(x, y).sin().sum(), wrt, create_graph=True, **unused)
    plain_grads = torch.autograd.grad(plain(x, y).sin().sum(), plain_wrt, create_graph=True, **unused)
    for g, p in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(g, p)
    second = torch.autograd.grad(sum((g * g).sum() for g in grads), wrt, **unused)
    plain_second = torch.autograd.grad(sum((g * g).sum() for g in plain_grads), plain_wrt, **unused)
    for g, p in zip(second, plain_second, strict=True):
        torch.testing.assert_close(g, p)
    assert torch.autograd.gradcheck(ours, (x, y))
    assert torch.autograd.gradgradcheck(ours, (x, y))


@pytest.mark.parametrize("steps", [0, 3])
@pytest.mark.parametrize("name", sorted(CHOICE_SPECS))
def test_a_slice_of_a_size_varying_per_step_in_a_loop_with_a_choice_derives_running_the_forward_again(name, steps):
    ours, plain = _choice_pair(name, save="inputs")
    x, y = _inputs(steps)
    torch.testing.assert_close(ours(x, y), plain(x, y))
    assert torch.autograd.gradcheck(ours, (x, y))
    assert torch.autograd.gradgradcheck(ours, (x, y))


@pytest.mark.parametrize(
    "name",
    [
        (
            pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=CHOICE_KEEPS_MORE))
            if name in CHOICE_MORE
            else name
        )
        for name in sorted(CHOICE_SPECS)
    ],
)
def test_a_slice_of_a_size_varying_per_step_in_a_loop_with_a_choice_keeps_no_more_than_autograd(name):
    ours, plain = _choice_pair(name)
    x, y = _inputs(5)

    def beyond_inputs(module: torch.nn.Module) -> SimpleNamespace:
        return SimpleNamespace(parameters=lambda: [x, y, *module.parameters()])

    ours_bytes = saved_bytes(lambda: ours(x, y), beyond_inputs(ours))  # type: ignore[arg-type]
    assert ours_bytes <= saved_bytes(lambda: plain(x, y), beyond_inputs(plain))  # type: ignore[arg-type]


def test_the_slice_is_computed_again_in_a_loop_with_a_choice_per_step():
    """`h[:, :m]` is not kept per step (its shape varies): backward slices the carried value read back again."""
    source = compile_spec(LAYER.replace("BODY", CHOICE_SPECS["by the variable"]), "varslice_choice")["SOURCE"]
    forward = source[source.index("def forward") : source.index("def setup_context")]
    backward = source[source.index("def backward") :]
    assert "part_layers" not in forward
    assert "h_at = h_layers[t - 1] if t > 0 else y\n                part = h_at[:, :m_now]" in backward


def test_a_sides_pick_of_the_input_is_picked_again_from_it():
    """`x[t]` of the side taken at odd steps is not copied into rows per step: backward picks it again from x,
    which setup_context saves only where a step from step 1 on runs (at one step none reads it, as autograd's)."""
    source = compile_spec(LAYER.replace("BODY", CHOICE_SPECS["by the variable"]), "varslice_pick")["SOURCE"]
    forward = source[source.index("def forward") : source.index("def setup_context")]
    backward = source[source.index("def backward") :]
    assert "part1_layers" not in forward
    assert "ctx.save_for_backward(x if len(range(1, ctx.T)) else None, " in source
    assert "part1 = x[t]" in backward


CHOICE_REFUSED = {
    # a value computed from the slice whose shape varies (kept per step, it would be stacked at one shape)
    "computed from the slice": (
        """for t in range(T) {
            m = t % 3
            p = tanh(h[:, m:]) @ w[m:, :]
            if t % 2 == 0 {
                h = tanh(h @ w) * p
            } else {
                h = h * x[t]
            }
        }
        return h""",
        "9:27",
        "cannot derive through this slice of `h` yet: its size depends on the loop's variable 't' through 'm'",
    ),
    # a slice of the carried value on a side
    "on a side": (
        """for t in range(T) {
            m = t % 3
            if t % 2 == 0 {
                h = tanh(h @ w) + sum(h[:, :m])
            } else {
                h = h * x[t]
            }
        }
        return h""",
        "10:44",
        "which a loop whose `if` picks a side at each step does not derive through yet",
    ),
}


@pytest.mark.parametrize("name", sorted(CHOICE_REFUSED))
def test_a_slice_of_a_size_varying_per_step_in_a_loop_with_a_choice_is_refused_where_it_varies(name):
    body, where, message = CHOICE_REFUSED[name]
    with pytest.raises(SpecError) as error:
        compile_spec(LAYER.replace("BODY", body), "varslice_choice_refused")
    assert f"varslice_choice_refused.layer:{where}: error: " in str(error.value)
    assert message in str(error.value)
