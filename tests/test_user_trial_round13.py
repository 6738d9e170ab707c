"""What a user's and an attacker's trial of round 13 found in `@function` layers: a buffer read after its
`update` passed a gradient back into what computed its new value (the plain module reads it from the
buffer, written under no_grad, so none flows); and an input returned as it is beside another output
crashed the Function when the backward saved that input ("An input that has been returned as-is as output
is being saved for backward")."""

from __future__ import annotations

import pytest
import torch

from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .function_agreement import double
from .support import compile_spec

# the running mean is updated from the batch, then read: the gradient must not flow through the update
UPDATE_THEN_READ = """
@function
layer CenterOnUpdated(n: int) {
    param w: [n] = normal(0, 1)
    buffer center: [n] = zeros
    example(n = 3)
    forward(x: [B, n]) -> [B, n] {
        if training {
            update center = mean(x * w, dim = 0)
        }
        return (x - center) * w
    }
}
"""

# `x` is returned unchanged and saved (grad_w reads it)
INPUT_RETURNED = """
@function
layer PassAndScale(n: int) {
    param w: [n] = normal(0, 1)
    example(n = 3)
    forward(x: [B, n]) -> ([B, n], [B, n]) {
        kept = x
        return kept, x * w
    }
}
"""


def function_and_plain(text: str, stem: str, name: str, **kwargs):
    ours = compile_spec(text, stem)[name]
    plain = compile_spec(text.replace("@function\n", ""), f"{stem}_plain")[name]
    torch.manual_seed(0)
    a, b = ours(**kwargs).double(), plain(**kwargs).double()
    b.load_state_dict(a.state_dict())
    return a, b


def gradients(module: torch.nn.Module, outputs, x: torch.Tensor, seeds: list[torch.Tensor]):
    """First derivatives of the outputs (seeded) with respect to x and the parameters, and the second
    derivatives of their squared sum."""
    first = torch.autograd.grad(outputs, [x, *module.parameters()], seeds, create_graph=True)
    second = torch.autograd.grad(sum((g * g).sum() for g in first), [x, *module.parameters()])
    return [*first, *second]


