"""An index by a bool mask (`sum(h[h > 0])`, `mean(x[t][m])`) in a loop whose `if` picks its side at each step
(`autodiff/step_choices.py`), or in the body of a loop holding a loop outside the loop it holds
(`autodiff/nest.py`), whose result flows only into values of one shape (a reduction): how many elements it picks
is data, so its result's shape changes from step to step and cannot be kept stacked per step; backward computes
it again at each step from its input and its mask (`autodiff/choice_slices.masks_again`), each of one shape.
Each spec here was refused before ("cannot derive through this index by a bool mask yet"); each now agrees with
the plain module: outputs, first and second derivatives, gradcheck and gradgradcheck in float64, at 0, 1 and 3
steps, with masks picking a different count at each step (none at step 1 where the mask reads the input, made
negative there), also under `save = "inputs"`, and keeps no more bytes for backward than autograd does. What is
computed there from the index and varies in shape too (`exp(x[t][m]) * 0.5`) is computed again alike; on a
side of an `if`, at the start of that side's backward. An index whose value (or one computed from it) the steps
keep at one shape (an item appended to a list) stays refused, located at the mask."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from layerdsl.diagnostics import SpecError
from tests.support import compile_spec, function_and_plain, saved_bytes

STEPS = [0, 1, 3]

LAYER = """\
@function
layer Masked(d: int) {
    param w: [d, d] = uniform(-1, 1)
    example(d = 4)
    forward(x: [T, B, d], y: [B, d], z: [L, d]) -> [B, d] {
        h = y
        BODY
    }
}
"""

# a loop whose `if` picks its side at each step (planned as a loop holding a loop of none)
CHOICE = {
    "a mask of the carried value": """for t in range(T) {
            s = sum(h[h > 0.3])
            if t % 2 == 0 {
                h = tanh(h @ w) * s
            } else {
                h = h * x[t]
            }
        }
        return h""",
    "a mask of the step's input row": """for t in range(T) {
            r = x[t]
            s = sum(r[r > 0])
            if t % 2 == 0 {
                h = tanh(h @ w) + s
            } else {
                h = h * sigmoid(s)
            }
        }
        return h""",
    "a mean of a masked row": """for t in range(T) {
            s = mean(x[t][x[t] > -5.0])
            if t % 2 == 0 {
                h = tanh(h @ w) + s
            } else {
                h = h * sigmoid(s)
            }
        }
        return h""",
    "an elementwise value of a masked row": """for t in range(T) {
            s = sum(exp(x[t][x[t] > 0]) * 0.5)
            if t % 2 == 0 {
                h = tanh(h @ w) + s
            } else {
                h = h * s
            }
        }
        return h""",
    "a mask of the carried value through sigmoid": """for t in range(T) {
            s = sum(sigmoid(h[h > 0.1]))
            if t % 2 == 0 {
                h = tanh(h @ w) * s
            } else {
                h = h * x[t]
            }
        }
        return h""",
    "a mask on a side of the `if`": """for t in range(T) {
            if t % 2 == 0 {
                h = tanh(h @ w) + sum(h[h > 0])
            } else {
                h = h * x[t]
            }
        }
        return h""",
    # refused before in tests/test_user_trial_round23.py ("a bool mask on a side")
    "a masked row on a side of the `if`": """for t in range(T) {
            if t % 2 == 0 {
                h = tanh(h @ w) + sum(x[t][x[t] > 0.0])
            } else {
                h = h * x[t]
            }
        }
        return h""",
    "a mask after the `if` (on both sides)": """for t in range(T) {
            if t % 2 == 0 {
                h = tanh(h @ w)
            } else {
                h = h * x[t]
            }
            h = h * sum(sigmoid(h[h > 0.1]))
        }
        return h""",
    "masks of a side's value and of the input's row": """for t in range(T) {
            if t % 2 == 0 {
                u = tanh(h @ w)
                h = u + mean(u[x[t] > -9.0])
            } else {
                h = h * sum(x[t][x[t] > 0] * 2.0)
            }
        }
        return h""",
    "one side summing what the mask picks": """for t in range(T) {
            p = h[x[t] > 0]
            if t % 2 == 0 {
                h = tanh(h @ w) * sum(p)
            } else {
                h = h * x[t]
            }
        }
        return h""",
    "a mask of a value the step computes": """for t in range(T) {
            u = tanh(h @ w)
            s = sum(u[u > 0.1])
            if t % 2 == 0 {
                h = u * s
            } else {
                h = h * x[t] + s
            }
        }
        return h""",
}

# a loop holding a loop, the mask in its body outside the inner loop
NEST = {
    "a mask of the carried value before the inner loop": """for j in range(size_at(z, 0)) {
            h = h * sum(h[h > 0.2])
            for t in range(T) {
                h = tanh(h @ w) + x[t]
            }
        }
        return h""",
    "a mask of an input's row": """for j in range(size_at(z, 0)) {
            s = sum(z[j][z[j] > 0])
            for t in range(T) {
                h = tanh(h @ w) * s + x[t]
            }
        }
        return h""",
    # refused before in tests/test_function_loop_varsize.py ("a mask in the outer body")
    "an elementwise value of an input's masked row": """for j in range(size_at(z, 0)) {
            h = h + sum(sigmoid(z[j][z[j] > 0]))
            for t in range(T) {
                h = tanh(h @ w) + x[t]
            }
        }
        return h""",
    "masks on the sides of an `if` of the outer step": """for j in range(size_at(z, 0)) {
            if j % 2 == 0 {
                h = h * sum(z[j][z[j] > 0])
            } else {
                h = h * sum(sigmoid(h[h > 0.1]))
            }
            for t in range(T) {
                h = tanh(h @ w) + x[t]
            }
        }
        return h""",
    "a mean of what the inner loop leaves": """for j in range(size_at(z, 0)) {
            for t in range(T) {
                h = tanh(h @ w) + x[t]
            }
            h = h * mean(h[h > -5.0])
        }
        return h""",
}

SPECS = {**CHOICE, **NEST}
# (steps of the loop over x, rows of z): a choice loop runs over x, a nest over z's rows and x's steps
SIZES = {
    **{name: [(steps, 0) for steps in STEPS] for name in CHOICE},
    **{name: [(0, 0), (1, 1), (3, 3), (3, 0), (0, 3)] for name in NEST},
}
CASES = [(name, steps, rows) for name in sorted(SPECS) for steps, rows in SIZES[name]]


def _inputs(steps: int, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, y, z; x's step 1 and z's row 1 negative (a mask `> 0` of them picks nothing there)."""
    torch.manual_seed(10 * steps + rows)
    x = torch.randn(steps, 2, 4, dtype=torch.float64)
    z = torch.randn(rows, 4, dtype=torch.float64)
    x[1:2] = -x[1:2].abs()
    z[1:2] = -z[1:2].abs()
    y = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    return x.requires_grad_(steps > 0), y, z.requires_grad_(rows > 0)


