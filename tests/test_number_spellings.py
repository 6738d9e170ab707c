"""Operations on plain numbers (a `let`, a condition, a dim) give torch's values where Python's `math` raises:
nan out of the domain (`sqrt(-1.0)`), -inf at a pole (`log1p(-1.0)`), inf past the largest float
(`exp(1000.0)`), and floor, ceil and round keep inf and nan. The module, the `@function` form and the checker's
static evaluation (`semantics/evaluate.py`) agree; an int operand (a count or a size) is written by its plain
`math` spelling, as torch's own modules write `1 / math.sqrt(fan_in)`. The operators on two numbers and
maximum/minimum likewise (inf and nan by a zero, nan for a complex power, nan passing max and min), floor and
ceil of a float give an int, and a let that raises names its spec line."""

from __future__ import annotations

import math
import re

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


# -- the operators and maximum/minimum on two numbers: torch's float64 values where Python raises, gives a complex
# number or drops a nan
PAIRS = {
    "a / b": [(1.0, 0.0), (-1.0, 0.0), (0.0, 0.0), (1.0, -0.0), (math.inf, 0.0), (math.nan, 0.0), (3.0, 2.0)],
    "a // b": [(1.0, 0.0), (-2.5, 0.0), (0.0, 0.0), (7.0, 2.0)],
    "a % b": [(1.0, 0.0), (-2.5, 0.0), (7.0, -2.0)],
    "a ** b": [
        (-8.0, 0.5),
        (-8.0, 1 / 3),
        (0.0, -1.0),
        (-0.0, -1.0),
        (-0.0, -2.0),
        (10.0, 400.0),
        (-10.0, 401.0),
        (1e-308, -2.5),
        (-8.0, 3.0),
        (4.0, 0.5),
        (-math.inf, 2.5),
        (0.0, math.nan),
        (-1.0, math.inf),
    ],
    "maximum(a, b)": [(1.0, math.nan), (math.nan, 1.0), (2.0, 3.0), (-math.inf, math.nan)],
    "minimum(a, b)": [(1.0, math.nan), (math.nan, 1.0), (2.0, 3.0)],
}
PAIR_CASES = [(expr, a, b) for expr, values in PAIRS.items() for a, b in values]
PAIR_IDS = [re.sub(r"\b[ab]\b", lambda m, v={"a": a, "b": b}: repr(v[m.group()]), e) for e, a, b in PAIR_CASES]
TORCH_PAIRS = {
    "a / b": torch.div,
    "a // b": torch.floor_divide,
    "a % b": torch.remainder,
    "a ** b": torch.pow,
    "maximum(a, b)": torch.maximum,
    "minimum(a, b)": torch.minimum,
}

PAIR_LAYER = """\
@function
layer Pair(a: float, b: float) {
    example(a = EXAMPLE_A, b = EXAMPLE_B)
    let s = EXPR
    forward(x: [n]) -> [n] {
        if EXPR > 0 {
            return x * s
        }
        return x * s - 1.0
    }
}
"""


def _example(v: float) -> str:
    return "2.0" if math.isnan(v) else "-0.0" if str(v) == "-0.0" else repr(v)


def _pair_spec(expr: str, a: float, b: float) -> str:
    return (
        PAIR_LAYER.replace("EXPR", expr)
        .replace("EXAMPLE_A", _example(a))
        .replace("EXAMPLE_B", _example(b))
        .replace("maximum(a, b) > 0", "maximum(a, b) + 0.0 > 0")  # a comparison of a template's value
    )


def _torch_pair(expr: str, a: float, b: float) -> float:
    return TORCH_PAIRS[expr](torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)).item()


def _same(got: float, want: float) -> bool:
    return isinstance(got, (int, float)) and (got == want or (math.isnan(got) and math.isnan(want)))


@pytest.mark.parametrize(("expr", "a", "b"), PAIR_CASES, ids=PAIR_IDS)
def test_two_numbers_give_torchs_value_in_the_module_and_the_function(expr, a, b):
    ours, plain = function_and_plain(_pair_spec(expr, a, b), "Pair", a, b)
    want = _torch_pair(expr, a, b)
    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    expected = x * want if want > 0 else x * want - 1.0
    for layer in (plain, ours):
        assert _same(layer.s, want)
        torch.testing.assert_close(layer(x), expected, equal_nan=True)


@pytest.mark.parametrize(
    ("expr", "a", "b"),
    [c for c in PAIR_CASES if not math.isnan(c[1]) and not math.isnan(c[2])],
    ids=[i for i, c in zip(PAIR_IDS, PAIR_CASES) if not math.isnan(c[1]) and not math.isnan(c[2])],
)
def test_the_checker_computes_torchs_value_of_two_numbers(expr, a, b):
    spec = parse_file("pair.layer", _pair_spec(expr, a, b))
    check_program([spec])
    assert _same(example_values(spec.layers[0])["s"], _torch_pair(expr, a, b))


# constants: the checker computes them (the example gives nothing), the generated code writes the template
CONSTANTS = {
    "1.0 / 0": lambda: torch.tensor(1.0, dtype=torch.float64) / 0,
    "0.0 / 0": lambda: torch.tensor(0.0, dtype=torch.float64) / 0,
    "-1.0 // 0": lambda: torch.floor_divide(torch.tensor(-1.0, dtype=torch.float64), 0),
    "1.0 % 0": lambda: torch.remainder(torch.tensor(1.0, dtype=torch.float64), 0),
    "(-8.0) ** 0.5": lambda: torch.tensor(-8.0, dtype=torch.float64) ** 0.5,
    "0.0 ** -1": lambda: torch.tensor(0.0, dtype=torch.float64) ** -1,
    "maximum(1.0, inf - inf)": lambda: torch.maximum(torch.tensor(1.0).double(), torch.tensor(math.nan).double()),
    "minimum(1.0, inf - inf)": lambda: torch.minimum(torch.tensor(1.0).double(), torch.tensor(math.nan).double()),
}

