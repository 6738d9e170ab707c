"""`@function` layers whose subs hold or copy a layer argument (`sub layers = [copy(block) for i in
range(n)]`, `sub norm = norm` with `norm: LayerNorm? = none`), as torch's TransformerEncoder: the copied
layer's spec is inlined with its arguments as run-time values that the module reads from the first copy
(`self.layers[0].act`), an `if` on one a branch of the Function, an optional member given when the copy
has it. Against the plain module (the spec without `@function`): outputs, input and parameter gradients,
gradcheck and gradgradcheck in float64, over lengths 0, 1, 3 and the copied layer's configurations."""

from __future__ import annotations

import functools

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .function_agreement import compare_with_plain
from .support import compile_spec

BLOCK = """
layer Block(d: int, hidden: int, act: str = "relu", bias: bool = true) {
    param w1: [hidden, d]
    param w2: [d, hidden]
    param b1: [hidden] = uniform(-0.5, 0.5) if bias
    example(d = 4, hidden = 8)
    forward(x: [..., d]) -> [..., d] {
        h = x @ transpose(w1, 0, 1) + b1
        if act == "relu" {
            h = relu(h)
        } else {
            h = tanh(h)
        }
        return x + h @ transpose(w2, 0, 1)
    }
}

layer LayerNorm(normalized_shape: ints, eps: float = 1e-5, elementwise_affine: bool = true, bias: bool = true) {
    param weight: normalized_shape = uniform(0.5, 1.5) if elementwise_affine
    param bias: normalized_shape = uniform(-0.5, 0.5) if elementwise_affine and bias
    example(normalized_shape = 4, N = 4)
    forward(input: [..., N]) -> [..., N] {
        return layer_norm(input, normalized_shape, weight, bias, eps)
    }
}
"""

STACK = """
@function
layer Stack(block: Block, n: int, norm: LayerNorm? = none) {
    sub layers = [copy(block) for i in range(n)]
    sub norm = norm
    example(block = Block(4, 8), n = 2, D = 4)
    forward(x: [..., D]) -> [..., D] {
        h = x
        for b in layers {
            h = b(h)
        }
        if norm != none {
            h = norm(h)
        }
        return h
    }
}
"""

# A copied layer with a sub of its own, and an argument that sizes a member
NESTED = """
layer Scaled(d: int, k: int = 2, bias: bool = true) {
    sub inner = Block(d, 2 * k, act = "tanh", bias = bias)
    param gain: [d] = uniform(0.5, 1.5)
    example(d = 4)
    forward(x: [..., d]) -> [..., d] {
        return inner(x) * gain
    }
}

@function
layer ScaledStack(template: Scaled, depth: int) {
    sub copies = [copy(template) for i in range(depth)]
    example(template = Scaled(4), depth = 2, D = 4)
    forward(x: [B, D]) -> [B, D] {
        h = x
        for c in copies {
            h = c(h) + h
        }
        return h
    }
}
"""


@functools.cache
def compiled(text: str, stem: str) -> dict:
    return compile_spec(text, stem)


# A copied layer taking a callable argument: the module runs the plain forward when a copy holds a callable
CALLABLE = """
layer Act(d: int, activation: fn | "relu" | "tanh" = "relu") {
    param w: [d, d]
    example(d = 4)
    forward(x: [B, d]) -> [B, d] {
        h = x @ w
        if activation == "relu" {
            h = relu(h)
        } else if activation == "tanh" {
            h = tanh(h)
        } else {
            h = activation(h)
        }
        return h + x
    }
}

@function
layer ActStack(unit: Act, n: int) {
    sub units = [copy(unit) for i in range(n)]
    example(unit = Act(4), n = 2, D = 4)
    forward(x: [B, D]) -> [B, D] {
        h = x
        for u in units {
            h = u(h)
        }
        return h
    }
}
"""


# A sub whose layer copies a layer argument, given here as a construction: its arguments are known
BUILT = """
@function
layer Built(d: int, depth: int, act: str = "relu", bias: bool = true) {
    sub stack = Stack(Block(d, 5, act = act, bias = bias), depth, LayerNorm(d, bias = bias))
    sub bare = Stack(Block(d, 3), 1)
    example(d = 4, depth = 2)
    forward(x: [B, d]) -> [B, d] {
        return bare(stack(x))
    }
}
"""