def _pair(name: str, save: str = "") -> tuple[torch.nn.Module, torch.nn.Module]:
    text = LAYER.replace("BODY", SPECS[name])
    if save:
        text = text.replace("@function", f'@function(save = "{save}")')
    return function_and_plain(text, "Masked", 4)


def test_the_masks_pick_a_different_count_at_each_step_and_none_at_one():
    x, _, z = _inputs(3, 3)
    assert [int((x[t] > 0).sum()) for t in range(3)][1] == 0 and len({int((x[t] > 0).sum()) for t in range(3)}) > 1
    assert [int((z[j] > 0).sum()) for j in range(3)][1] == 0 and len({int((z[j] > 0).sum()) for j in range(3)}) > 1


@pytest.mark.parametrize("name,steps,rows", CASES)
def test_a_mask_reduced_per_step_derives(name, steps, rows):
    ours, plain = _pair(name)
    inputs = _inputs(steps, rows)
    torch.testing.assert_close(ours(*inputs), plain(*inputs))
    given = [t for t in inputs if t.requires_grad]
    wrt, plain_wrt = [*given, *ours.parameters()], [*given, *plain.parameters()]
    unused = {"allow_unused": True, "materialize_grads": True}  # (a loop of no steps reads nothing of x)
    grads = torch.autograd.grad(ours(*inputs).sin().sum(), wrt, create_graph=True, **unused)
    plain_grads = torch.autograd.grad(plain(*inputs).sin().sum(), plain_wrt, create_graph=True, **unused)
    for g, p in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(g, p)
    second = torch.autograd.grad(sum((g * g).sum() for g in grads), wrt, **unused)
    plain_second = torch.autograd.grad(sum((g * g).sum() for g in plain_grads), plain_wrt, **unused)
    for g, p in zip(second, plain_second, strict=True):
        torch.testing.assert_close(g, p)
    assert torch.autograd.gradcheck(ours, inputs)
    assert torch.autograd.gradgradcheck(ours, inputs)


