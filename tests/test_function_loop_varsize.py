"""A loop kept as one (its count known only when forward runs) whose body indexes by a bool mask
(`sum(x[t][x[t] > 0])`): how many elements the index picks is data, so its result's shape changes from step
to step, as a slice's whose size varies does (tests/test_function_loop_varslice.py). The same machinery
derives it (`autodiff/loop_ints.sized_per_step`): backward computes such values again from what the step
keeps (the mask, kept per step as bools). Each spec here was refused before ("cannot derive through this
index by a bool mask yet"); each now agrees with the plain module: outputs, first and second derivatives,
gradcheck and gradgradcheck in float64, over loops of 0, 1, 2 and 5 steps, also under `save = "inputs"`, and
keeps no more bytes for backward than autograd does. A value the steps keep at one shape (a carried value, an
item appended to a list) whose shape may change from step to step is refused, located."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from layerdsl.diagnostics import SpecError
from tests.support import compile_spec, function_and_plain, saved_bytes

STEPS = [0, 1, 2, 5]

LAYER = """\
@function
layer Masked(d: int) {
    param w: [d, d] = uniform(-1, 1)
    example(d = 4)
    forward(x: [T, B, d], y: [B, d]) -> [B, d] {
        h = y
        BODY
    }
}
"""

SPECS = {
    # the spec of the error corpus's case: a masked sum of the step's input
    "a masked sum of the input": """for t in range(T) {
            h = tanh(h @ w) + sum(exp(x[t][x[t] > 0.5]) * 0.5)
        }
        return h""",
    # a mask on the carried value, the picked values through an operation backward reads
    "a mask on the carried value": """for t in range(T) {
            h = tanh(h @ w) * (1.0 + sum(sigmoid(h[h > 0.1]))) + x[t]
        }
        return h""",
    # a mask of one value picking from another, and a slice of a size from the loop's variable beside it
    "a mask and a varying slice": """for t in range(T) {
            k = t % 3
            p = sum(sin(h[x[t] > 0])) + sum(h[:, :k] * h[:, :k])
            h = tanh(h @ w + x[t]) * p
        }
        return h""",
}


def _inputs(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(steps)
    x = torch.randn(steps, 2, 4, dtype=torch.float64, requires_grad=steps > 0)
    y = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    return x, y


def _pair(name: str, save: str = "") -> tuple[torch.nn.Module, torch.nn.Module]:
    text = LAYER.replace("BODY", SPECS[name])
    if save:
        text = text.replace("@function", f'@function(save = "{save}")')
    return function_and_plain(text, "Masked", 4)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_an_index_by_a_bool_mask_in_a_loop_derives(name, steps):
    ours, plain = _pair(name)
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


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_an_index_by_a_bool_mask_in_a_loop_derives_when_backward_runs_the_forward_again(name, steps):
    ours, plain = _pair(name, save="inputs")
    x, y = _inputs(steps)
    torch.testing.assert_close(ours(x, y), plain(x, y))
    assert torch.autograd.gradcheck(ours, (x, y))
    assert torch.autograd.gradgradcheck(ours, (x, y))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_an_index_by_a_bool_mask_in_a_loop_keeps_no_more_than_autograd(name):
    """Bytes kept for backward besides the inputs and parameters (the caller holds them anyway)."""
    ours, plain = _pair(name)
    x, y = _inputs(5)

    def beyond_inputs(module: torch.nn.Module) -> SimpleNamespace:
        return SimpleNamespace(parameters=lambda: [x, y, *module.parameters()])

    ours_bytes = saved_bytes(lambda: ours(x, y), beyond_inputs(ours))  # type: ignore[arg-type]
    assert ours_bytes <= saved_bytes(lambda: plain(x, y), beyond_inputs(plain))  # type: ignore[arg-type]


def test_the_mask_is_kept_per_step_and_the_picked_values_computed_again():
    """The mask is kept per step (as bools: a quarter of a float's bytes and less); what it picks is not
    kept (its length changes from step to step): backward picks it again."""
    source = compile_spec(LAYER.replace("BODY", SPECS["a masked sum of the input"]), "varsize_source")["SOURCE"]
    forward = source[source.index("def forward") : source.index("def setup_context")]
    backward = source[source.index("def backward") :]
    assert "mask_steps[t] = mask" in forward
    assert "picked_steps" not in forward
    assert "picked = part[mask]" in backward


REFUSED = {
    # an item of a list: the list's items are kept at one shape (the stack of the steps')
    "an appended masked item": (
        """L = []
        for t in range(T) {
            L.append(x[t][x[t] > 0])
        }
        return h + sum(cat(L, dim = 0))""",
        "9:22",
        "an item appended to a list",
    ),
    "an appended slice of a varying size": (
        """L = []
        for t in range(T) {
            k = t % 2
            L.append(x[t][:, :k + 1])
        }
        return h + sum(cat(L, dim = 1))""",
        "10:22",
        "an item appended to a list",
    ),
    "a carried masked value": (
        """v = h[h > 0]
        for t in range(T) {
            v = v[v > 0.1] * 2.0
        }
        return h + sum(v)""",
        "9:17",
        "a value the loop carries",
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_value_kept_at_one_shape_whose_shape_varies_is_refused(name):
    body, where, what = REFUSED[name]
    with pytest.raises(SpecError) as error:
        compile_spec(LAYER.replace("BODY", body), "varsize_refused")
    message = str(error.value)
    assert f"varsize_refused.layer:{where}: error: cannot derive through this value yet: it is {what}" in message
    assert "its shape may change from step to step" in message
    assert "hint: keep the shape the same in every step" in message


# A loop holding a loop: the inner loop's values of a step's own shape (a slice whose size varies by the
# inner step, by an int the outer loop carries or binds, or an index by a bool mask) derive as a loop's do;
# in the outer loop's body outside the inner loop they are refused (what is kept per outer step keeps one
# shape).
NEST = """\
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

NESTED = {
    "a slice by the inner variable": """for j in range(size_at(z, 0)) {
            for t in range(T) {
                k = t % 2
                h = cat([h[:, :k] * 2.0, tanh(h[:, k:])], dim = 1) @ w
            }
            h = h + z[j]
        }
        return h""",
    "a slice by an int the outer loop carries": """n = 0
        for j in range(size_at(z, 0)) {
            for t in range(T) {
                n = (n + 1) % d
                h = tanh(cat([h[:, :n] * 2.0, sigmoid(h[:, n:])], dim = 1) @ w) + x[t]
            }
            h = h + z[j]
        }
        return h""",
    "a slice by an int of the outer step": """for j in range(size_at(z, 0)) {
            m = j % 3 + 1
            for t in range(T) {
                h = tanh(h @ w) * sum(sigmoid(h[:, :m]), dim = 1, keepdim = true) + x[t]
            }
            h = h + z[j]
        }
        return h""",
    "a mask in the inner loop": """for j in range(size_at(z, 0)) {
            for t in range(T) {
                h = tanh(h @ w) + sum(exp(x[t][x[t] > 0.5]) * z[j][0])
            }
        }
        return h""",
}

NEST_STEPS = [(0, 2), (1, 2), (2, 2), (5, 2), (3, 0), (2, 1)]  # (inner steps, outer steps)


def _nest_inputs(steps: int, layers: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(10 * steps + layers)
    x = torch.randn(steps, 2, 4, dtype=torch.float64, requires_grad=steps > 0)
    y = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    z = torch.randn(layers, 4, dtype=torch.float64, requires_grad=layers > 0)
    return x, y, z


def _nest_pair(name: str, save: str = "") -> tuple[torch.nn.Module, torch.nn.Module]:
    text = NEST.replace("BODY", NESTED[name])
    if save:
        text = text.replace("@function", f'@function(save = "{save}")')
    return function_and_plain(text, "Nested", 4)


@pytest.mark.parametrize("steps,layers", NEST_STEPS)
@pytest.mark.parametrize("name", sorted(NESTED))
def test_a_value_of_a_steps_own_shape_in_a_nests_inner_loop_derives(name, steps, layers):
    ours, plain = _nest_pair(name)
    inputs = _nest_inputs(steps, layers)
    torch.testing.assert_close(ours(*inputs), plain(*inputs))
    given = [t for t in inputs if t.requires_grad]
    wrt, plain_wrt = [*given, *ours.parameters()], [*given, *plain.parameters()]
    unused = {"allow_unused": True, "materialize_grads": True}
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


@pytest.mark.parametrize("steps,layers", [(0, 2), (3, 2)])
@pytest.mark.parametrize("name", sorted(NESTED))
def test_a_value_of_a_steps_own_shape_in_a_nest_derives_when_backward_runs_the_forward_again(name, steps, layers):
    ours, plain = _nest_pair(name, save="inputs")
    inputs = _nest_inputs(steps, layers)
    torch.testing.assert_close(ours(*inputs), plain(*inputs))
    assert torch.autograd.gradcheck(ours, inputs)
    assert torch.autograd.gradgradcheck(ours, inputs)


@pytest.mark.parametrize("name", sorted(NESTED))
def test_a_value_of_a_steps_own_shape_in_a_nest_keeps_no_more_than_autograd(name):
    ours, plain = _nest_pair(name)
    inputs = _nest_inputs(5, 3)

    def beyond_inputs(module: torch.nn.Module) -> SimpleNamespace:
        return SimpleNamespace(parameters=lambda: [*inputs, *module.parameters()])

    ours_bytes = saved_bytes(lambda: ours(*inputs), beyond_inputs(ours))  # type: ignore[arg-type]
    assert ours_bytes <= saved_bytes(lambda: plain(*inputs), beyond_inputs(plain))  # type: ignore[arg-type]


NEST_REFUSED = {
    "a slice in the outer body": (
        """for j in range(size_at(z, 0)) {
            h = h * sum(tanh(z[:j + 1]), dim = 0)
            for t in range(T) {
                h = tanh(h @ w) + x[t]
            }
        }
        return h""",
        "8:32",
        "cannot derive through this slice of `z` yet: its size depends on the loop's variable 'j'",
        "which a loop holding a loop does not derive through yet outside the loop it holds",
    ),
    "an item of a varying size appended in the inner loop": (
        """for j in range(size_at(z, 0)) {
            outs = []
            for t in range(T) {
                k = t % 2
                h = tanh(h @ w)
                outs.append(h[:, :k + 1])
            }
            h = h + sum(cat(outs, dim = 1))
        }
        return h""",
        "12:29",
        "cannot derive through this value yet: it is an item appended to a list",
        "hint: keep the shape the same in every step",
    ),
}


@pytest.mark.parametrize("name", sorted(NEST_REFUSED))
def test_a_value_of_a_steps_own_shape_in_a_nest_is_refused_outside_its_inner_loop(name):
    body, where, message, hint = NEST_REFUSED[name]
    with pytest.raises(SpecError) as error:
        compile_spec(NEST.replace("BODY", body), "varsize_nest")
    text = str(error.value)
    assert f"varsize_nest.layer:{where}: error: {message}" in text
    assert hint in text


# Outside the inner loop of a loop holding a loop, a slice of an input whose size varies per outer step, of
# which nothing computed there varies in shape, derives (`autodiff/choice_slices.check_nest`, once the nest is
# planned): backward computes views of the inputs again at each outer step (`codegen/function_nest._leaf_views`).
# Refused before ("cannot derive through this slice of `z` yet").
NEST_OPEN = {
    "a prefix of an input summed in the outer body": """for j in range(size_at(z, 0)) {
            h = h * sum(z[:j + 1], dim = 0)
            for t in range(T) {
                h = tanh(h @ w) + x[t]
            }
        }
        return h""",
    "after the inner loop": """for j in range(size_at(z, 0)) {
            for t in range(T) {
                h = tanh(h @ w) + x[t]
            }
            h = h + sum(z[:j + 1], dim = 0)
        }
        return h""",
}


@pytest.mark.parametrize("steps,layers", NEST_STEPS)
@pytest.mark.parametrize("name", sorted(NEST_OPEN))
def test_a_slice_of_an_input_in_a_nests_outer_body_derives(name, steps, layers):
    ours, plain = function_and_plain(NEST.replace("BODY", NEST_OPEN[name]), "Nested", 4)
    inputs = _nest_inputs(steps, layers)
    torch.testing.assert_close(ours(*inputs), plain(*inputs))
    given = [t for t in inputs if t.requires_grad]
    wrt, plain_wrt = [*given, *ours.parameters()], [*given, *plain.parameters()]
    unused = {"allow_unused": True, "materialize_grads": True}
    grads = torch.autograd.grad(ours(*inputs).sin().sum(), wrt, create_graph=True, **unused)
    plain_grads = torch.autograd.grad(plain(*inputs).sin().sum(), plain_wrt, create_graph=True, **unused)
    for g, p in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(g, p)
    assert torch.autograd.gradcheck(ours, inputs)
    assert torch.autograd.gradgradcheck(ours, inputs)


@pytest.mark.parametrize("name", sorted(NEST_OPEN))
def test_a_slice_of_an_input_in_a_nests_outer_body_derives_running_the_forward_again(name):
    text = NEST.replace("BODY", NEST_OPEN[name]).replace("@function", '@function(save = "inputs")')
    ours, plain = function_and_plain(text, "Nested", 4)
    inputs = _nest_inputs(3, 2)
    torch.testing.assert_close(ours(*inputs), plain(*inputs))
    assert torch.autograd.gradcheck(ours, inputs)
    assert torch.autograd.gradgradcheck(ours, inputs)


@pytest.mark.parametrize("name", sorted(NEST_OPEN))
def test_a_slice_of_an_input_in_a_nests_outer_body_keeps_no_more_than_autograd(name):
    ours, plain = function_and_plain(NEST.replace("BODY", NEST_OPEN[name]), "Nested", 4)
    inputs = _nest_inputs(5, 3)

    def beyond_inputs(module: torch.nn.Module) -> SimpleNamespace:
        return SimpleNamespace(parameters=lambda: [*inputs, *module.parameters()])

    ours_bytes = saved_bytes(lambda: ours(*inputs), beyond_inputs(ours))  # type: ignore[arg-type]
    assert ours_bytes <= saved_bytes(lambda: plain(*inputs), beyond_inputs(plain))  # type: ignore[arg-type]
