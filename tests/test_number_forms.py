"""A `scalar_template` specialised on constant operands (`language/number_forms.py`) computes what the whole
template computes, for every operand constant or not, at the corners of every row's template (zeros of
both signs, the smallest and largest floats, whole and fractional numbers of both signs, inf, nan, ints),
and the folded text is shorter wherever a constant decides a condition."""

from __future__ import annotations

import functools
import itertools
import math

import pytest

from layerdsl.language.number_forms import specialised
from layerdsl.language.ops import OPS, filled

CORNERS = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 2.5, -3.0, 1 / 3, 3.0, 401.0, 1e200, -1e200]
CORNERS += [5e-324, -5e-324, math.inf, -math.inf, math.nan, 0, 1, 2, -1, 3]
TEMPLATED = [op for op in OPS.values() if op.scalar_template is not None]


@functools.cache
def _function(template: str, params: tuple[str, ...]):
    form = filled(template, lambda name, tight: name)
    return eval(f"lambda {', '.join(params)}: {form}", {"math": math, "abs": abs, "max": max, "min": min})


def _value(template: str, params: list[str], values: tuple) -> object:
    """`template` evaluated at `values`: its value, or the type of what it raised."""
    try:
        return _function(template, tuple(params))(*values)
    except ArithmeticError as e:
        return type(e)


def _same(got: object, want: object) -> bool:
    if isinstance(got, float) and isinstance(want, float):
        return (got == want and math.copysign(1, got) == math.copysign(1, want)) or got != got and want != want
    return got == want and type(got) is type(want)


@pytest.mark.parametrize("op", TEMPLATED, ids=[op.name for op in TEMPLATED])
def test_a_specialised_template_computes_the_templates_value(op):
    params = [p.name for p in op.params]
    assert op.scalar_template is not None
    for constant in itertools.chain.from_iterable(itertools.combinations(params, k) for k in range(1, len(params) + 1)):
        for values in itertools.product(CORNERS, repeat=len(params)):
            given = dict(zip(params, values))
            form = specialised(op.scalar_template, {name: given[name] for name in constant})
            got, want = _value(form, params, values), _value(op.scalar_template, params, values)
            assert _same(got, want), f"{op.name}{values}, constant {constant}: {form} gives {got}, not {want}"


@pytest.mark.parametrize(
    ("name", "constants", "form"),
    [
        ("pow", {"exponent": 0.5}, "math.nan if {input} < 0 and math.isfinite({input}) else {input^} ** {exponent^}"),
        (
            "pow",
            {"exponent": -1},
            "{input^} ** {exponent^} if {input} != 0 and not {exponent^} * "
            "math.log(abs({input})) > 709.782712893384 else math.copysign(math.inf, {input})",
        ),
        ("pow", {"input": 0.0, "exponent": -1}, "math.inf"),
        ("div", {"other": 0.0}, "{input^} * math.inf"),
        ("div", {"other": -2.0}, "{input^} / {other^}"),
        ("maximum", {"other": 1.0}, "max({input}, {other}) if {input} == {input} else math.nan"),
        ("log", {"input": -0.0}, "-math.inf"),
    ],
)
def test_the_conditions_a_constant_decides_are_folded(name, constants, form):
    template = OPS[name].scalar_template
    assert template is not None
    assert specialised(template, constants) == form
    assert specialised(template, {}) is template