def pair(text: str, stem: str, name: str, build):
    """The @function module and the plain one, built by `build(namespace)` with the same parameters."""
    ours = compiled(text, stem)
    plain = compiled(text.replace("@function\n", ""), f"{stem}_plain")
    torch.manual_seed(0)
    a = build(ours).double()
    torch.manual_seed(0)
    b = build(plain).double()
    b.load_state_dict(a.state_dict())
    assert type(a).__name__ == name and f"{name}Function" in ours and f"{name}Function" not in plain
    return a, b


NORMS = {
    "none": None,
    "affine": {},
    "no_bias": {"bias": False},
    "no_affine": {"elementwise_affine": False},
}


@pytest.mark.parametrize("n", [0, 1, 3])
@pytest.mark.parametrize(("act", "bias"), [("relu", True), ("tanh", False)])  # each branch, each member choice
@pytest.mark.parametrize("norm", list(NORMS))
def test_copies_of_a_layer_argument_derive_with_its_arguments_read_at_run_time(n, act, bias, norm):
    def build(ns):
        given = None if NORMS[norm] is None else ns["LayerNorm"](4, eps=1e-3, **NORMS[norm])
        return ns["Stack"](ns["Block"](4, 5, act=act, bias=bias), n, given)

    a, b = pair(BLOCK + STACK, "stack", "Stack", build)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


@pytest.mark.parametrize("depth", [0, 1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_a_copied_layer_with_a_sub_of_its_own_derives(depth, bias):
    def build(ns):
        return ns["ScaledStack"](ns["Scaled"](4, k=1, bias=bias), depth)

    a, b = pair(BLOCK + NESTED, "scaled", "ScaledStack", build)
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


@pytest.mark.parametrize("n", [0, 2])
@pytest.mark.parametrize("activation", ["relu", "tanh", "callable"])
def test_a_copied_layers_callable_argument_runs_the_plain_forward(n, activation):
    given = torch.nn.functional.softplus if activation == "callable" else activation
    a, b = pair(CALLABLE, "act", "ActStack", lambda ns: ns["ActStack"](ns["Act"](4, given), n))
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


@pytest.mark.parametrize("depth", [0, 2])
@pytest.mark.parametrize(("act", "bias"), [("relu", True), ("tanh", False)])
def test_a_sub_given_a_construction_for_the_layer_argument_derives_with_its_arguments_known(depth, act, bias):
    text = BLOCK + STACK.replace("@function\n", "") + BUILT
    a, b = pair(text, "built", "Built", lambda ns: ns["Built"](4, depth, act=act, bias=bias))
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


def test_the_module_reads_the_copied_layers_arguments_from_its_first_copy():
    ns = compiled(BLOCK + STACK, "stack")
    source = ns["Stack"].forward.__code__.co_names
    assert "layers" in source and "norm" in source
    torch.manual_seed(0)
    # every copy has the arguments of the layer given; a change after construction is seen, as the
    # plain module's copies see it when called
    module = ns["Stack"](ns["Block"](4, 5, act="relu"), 2).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    relu_out = module(x)
    for layer in module.layers:
        layer.act = "tanh"
    plain = compiled((BLOCK + STACK).replace("@function\n", ""), "stack_plain")
    reference = plain["Stack"](plain["Block"](4, 5), 2).double()
    reference.load_state_dict(module.state_dict())
    for layer in reference.layers:
        layer.act = "tanh"
    torch.testing.assert_close(module(x), reference(x))
    assert not torch.allclose(module(x), relu_out)


def plan_problems(text: str) -> list[str]:
    spec = parse_file("held.layer", text)
    check_program([spec])
    _, problems = plan_backwards([spec])
    return [f"{p.span.line}:{p.span.col}: {p.message}" for p in problems]


def test_a_copied_layer_holding_a_layer_argument_of_its_own_is_refused_at_the_sub():
    text = BLOCK + """
layer Holder(b: Block? = none) {
    sub inner = b
    example(D = 4)
    forward(x: [..., D]) -> [..., D] {
        if inner != none {
            return inner(x)
        }
        return x
    }
}

@function
layer Outer(h: Holder, n: int) {
    sub items = [copy(h) for i in range(n)]
    example(h = Holder(), n = 2, D = 4)
    forward(x: [..., D]) -> [..., D] {
        y = x
        for item in items {
            y = item(y)
        }
        return y
    }
}
"""
    problems = plan_problems(text)
    assert len(problems) == 1
    line = text.splitlines().index("    sub items = [copy(h) for i in range(n)]") + 1
    assert problems[0].startswith(f"{line}:9: cannot inline the sub 'items' under @function: it copies the layer")
    assert "whose layer Holder holds a layer argument of its own" in problems[0]
