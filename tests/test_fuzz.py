"""Fuzzing the front end: whatever the text, `compiler.check` either succeeds or raises SpecError with
well-formed, located diagnostics; it never raises anything else. Inputs are random text and random
mutations (deleted, duplicated, swapped or inserted tokens and characters) of every shipped spec.

The default runs are small enough for every test run. The `slow` ones run many more examples and are
opt-in: they are skipped unless selected with `pytest -m slow`.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layerdsl.diagnostics import SpecError
from layerdsl.driver import pipeline as compiler
from layerdsl.semantics.checker import check_program
from layerdsl.syntax import parse_file
from layerdsl.syntax.grammar import file_parser

ROOT = Path(__file__).resolve().parents[1]
SPECS = {p.name: p.read_text(encoding="utf-8") for p in sorted((ROOT / "specs").glob("*.layer"))}

# Tokens of a spec, roughly: strings, names, numbers, multi-character operators, single characters, newlines.
TOKEN = re.compile(r'"""[\s\S]*?"""|"[^"\n]*"|[A-Za-z_]\w*|\d+(?:\.\d*)?(?:e-?\d+)?|\.\.\.|->|\*\*|//|[=!<>]=|\n|[^\s]')
INSERTS = [
    # keywords, reserved and forbidden names, Python-isms
    "layer",
    "param",
    "buffer",
    "transient",
    "sub",
    "let",
    "example",
    "forward",
    "backward",
    "update",
    "grad",
    "return",
    "if",
    "else",
    "and",
    "or",
    "not",
    "true",
    "false",
    "none",
    "True",
    "False",
    "None",
    "self",
    "class",
    "def",
    "lambda",
    "training",
    "inf",
    "pi",
    "_x",
    "__import__",
    "torch",
    "nn",
    "F",
    "math",
    "int",
    "float",
    "bool",
    "str",
    "long",
    "mean",
    "sum",
    "relu",
    "zeros",
    "ones",
    "normal",
    "xavier_uniform",
    "fan_in",
    "B",
    "n",
    "@function",
    "@surrogate",
    "nn.Linear",
    "nn.ReLU()",
    "torch.load",
    "elif",
    # punctuation and operators
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "=",
    ".",
    "...",
    "->",
    "+",
    "-",
    "*",
    "/",
    "//",
    "%",
    "**",
    "@",
    "==",
    "<",
    "!",
    "'",
    '"',
    '"""',
    "#",
    "\\",
    ";",
    "\n",
    "\t",
    "\r\n",
    # literals and small constructs
    "0",
    "1",
    "-1",
    "0.5",
    "1e-5",
    '"x"',
    "[]",
    "()",
    "x[0]",
    "x[:, 0]",
    "sum[i](x[i])",
    "y[b] = x[b]",
    "if training { return x }",
    "grad x = none",
    "update q = x",
    "long[]",
    "bool[B, n]",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture
def long_run(request):
    """Skips a long fuzz run unless `-m slow` asked for it."""
    markexpr = request.config.getoption("markexpr", "") or ""
    if "slow" not in markexpr or "not slow" in markexpr:
        pytest.skip("a long fuzz run: select it with `pytest -m slow`")


def check_text(workdir: Path, text: str, generate: bool = False) -> None:
    """Runs the front end on `text` as a spec file; fails on anything but success or a clean SpecError."""
    specs = workdir / "specs"
    shutil.rmtree(specs, ignore_errors=True)
    specs.mkdir()
    (specs / "fuzzed.layer").write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        _, files, program = compiler.check([str(specs)])
    except SpecError as exc:
        assert exc.diagnostics
        for d in exc.diagnostics:
            assert d.path == "specs/fuzzed.layer"
            assert d.message and d.message == d.message.strip()
            if d.source is not None:  # located in the file: a real line and a column at most one past its end
                lines = d.source.split("\n")  # the text as read (universal newlines)
                assert 1 <= d.span.line <= len(lines), d
                assert 1 <= d.span.col <= len(lines[d.span.line - 1]) + 1, d
                rendered = d.render()
                assert rendered.startswith(f"specs/fuzzed.layer:{d.span.line}:{d.span.col}: error: ")
                assert "^" in rendered.split("\n")[2]
        return
    # Success: the IR is complete, and checks fine again.
    assert program is not None
    for f in files:
        for layer in f.layers:
            assert layer.forward is not None
    check_program(files)
    if generate:
        try:
            compiler.generate([str(specs)])
        except SpecError as exc:  # some problems (a missing derivative) are only found while generating
            assert all(d.message for d in exc.diagnostics)


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