@pytest.mark.parametrize("training", [True, False])
def test_a_buffer_read_after_its_update_passes_no_gradient(training):
    a, b = function_and_plain(UPDATE_THEN_READ, "center_on_updated", "CenterOnUpdated", n=3)
    a.train(training)
    b.train(training)
    with torch.no_grad():
        a.center.fill_(0.25)
        b.center.fill_(0.25)
    x = double(5, 3)
    out, ref = a(x), b(x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(a.center, b.center)
    seed = torch.randn_like(ref)
    for got, want in zip(gradients(a, [out], x, [seed]), gradients(b, [ref], x, [seed])):
        torch.testing.assert_close(got, want)


def test_an_input_returned_beside_another_output_is_returned_as_a_view():
    a, b = function_and_plain(INPUT_RETURNED, "pass_and_scale", "PassAndScale", n=3)
    x = double(4, 3)
    out, ref = a(x), b(x)
    for got, want in zip(out, ref):
        torch.testing.assert_close(got, want)
    assert out[0] is not x  # a view: the Function's output, not the input itself
    seeds = [torch.randn_like(r) for r in ref]
    for got, want in zip(gradients(a, list(out), x, seeds), gradients(b, list(ref), x, seeds)):
        torch.testing.assert_close(got, want)
    names = [n for n, _ in a.named_parameters()]

    def run(x, w):
        return torch.func.functional_call(a, dict(zip(names, [w])), (x,))

    w = a.w.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(run, (x, w))
    assert torch.autograd.gradgradcheck(run, (x, w))


# The only parameters are those of a held optional sub; `Shift` promotes (`+`), `Project` does not (`@`)
HELD_OPTIONAL = """
layer Shift(d: int) {
    param b: [d] = uniform(-0.5, 0.5)
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        return x + b
    }
}

layer Project(d: int) {
    param w: [d, d]
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        return x @ w
    }
}

@function
layer MaybeShift(pre: Shift? = none) {
    sub pre = pre
    example(D = 3)
    forward(x: [B, D]) -> [B, D] {
        if pre != none {
            return pre(x) * 2.0
        }
        return x * 2.0
    }
}

@function
layer MaybeProject(pre: Project? = none) {
    sub pre = pre
    example(D = 3)
    forward(x: [B, D]) -> [B, D] {
        if pre != none {
            return tanh(pre(x))
        }
        return tanh(x)
    }
}
"""


@pytest.fixture(scope="module")
def held_optional():
    return compile_spec(HELD_OPTIONAL, "held_optional"), compile_spec(
        HELD_OPTIONAL.replace("@function\n", ""), "held_optional_plain"
    )


def test_a_held_optional_sub_checks_the_device_against_its_parameter(held_optional):
    ns, _ = held_optional
    x = torch.empty(2, 3, device="meta")
    for layer in (ns["MaybeShift"](ns["Shift"](3)), ns["MaybeProject"](ns["Project"](3))):
        with pytest.raises(ValueError, match=r"Maybe\w+: input 'x' is on meta but the parameters are on cpu"):
            layer(x)


def test_a_held_optional_sub_checks_the_dtype_where_its_forward_does_not_promote(held_optional):
    ns, plain = held_optional
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(
        TypeError, match=r"MaybeProject: input 'x' is torch.float64 but the parameters are torch.float32"
    ):
        ns["MaybeProject"](ns["Project"](3))(x)
    with pytest.raises(TypeError, match=r"Project: input 'x' is torch.float64"):  # as the plain module's sub does
        plain["MaybeProject"](plain["Project"](3))(x)
    torch.manual_seed(0)
    shift = ns["Shift"](3)
    plain_shift = plain["Shift"](3)
    plain_shift.load_state_dict(shift.state_dict())
    got, want = ns["MaybeShift"](shift)(x), plain["MaybeShift"](plain_shift)(x)  # `+` promotes, in both
    assert got.dtype == want.dtype == torch.float64
    torch.testing.assert_close(got, want)


def test_without_the_held_sub_any_float_input_runs(held_optional):
    ns, _ = held_optional
    for name in ("MaybeShift", "MaybeProject"):
        x = torch.randn(2, 3, dtype=torch.float64)
        assert ns[name]()(x).dtype == torch.float64
        assert ns[name]()(torch.empty(2, 3, device="meta")).device.type == "meta"


@pytest.mark.parametrize(
    "written, generated",
    [
        ("(g * u) @ w", "(g * u) @ w"),
        ("g * (u @ w)", "g * (u @ w)"),
        ("(g @ w) / 2.0", "(g @ w) / 2.0"),
        ("g * u * 2.0", "g * u * 2.0"),
    ],
)
def test_a_product_beside_a_matmul_is_parenthesised(written, generated):
    """Python binds `*` and `@` alike, left to right: `g * u @ w` is `(g * u) @ w`, which a reader of the
    generated code should not have to know."""
    text = f"""
layer Mix(d: int) {{
    param w: [d, d]
    example(d = 3)
    forward(g: [B, d], u: [B, d]) -> [B, d] {{
        return {written}
    }}
}}
"""
    spec = parse_file("mix.layer", text)
    code = emit_file(spec, check_program([spec]), "mix.layer", {})
    assert f"    return {generated}  # mix.layer:6\n" in code  # the functional form's


@pytest.mark.parametrize(
    "sliced, declared", [("x[:, -3:]", "[B, 3]"), ("x[:, 3:]", "[B, n - 3]"), ("x[:, :-3]", "[B, n - 3]")]
)
def test_a_slice_whose_bound_may_pass_a_short_dim_is_checked_at_run_time(sliced, declared):
    """torch clamps a slice's bounds to the dim: `x[:, -3:]` of a dim of 2 keeps 2, not 3. The shape pass
    took such a slice as proven (no run-time check), so a short input came out of the declared shape."""
    text = f"""
layer Tail(n: int) {{
    example(n = 4)
    forward(x: [B, n]) -> {declared} {{
        return {sliced}
    }}
}}
"""
    layer = compile_spec(text, "tail")["Tail"]
    assert layer(4)(torch.randn(2, 4)).shape[1] in (3, 1)
    with pytest.raises(ValueError, match=r"Tail: the output has size \d at dim 1"):
        layer(2)(torch.randn(2, 2))


def test_slices_that_fit_every_dim_stay_proven():
    text = """
layer Inner(n: int) {
    example(n = 4)
    forward(x: [B, n]) -> [B, n - 1] {
        return x[:, 1:] + x[:, :-1] + x[:, -1:]
    }
}
"""
    code = emit_file(
        parse_file("inner.layer", text), check_program([parse_file("inner.layer", text)]), "inner.layer", {}
    )
    assert "the output has size" not in code
