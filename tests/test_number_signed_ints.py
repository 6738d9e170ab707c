"""An int that is not a count gets torch's values on plain numbers (docs/language.md, "On plain numbers").

The plain `math` call and Python's operators are written only where the operand is in the domain whatever the
arguments are; an int argument and a size are counts (never negative), but an int made from a float
(`floor(a)`: negative, zero, or inf and nan kept as they are), a difference (`n - m`) or a negation (`-n`) is
not, and neither is a let or a local defined as one. There `sqrt` gives nan, `1.0 / k` gives inf at zero, and
so on, in the module, its functional form, the `@function` form and the checker alike (`semantics/evaluate.py`'s
`counted_int` and `mark_counts`)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from layerdsl.semantics.checker import check_program
from layerdsl.semantics.evaluate import example_values
from layerdsl.syntax.parser import parse_file
from tests.support import compile_spec, function_and_plain

LAYER = """\
@function
layer Signed(a: float, n: int, m: int) {
    example(a = EXAMPLE, n = 1, m = 4)
    let k = DEF
    let r = USE
    forward(x: [B, 3]) -> [B, 3] {
        return x * r
    }
}
"""

# an int that may be negative, zero, inf or nan: its spec and its value as the generated code computes it
DEFS = {
    "floor(a)": lambda a, n, m: math.floor(a) if math.isfinite(a) else a,
    "ceil(a)": lambda a, n, m: math.ceil(a) if math.isfinite(a) else a,
    "n - m": lambda a, n, m: n - m,
    "-n": lambda a, n, m: -n,
}

# operations on it and torch's values for a float64 tensor holding it
USES = {
    "sqrt(k)": lambda k: torch.sqrt(k),
    "1.0 / k": lambda k: 1.0 / k,
    "k ** 1.5": lambda k: k**1.5,
    "sin(k)": lambda k: torch.sin(k),
    "maximum(k, 1)": lambda k: torch.maximum(k, torch.ones_like(k)),
    "2.0 / (k + 1)": lambda k: 2.0 / (k + 1),
}

FLOATS = [-2.5, -0.5, 0.0, 0.5, 2.5, math.inf, -math.inf, math.nan]
INTS = [(1, 4), (3, 3), (5, 2), (0, 0)]


def _arguments(definition: str) -> list[tuple[float, int, int]]:
    if "a" in definition:
        return [(a, 1, 4) for a in FLOATS]
    return [(2.5, n, m) for n, m in INTS]


CASES = [(d, u, *args) for d in DEFS for u in USES for args in _arguments(d)]
IDS = [f"{u.replace('k', d)}-a={a},n={n},m={m}" for d, u, a, n, m in CASES]


def _spec(definition: str, use: str, example: float = 2.5) -> str:
    return LAYER.replace("DEF", definition).replace("USE", use).replace("EXAMPLE", repr(example))


def _torch_value(definition: str, use: str, a: float, n: int, m: int) -> float:
    k = DEFS[definition](a, n, m)
    return USES[use](torch.tensor(k, dtype=torch.float64)).item()


@pytest.mark.parametrize(("definition", "use", "a", "n", "m"), CASES, ids=IDS)
def test_the_module_the_functional_form_and_the_function_give_torchs_value(definition, use, a, n, m):
    text = _spec(definition, use)
    want = _torch_value(definition, use, a, n, m)
    x = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    ours, plain = function_and_plain(text, "Signed", a, n, m)
    functional = compile_spec(text.replace("@function\n", ""), "signed_functional")["signed"]
    for got in (ours.r, plain.r):
        assert got == want or (math.isnan(got) and math.isnan(want)), (got, want)
    given = {k: v for k, v in {"a": a, "n": n, "m": m}.items() if k in inspect.signature(functional).parameters}
    for out in (ours(x), plain(x), functional(x, **given)):
        torch.testing.assert_close(out, x * want, equal_nan=True)


EXAMPLES = [(c, i) for c, i in zip(CASES, IDS) if not math.isnan(c[2])]  # an example cannot give nan


@pytest.mark.parametrize(("definition", "use", "a", "n", "m"), [c for c, _ in EXAMPLES], ids=[i for _, i in EXAMPLES])
def test_the_checker_computes_torchs_value(definition, use, a, n, m):
    text = _spec(definition, use, a).replace("n = 1, m = 4", f"n = {n}, m = {m}")
    spec = parse_file("signed.layer", text)
    check_program([spec])
    got = example_values(spec.layers[0])["r"]
    want = _torch_value(definition, use, a, n, m)
    assert got == want or (math.isnan(got) and math.isnan(want)), (got, want)


LOCAL = """\
@function
layer Local(a: float) {
    example(a = 2.5)
    forward(x: [B, 3]) -> [B, 3] {
        k = floor(a)
        for i in range(2) {
            k = k - 1
        }
        return x * sqrt(k) + x * (1.0 / (k + 2))
    }
}
"""


@pytest.mark.parametrize("a", [-2.5, 0.5, 2.5, 4.0, math.inf, math.nan])
def test_an_int_local_that_is_not_a_count_gives_torchs_value(a):
    k = (math.floor(a) if math.isfinite(a) else a) - 2
    kt = torch.tensor(k, dtype=torch.float64)
    want_root, want_inverse = torch.sqrt(kt).item(), (1.0 / (kt + 2)).item()
    x = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    ours, plain = function_and_plain(LOCAL, "Local", a)
    functional = compile_spec(LOCAL.replace("@function\n", ""), "local_functional")["local"]
    for out in (ours(x), plain(x), functional(x, a=a)):
        torch.testing.assert_close(out, x * want_root + x * want_inverse, equal_nan=True)


COUNTS = """\
layer Counts(n: int, m: int, a: float) {
    example(n = 4, m = 3, a = 2.5)
    let d = n + m
    let h = n // 2
    let p = maximum(n, m) * 2
    let e = floor(n / 2)
    let r = sqrt(d) + 1 / h + sqrt(p) + sqrt(e) + 1 / e
    let g = n - m
    let t = sqrt(g)
    forward(x: [b, n]) -> [b, n] {
        s = 0.0
        for i in range(n) {
            s = s + sqrt(i) + 1 / (i + 1)
        }
        return x * (r + s)
    }
}
"""


def test_lets_and_locals_that_are_counts_keep_the_plain_spelling():
    """A let or local whose every definition is a count (a sum, product or quotient of counts, a `range`
    variable) is one: `math.sqrt` and `/` unguarded, as for an int argument; a difference is not."""
    source = compile_spec(COUNTS, "counts")["SOURCE"]
    for plain in ("math.sqrt(self.d)", "1 / self.h", "math.sqrt(self.p)", "math.sqrt(self.e)", "1 / self.e"):
        assert plain in source, plain
    assert "math.sqrt(i) + 1 / (i + 1)" in source
    assert "math.sqrt(self.g) if self.g >= 0 else math.nan" in source
    assert source.count("math.nan") == 1 and "copysign" not in source
