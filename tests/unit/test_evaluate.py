"""The one evaluator of constant expressions (dims, lets, conditions), shared by run-time checks and tools."""

from __future__ import annotations

import math
import time

import pytest

from layerdsl.ir import nodes as N
from layerdsl.semantics.evaluate import NotConstant, evaluate, example_values
from layerdsl.syntax import parse_expr
from layerdsl.syntax.parser import parse_file
from layerdsl.testing.layer_checks import shape_of

SPEC = """\
layer Sized(n: int, heads: int = 2, on: bool = false) {
    let width = n * heads
    let half = width // 4
    let scale = 1 / sqrt(width)
    let big = width > 10 and not on
    let missing = n * tensor_size
    example(n = 6)

    forward(x: [B, width]) -> [B, half + 1, 2 ** heads] {
        return x
    }
}
"""


@pytest.fixture(scope="module")
def layer() -> N.Layer:
    return parse_file("sized.layer", SPEC).layers[0]


def test_example_values_take_defaults_then_examples_then_lets(layer):
    env = example_values(layer)
    assert env == {
        "n": 6,
        "heads": 2,
        "on": False,
        "width": 12,
        "half": 3,
        "scale": pytest.approx(1 / math.sqrt(12)),
        "big": True,
    }  # `missing` needs a value nobody gives


def test_dims_of_a_declared_shape(layer):
    env = {**example_values(layer), "B": 5, "...": 4}
    assert shape_of(layer.forward.outputs[0], env, (4,)) == (5, 4, 4)
    assert shape_of(layer.forward.inputs[0].shape, env, (4,)) == (5, 12)


def test_constants_and_scalar_operations(layer):
    let_value = {let.name: let.value for let in layer.lets}
    assert evaluate(let_value["scale"], {"width": 4}) == 0.5
    assert evaluate(N.Name(N.NOWHERE, "pi"), {}) == math.pi


@pytest.mark.parametrize(
    "env, why",
    [({"n": 1}, "no value for 'tensor_size'"), ({}, "no value for 'n'")],
)
def test_unknown_names_are_not_constant(layer, env, why):
    missing = next(let.value for let in layer.lets if let.name == "missing")
    with pytest.raises(NotConstant, match=why):
        evaluate(missing, env)


def test_division_by_zero_is_not_constant(layer):
    half = next(let.value for let in layer.lets if let.name == "half")
    with pytest.raises(NotConstant, match="division by zero"):
        evaluate(N.BinOp(N.NOWHERE, "//", N.Num(N.NOWHERE, 1, "1"), half), {"width": 3})


def test_tensor_operations_are_not_constant():
    x = N.Name(N.NOWHERE, "x")
    with pytest.raises(NotConstant):
        evaluate(N.Call(N.NOWHERE, "relu", N.NOWHERE, [x], []), {"x": 1.0})


@pytest.mark.parametrize("text", ["2 ** 99999999", "(10 ** 300) * (10 ** 300) * (10 ** 300) * (10 ** 300)"])
def test_a_huge_integer_is_refused_before_it_is_computed(text):
    start = time.process_time()
    with pytest.raises(NotConstant, match="too large"):
        evaluate(parse_expr(text), {})
    assert time.process_time() - start < 0.5


def test_ordinary_powers_still_compute():
    assert evaluate(parse_expr("2 ** 10"), {}) == 1024
    assert evaluate(parse_expr("2.5 ** 2"), {}) == 6.25
    assert evaluate(parse_expr("(-3) ** 3"), {}) == -27


SEEDED = """\
layer Proj(n: int, m: int, bias: bool = true) {
    param w: [n, m] = ones

    example(n = [5, 1], m = 3)
    example(m = 1, bias = false)
    example(n = 5)

    forward(x: [B, n]) -> [B, m] {
        return x @ w
    }
}
"""


def _seeds(text: str) -> list[dict]:
    from layerdsl.ir.printer import spec_text
    from layerdsl.semantics.evaluate import example_seeds

    layer = parse_file("seeded.layer", text).layers[0]
    return [{k: spec_text(v) for k, v in seed.items()} for seed in example_seeds(layer)]


def test_each_example_line_and_each_listed_value_is_an_example():
    """A later line takes what it does not give from the first (lists included); a repeat is dropped
    (`example(n = 5)` is the first line's first example again)."""
    assert _seeds(SEEDED) == [
        {"n": "5", "m": "3"},
        {"n": "1", "m": "3"},
        {"n": "5", "m": "1", "bias": "false"},
        {"n": "1", "m": "1", "bias": "false"},
    ]


def test_example_values_are_the_first_examples_unless_told():
    from layerdsl.semantics.evaluate import example_seeds

    layer = parse_file("seeded.layer", SEEDED).layers[0]
    seeds = example_seeds(layer)
    assert example_values(layer) == {"n": 5, "m": 3, "bias": True}
    assert example_values(layer, seeds[3]) == {"n": 1, "m": 1, "bias": False}


def test_a_layer_without_an_example_has_one_empty_example():
    assert _seeds("layer Id() {\n    forward(x) {\n        return x\n    }\n}\n") == [{}]


def test_a_list_given_to_an_ints_argument_is_its_value_and_a_list_of_lists_its_examples():
    text = (
        "layer Pool(k: ints, j: ints) {{\n    example(k = {k}, j = 2)\n"
        "    forward(x: [B, C, L]) {{\n        return max_pool1d(x, k)\n    }}\n}}\n"
    )
    assert _seeds(text.format(k="[2, 3]")) == [{"k": "[2, 3]", "j": "2"}]
    assert _seeds(text.format(k="[[2, 3], 4]")) == [{"k": "[2, 3]", "j": "2"}, {"k": "4", "j": "2"}]