def join(toks: list[str]) -> str:
    out = []
    for t in toks:
        if out and out[-1] != "\n" and t != "\n":
            out.append(" ")
        out.append(t)
    return "".join(out)


mutation = st.tuples(
    st.sampled_from(["delete", "duplicate", "swap", "insert", "replace"]),
    st.floats(0, 1, exclude_max=True),
    st.floats(0, 1, exclude_max=True),
    st.sampled_from(INSERTS),
)


def mutate(items: list[str], mutations) -> list[str]:
    items = list(items)
    for kind, a, b, new in mutations:
        if not items:
            items.append(new)
            continue
        i, j = int(a * len(items)), int(b * len(items))
        if kind == "delete":
            del items[i]
        elif kind == "duplicate":
            items.insert(i, items[i])
        elif kind == "swap":
            items[i], items[j] = items[j], items[i]
        elif kind == "insert":
            items.insert(i, new)
        else:
            items[i] = new
    return items


FAST = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
SLOW = settings(
    max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


# ---------------------------------------------------------------- the grammar

NO_INTEREGULAR = (
    "interegular is not installed: lark's strict mode needs it to find grammar conflicts (pip install -e '.[test]')"
)


def test_grammar_has_no_conflicts():
    pytest.importorskip("interegular", reason=NO_INTEREGULAR)
    parser = file_parser(strict=True)  # strict: any shift/reduce or lexer collision is an error
    assert parser.parser is not None


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_spec_checks_alone(name, workdir):
    """The mutation tests start from specs that parse, and that mostly check on their own."""
    pytest.importorskip("interegular", reason=NO_INTEREGULAR)
    assert parse_file(name, SPECS[name], strict=True).layers
    specs = workdir / "alone"
    shutil.rmtree(specs, ignore_errors=True)
    specs.mkdir()
    (specs / name).write_text(SPECS[name], encoding="utf-8")
    try:
        compiler.check([str(specs)])
    except SpecError as exc:
        if all("unknown layer" in d.message for d in exc.diagnostics):
            pytest.skip(f"{name} uses layers of other spec files")
        raise


# ---------------------------------------------------------------- random text


@FAST
@given(st.text(max_size=300))
def test_random_text(workdir, text):
    check_text(workdir, text)


@FAST
@given(st.lists(st.sampled_from(INSERTS), max_size=40))
def test_random_token_soup(workdir, toks):
    check_text(workdir, join(toks))


@FAST
@given(st.sampled_from(sorted(SPECS)), st.integers(0, 10_000))
def test_truncated_specs(workdir, name, cut):
    text = SPECS[name]
    check_text(workdir, text[: cut % (len(text) + 1)])


# ---------------------------------------------------------------- mutations of the shipped specs


@FAST
@given(st.sampled_from(sorted(SPECS)), st.lists(mutation, min_size=1, max_size=4))
def test_token_mutations(workdir, name, mutations):
    check_text(workdir, join(mutate(tokens(SPECS[name]), mutations)))


@FAST
@given(st.sampled_from(sorted(SPECS)), st.lists(mutation, min_size=1, max_size=4))
def test_character_mutations(workdir, name, mutations):
    check_text(workdir, "".join(mutate(list(SPECS[name]), mutations)))


@pytest.mark.slow
@SLOW
@given(st.sampled_from(sorted(SPECS)), st.lists(mutation, min_size=1, max_size=6))
def test_token_mutations_slow(long_run, workdir, name, mutations):
    check_text(workdir, join(mutate(tokens(SPECS[name]), mutations)), generate=True)


@pytest.mark.slow
@SLOW
@given(st.sampled_from(sorted(SPECS)), st.lists(mutation, min_size=1, max_size=6))
def test_character_mutations_slow(long_run, workdir, name, mutations):
    check_text(workdir, "".join(mutate(list(SPECS[name]), mutations)), generate=True)


@pytest.mark.slow
@SLOW
@given(st.text(st.characters(codec="utf-8"), max_size=500) | st.lists(st.sampled_from(INSERTS), max_size=80).map(join))
def test_random_text_slow(long_run, workdir, text):
    check_text(workdir, text)
