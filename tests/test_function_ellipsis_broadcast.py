"""Inputs declared `[..., d]` whose leading dims differ and broadcast, under `@function`.

docs/language.md: `...` is "any number of dims" of that input, so `x: [..., d]` and `q: [..., d]` may be
[2, 3] and [3]; the plain module broadcasts them. The derivation tells each input's group apart
(`semantics/shapes.Group`): a gradient is summed back to an operand computed from one input where the
result has the group of several, before a formula that needs the operand's shape (a matmul's, an expand's)
reads it. Each case is compared with the plain module and checked by gradcheck and gradgradcheck (float64).
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from layerdsl.ir import nodes as N
from layerdsl.semantics.shapes import GROUP, broadcast, declared_shape, matmul
from layerdsl.syntax.parser import parse_file
from tests.support import compile_spec


def _spec(inputs: str, body: str, members: str = "") -> str:
    return f"""\
@function
layer Broadcast(d: int) {{
    param w: [d, d] = uniform(-0.5, 0.5){members}
    example(d = 3)
    forward({inputs}) {{
        return {body}
    }}
}}
"""


TWO = "x: [..., d], q: [..., d]"
THREE = "x: [..., d], q: [..., d], r: [..., d]"


def parse_shape(text: str) -> N.Shape:
    """The declared shape `text` as the parser reads it (an input's)."""
    spec = parse_file("shape.layer", f"layer L(d: int) {{\n    forward(x: {text}) {{\n        return x\n    }}\n}}\n")
    shape = spec.layers[0].forward.inputs[0].shape
    assert shape is not None
    return shape


def _pair(text: str, stem: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """`Broadcast` of `text` as written (`@function`) and plain, float64, one state."""
    modules = []
    for k, spec in enumerate([text, text.replace("@function\n", "")]):
        torch.manual_seed(0)
        modules.append(compile_spec(spec, f"{stem}_{k}")["Broadcast"](3).double())
    modules[1].load_state_dict(modules[0].state_dict())
    return modules[0], modules[1]


def _agrees(text: str, stem: str, shapes: tuple[tuple[int, ...], ...]) -> None:
    """The Function's gradients (inputs and parameters) are the plain module's, and pass gradcheck and
    gradgradcheck."""
    ours, plain = _pair(text, stem)
    torch.manual_seed(1)
    inputs = [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in shapes]
    params = {n: p.detach().clone().requires_grad_() for n, p in ours.named_parameters()}
    assert ours(*inputs).shape == plain(*inputs).shape
    torch.testing.assert_close(ours(*inputs), plain(*inputs))

    def grads(module: torch.nn.Module) -> tuple[torch.Tensor | None, ...]:
        out = functional_call(module, params, tuple(inputs))
        return torch.autograd.grad(out.sum(), [*inputs, *params.values()], allow_unused=True)

    for got, want in zip(grads(ours), grads(plain), strict=True):
        torch.testing.assert_close(got, want)

    def function(*args: torch.Tensor) -> torch.Tensor:
        n = len(inputs)
        return functional_call(ours, dict(zip(params, args[n:])), args[:n])

    every = (*inputs, *params.values())
    assert torch.autograd.gradcheck(function, every)
    assert torch.autograd.gradgradcheck(function, every)


# Two inputs whose `...` groups have different ranks (either may be the longer), and the same rank with
# size-1 dims on both sides.
@pytest.mark.parametrize(
    "shapes",
    [
        ((2, 3), (3,)),
        ((3,), (2, 3)),
        ((2, 1, 3), (4, 3)),
        ((5, 1, 3), (2, 3)),
        ((3,), (2, 2, 3)),
        ((2, 1, 3), (1, 4, 3)),
    ],
)
@pytest.mark.parametrize(
    "body",
    [
        "x @ w + q @ w",
        "q @ w - x @ w",
        "mean(x, dim = -1, keepdim = true) * sum(q, dim = -1, keepdim = true)",
        "x @ w + mean(q @ w, dim = -1, keepdim = true)",
    ],
)
def test_two_inputs_whose_groups_broadcast(body, shapes):
    _agrees(_spec(TWO, body), "two", shapes)


# Three inputs, each with its own `...`: the result has the group of all three, each operand's gradient is
# summed back to its own.
@pytest.mark.parametrize("shapes", [((2, 3), (3,), (4, 1, 3)), ((3,), (2, 3), (3,)), ((4, 1, 1, 3), (2, 3), (5, 1, 3))])
@pytest.mark.parametrize("body", ["x @ w + q @ w * r", "(x + q) @ w * sum(r @ w, dim = -1, keepdim = true)"])
def test_three_inputs_whose_groups_broadcast(body, shapes):
    _agrees(_spec(THREE, body), "three", shapes)


# A `...` input against a parameter of a fixed rank: the parameter's gradient is summed to [4, 1, d], the
# inputs' to theirs.
@pytest.mark.parametrize("shapes", [((2, 3), (3,)), ((3,), (5, 3)), ((4, 5, 3), (3,))])
def test_groups_against_a_parameter_of_fixed_rank(shapes):
    members = "\n    param p: [4, 1, d] = uniform(-0.5, 0.5)"
    _agrees(_spec(TWO, "x + q @ w + p", members), "fixed", shapes)


# A reduction over the broadcast result: every dim, or the last one.
@pytest.mark.parametrize("shapes", [((2, 3), (3,)), ((2, 1, 3), (4, 3))])
@pytest.mark.parametrize(
    "body", ["sum(x + q @ w)", "mean(x + q @ w)", "mean(x * sum(q, dim = -1, keepdim = true), dim = -1)"]
)
def test_a_reduction_over_the_broadcast_result(body, shapes):
    _agrees(_spec(TWO, body), "reduced", shapes)


# A matmul after the add: the add's gradient (g @ w.T) is the broadcast result's, summed back to each side.
@pytest.mark.parametrize("shapes", [((2, 3), (3,)), ((3,), (2, 3)), ((2, 1, 3), (4, 3))])
@pytest.mark.parametrize(
    "body",
    ["(x @ w + q @ w) @ w", "(x + q @ w) @ w + x @ w"],
)
def test_a_matmul_after_the_add(body, shapes):
    _agrees(_spec(TWO, body), "matmul_after", shapes)


# What one input's `...` gives stays equal to itself: a layer with one `...` input (a norm, an activation, a
# matmul) sums nothing back, where two inputs' groups are summed back to each.
ONE_INPUT = _spec(
    "x: [..., d]",
    "tanh(h @ w) * rsqrt(mean(h * h, dim = -1, keepdim = true) + 1e-5)",
).replace("        return", "        h = x - mean(x, dim = -1, keepdim = true)\n        return")


def test_one_input_group_gains_no_sum_to_size():
    source = compile_spec(ONE_INPUT, "one_input")["SOURCE"]
    assert "sum_to_size" not in source
    assert "sum_to_size" in compile_spec(_spec(TWO, "x + q @ w"), "two_source")["SOURCE"]


def test_each_inputs_group_is_its_own():
    declared = parse_shape("[..., d]")
    x, q = (declared_shape(declared, name, own_group=True) for name in ("x", "q"))
    assert x == declared_shape(declared, "x", own_group=True) and GROUP in x and x != q
    both = broadcast([x, q])
    assert both is not None and both != x and both != q and both == broadcast([q, x]) == broadcast([both, x])
    assert broadcast([x, ("d",)]) == x and matmul(x, ("d", "d")) == x
    assert declared_shape(declared, "x") == both  # the checker's group: equal to any


# A loop over a count the layer is given (planned by autodiff/loops.py, not unrolled): the carried value
# takes x's group, then the broadcast of x's and q's.
LOOPED = """\
@function
layer Broadcast(d: int, n: int = 2) {
    param w: [d, d] = uniform(-0.5, 0.5)
    example(d = 3)
    forward(x: [..., d], q: [..., d]) {
        h = x
        for i in range(n) {
            h = h + q @ w
        }
        return h @ w
    }
}
"""


@pytest.mark.parametrize("shapes", [((2, 3), (3,)), ((2, 1, 3), (4, 3))])
def test_a_loop_adds_an_input_of_other_leading_dims(shapes):
    _agrees(LOOPED, "looped", shapes)