CONSTANT_LAYER = """\
@function
layer Constant(a: float) {
    example(a = 1.0)
    let s = EXPR
    forward(x: [n]) -> [n] {
        if s == s {
            return x * a + s
        }
        return x * a + 7.0
    }
}
"""


@pytest.mark.parametrize("expr", CONSTANTS)
def test_constants_give_torchs_value_in_the_module_the_function_and_the_checker(expr):
    text = CONSTANT_LAYER.replace("EXPR", expr)
    want = CONSTANTS[expr]().item()
    spec = parse_file("constant.layer", text)
    check_program([spec])
    assert _same(example_values(spec.layers[0])["s"], want)
    ours, plain = function_and_plain(text, "Constant", 1.0)
    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    expected = x + (want if want == want else 7.0)
    for layer in (plain, ours):
        assert _same(layer.s, want)
        torch.testing.assert_close(layer(x), expected)


COUNTS = """\
layer Counts(n: int, m: int, a: float) {
    example(n = 4, m = 3, a = 2.0)
    let per = n // m
    let rest = n % m
    let inverse = 1 / n
    let root = n ** 0.5
    let big = maximum(n, m)
    let scaled = a / 2 + a ** 2 + maximum(a, 1.0)
    forward(x: [b, n]) -> [b, n] {
        return x * (per + rest + inverse + root + big + scaled)
    }
}
"""


def test_counts_and_constants_are_written_with_pythons_operators():
    """A count (an int) dividing or raised to a power, ints divided, a float divided by a constant and
    maximum of ints keep Python's operator: no template where the operands stay in the domain (a float's
    power may overflow, where Python raises)."""
    source = compile_spec(COUNTS, "counts")["SOURCE"]
    for plain in ("n // m", "n % m", "1 / n", "n**0.5", "max(n, m)", "a / 2 + "):
        assert plain in source.replace("n ** 0.5", "n**0.5"), plain
    assert "n * math.copysign" not in source and "n if n" not in source
    assert "max(a, 1.0) if a == a" in source  # a float argument may be nan
    assert "math.log(abs(a)) > 709.782712893384" in source  # a float's square may pass the largest float


# -- floor and ceil of a float give an int (docs/language.md): a size, a count of steps
ROWS = """\
@function
layer Rows(a: float) {
    example(a = 2.5)
    let k = floor(a)
    let c = ceil(a)
    forward(x: [n]) -> [k, n] {
        y = unsqueeze(x, 0)
        for i in range(c - 1) {
            y = y * 2.0
        }
        return expand(y, [k, n])
    }
}
"""


def test_floor_and_ceil_of_a_float_are_ints_in_the_module_the_function_and_the_checker():
    spec = parse_file("rows.layer", ROWS)
    check_program([spec])
    values = example_values(spec.layers[0])
    assert (values["k"], values["c"]) == (2, 3) and type(values["k"]) is int and type(values["c"]) is int
    ours, plain = function_and_plain(ROWS, "Rows", 3.5)
    x = torch.randn(3, dtype=torch.float64)
    for layer in (plain, ours):
        assert type(layer.k) is int and layer.k == torch.floor(torch.tensor(3.5)).item()
        assert type(layer.c) is int and layer.c == torch.ceil(torch.tensor(3.5)).item()
        torch.testing.assert_close(layer(x), (x * 8).expand(3, 3))


# -- a let that raises at construction names its spec line (the traceback shows the generated line)
BAD_LETS = """\
LAYER(n: int, m: int) {
    example(n = 4, m = 3)
    let per = n // m
    let root = sqrt(m)
    forward(x: [b, n]) -> [b, n] {
        return x * (per + root)
    }
}
"""


def _raising_line(error: BaseException, source: str, file: str) -> str:
    """The generated line the innermost frame of `file` raised at."""
    tb, line = error.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == file:
            line = tb.tb_lineno
        tb = tb.tb_next
    assert line is not None
    return source.splitlines()[line - 1]


@pytest.mark.parametrize("decorator", ["", "@function\n"])
@pytest.mark.parametrize(
    ("n", "m", "error", "let"),
    [(4, 0, ZeroDivisionError, "let per = n // m"), (4, -3, ValueError, "let root = sqrt(m)")],
    ids=["int // 0", "sqrt of a negative int"],
)
def test_a_let_that_raises_names_its_spec_line(decorator, n, m, error, let):
    """As torch's int floor_divide raises at 0 and nn.Linear(-3, 2) raises: the module's __init__ and the
    functional form raise, the generated line naming the let's spec line."""
    text = decorator + BAD_LETS.replace("LAYER", "layer Bad")
    ns = compile_spec(text, "bad")
    line = 1 + text.splitlines().index(f"    {let}")
    with pytest.raises(error) as raised:
        ns["Bad"](n, m)
    assert _raising_line(raised.value, ns["SOURCE"], "bad.py").endswith(f"  # bad.layer:{line}")
    if "bad" in ns:  # the functional form computes the lets it reads too
        with pytest.raises(error) as raised:
            ns["bad"](torch.ones(2, 4), n=n, m=m)
        assert _raising_line(raised.value, ns["SOURCE"], "bad.py").endswith(f"  # bad.layer:{line}")