@pytest.mark.parametrize("name,steps,rows", [c for c in CASES if c[1] in (0, 3)])
def test_a_mask_reduced_per_step_derives_when_backward_runs_the_forward_again(name, steps, rows):
    ours, plain = _pair(name, save="inputs")
    inputs = _inputs(steps, rows)
    torch.testing.assert_close(ours(*inputs), plain(*inputs))
    assert torch.autograd.gradcheck(ours, inputs)
    assert torch.autograd.gradgradcheck(ours, inputs)


# where the Function keeps more than autograd, and why (2152 bytes to autograd's 2136 at 5 steps, 3 rows)
KEEPS_MORE = {
    "masks on the sides of an `if` of the outer step": (
        "codegen/function_nest.py: `z[j]` on a side of an `if` of the outer step, read by the mask's index"
        " computed again there (BackwardWriter.side_again), is kept in rows per step (`part_layers`) rather than"
        " picked again from z as a view (step_picks picks the body's straight code's only): next, let"
        " step_picks.step_picks take a side's pick of an input too"
    )
}


@pytest.mark.parametrize(
    "name",
    [
        (
            pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KEEPS_MORE[name]))
            if name in KEEPS_MORE
            else name
        )
        for name in sorted(SPECS)
    ],
)
def test_a_mask_reduced_per_step_keeps_no_more_than_autograd(name):
    """Bytes kept for backward besides the inputs and parameters (the caller holds them anyway)."""
    ours, plain = _pair(name)
    inputs = _inputs(5, 3 if name in NEST else 0)

    def beyond_inputs(module: torch.nn.Module) -> SimpleNamespace:
        return SimpleNamespace(parameters=lambda: [*inputs, *module.parameters()])

    ours_bytes = saved_bytes(lambda: ours(*inputs), beyond_inputs(ours))  # type: ignore[arg-type]
    assert ours_bytes <= saved_bytes(lambda: plain(*inputs), beyond_inputs(plain))  # type: ignore[arg-type]


def test_the_index_is_computed_again_not_kept():
    """`h[h > 0.3]` is not stacked per step (its length varies): backward indexes the carried value read back
    by the mask kept per step (bools)."""
    source = compile_spec(LAYER.replace("BODY", CHOICE["a mask of the carried value"]), "masks_choice")["SOURCE"]
    forward = source[source.index("def forward") : source.index("def setup_context")]
    backward = source[source.index("def backward") :]
    assert "picked_layers" not in forward and "mask_layers.append(mask)" in forward
    assert "picked = h_at[mask]" in backward


REFUSED = {
    # an item of varying shape appended to a list (kept at one shape over the steps)
    "an item appended to a list": (
        """outs = []
        for t in range(T) {
            outs.append(x[t][x[t] > 0])
            if t % 2 == 0 {
                h = tanh(h @ w)
            } else {
                h = h * x[t]
            }
        }
        return h + sum(cat(outs, dim = 0))""",
        "9:25",
        "cannot derive through this index by a bool mask yet: it is in the body of a loop whose `if` picks a side",
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_an_index_of_a_shape_that_flows_on_is_refused_at_the_mask(name):
    body, where, message = REFUSED[name]
    with pytest.raises(SpecError) as error:
        compile_spec(LAYER.replace("BODY", body), "masks_refused")
    assert f"masks_refused.layer:{where}: error: {message}" in str(error.value)
    assert "hint: pick with where(mask, x, 0)" in str(error.value)
