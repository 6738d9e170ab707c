"""Operations on plain numbers (a `let`, a condition, a dim) give torch's values where Python's `math` raises:
nan out of the domain (`sqrt(-1.0)`), -inf at a pole (`log1p(-1.0)`), inf past the largest float
(`exp(1000.0)`), and floor, ceil and round keep inf and nan. The module, the `@function` form and the checker's
static evaluation (`semantics/evaluate.py`) agree; an int operand (a count or a size) is written by its plain
`math` spelling, as torch's own modules write `1 / math.sqrt(fan_in)`."""

from __future__ import annotations

import math

import pytest
import torch

from layerdsl.semantics.checker import check_program
from layerdsl.semantics.evaluate import example_values
from layerdsl.syntax.parser import parse_file
from tests.support import compile_spec, function_and_plain

CORNERS = {
    "sqrt": [-1.0, -0.0, 4.0, -math.inf, math.nan],
    "log": [0.0, -1.0, math.inf],
    "log1p": [-2.0, -1.0, 0.5],
    "exp": [1000.0, 709.782712893384, 709.7827128933841, -math.inf, math.nan],
    "expm1": [1000.0, -1000.0],
    "sin": [math.inf, -math.inf, 1.0],
    "cos": [math.inf, 1.0],
    "tan": [-math.inf, 1.0],
    "tanh": [math.inf, math.nan],
    "erf": [-math.inf],
    "abs": [-math.inf],
    "floor": [math.inf, -math.inf, math.nan, 2.5],
    "ceil": [math.inf, math.nan, -2.5],
    "round": [math.inf, math.nan, 2.5],
}
CASES = [(op, a) for op, values in CORNERS.items() for a in values]
EXAMPLES = [(op, a) for op, a in CASES if not math.isnan(a)]  # an example cannot give nan

LAYER = """\
@function
layer Number(a: float) {
    example(a = EXAMPLE)
    let s = OP(a)
    forward(x: [n]) -> [n] {
        if OP(a) > 0 {
            return x * s
        }
        return x * s - 1.0
    }
}
"""


def _spec(op: str, a: float) -> str:
    example = repr(a).replace("nan", "2.0")  # no nan literal: the example differs, the value given does not
    return LAYER.replace("OP", op).replace("EXAMPLE", example)


def _torch_value(op: str, a: float) -> float:
    return getattr(torch, op)(torch.tensor(a, dtype=torch.float64)).item()


@pytest.mark.parametrize(("op", "a"), CASES, ids=[f"{op}({a})" for op, a in CASES])
def test_the_module_and_the_function_give_torchs_value(op, a):
    ours, plain = function_and_plain(_spec(op, a), "Number", a)
    want = _torch_value(op, a)
    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    expected = x * want if want > 0 else x * want - 1.0
    for layer in (plain, ours):
        torch.testing.assert_close(layer(x), expected, equal_nan=True)


@pytest.mark.parametrize(("op", "a"), EXAMPLES, ids=[f"{op}({a})" for op, a in EXAMPLES])
def test_the_checker_computes_torchs_value(op, a):
    spec = parse_file("number.layer", _spec(op, a))
    check_program([spec])
    got = example_values(spec.layers[0])["s"]
    want = _torch_value(op, a)
    assert got == want or (math.isnan(got) and math.isnan(want))


SIZES = """\
layer Scaled(n: int, m: int) {
    example(n = 4, m = 3)
    let scale = 1 / sqrt(n * m)
    let offset = sqrt(2 / pi) + floor(n / m)
    forward(x: [b, n]) -> [b, n] {
        return x * scale + offset / sqrt(size_at(x, 0))
    }
}
"""


def test_ints_and_constants_are_written_as_math_writes_them():
    """Counts and sizes are never negative: no guard around their square root (nor around a constant's)."""
    source = compile_spec(SIZES, "scaled")["SOURCE"]
    assert "1 / math.sqrt(n * m)" in source
    assert "math.sqrt(2 / math.pi) + math.floor(n / m)" in source
    assert "math.sqrt(x.size(0))" in source
    assert " else math.nan" not in source


def test_a_negative_count_raises_in_both_forms():
    """An int is a count or a size: a negative one under sqrt raises math's ValueError in both forms (as
    `nn.Linear(-3, 2)` raises); the checker, given that example, computes no value (and does not crash)."""
    spec = SIZES.replace("example(n = 4, m = 3)", "example(n = 4, m = -3)")
    parsed = parse_file("scaled.layer", spec)
    check_program([parsed])
    assert "scale" not in example_values(parsed.layers[0])
    for text in (spec, "@function\n" + spec):
        with pytest.raises(ValueError, match="math domain error"):
            compile_spec(text, "scaled")["Scaled"](4, -3)
