"""Diagnostics: every spec problem is a located `path:line:col: error:` with the source line, a caret and a
hint where one helps; `gen` then exits 1 and writes nothing. Also the writer's safety rules.

The error corpus lives in `tests/error_corpus/`: each case is a `.layer` file, or a folder of them (for
problems that span files). A case states what it expects in header comments of the file with the error:

    # error: LINE:COL MESSAGE      the error's position and a substring of its message (repeatable)
    # hint: HINT                   a substring of the hint of the error above it
    # errors: N                    the total number of errors the run reports

Line numbers count the header lines too. Each case runs through the real CLI, `layerdsl gen SPECDIR -o OUT`
(a case file is copied alone into a fresh SPECDIR, so diagnostics show it as `specs/<file>`): exit 1, the
exact `path:line:col: error:` prefix, the message and hint, the source line with a caret under the column,
and no file written, neither into a fresh output folder nor into one that holds generated code already.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from layerdsl.codegen.module import HEADER_PREFIX
from layerdsl.driver.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
CORPUS = Path(__file__).resolve().parent / "error_corpus"
CASES = sorted(CORPUS.iterdir())
HEAD = re.compile(r"^(?P<path>\S+?):(?P<line>\d+):(?P<col>\d+): error: (?P<message>.*)$")


@dataclass
class Expected:
    shown: str  # the path as diagnostics show it
    file: Path
    line: int
    col: int
    message: str
    hint: str | None = None


def spec_dir(case: Path, tmp_path: Path) -> Path:
    """The folder of specs to run a case on: a case folder itself, or a fresh one holding a case file."""
    if case.is_dir():
        return case
    folder = tmp_path / "specs"
    folder.mkdir()
    shutil.copy(case, folder / case.name)
    return folder


def expectations(case: Path, folder: Path | None = None) -> tuple[list[Expected], int | None]:
    """What a case expects; diagnostics show paths as `<folder name>/<file>` (`folder` defaults to the
    case folder, or for a case file, the folder it is in)."""
    files = sorted(case.rglob("*.layer")) if case.is_dir() else [case]
    folder = folder or (case if case.is_dir() else case.parent)
    expected: list[Expected] = []
    count = None
    for f in files:
        rel = f.relative_to(folder).as_posix() if f.is_relative_to(folder) else f.name
        shown = f"{folder.name}/{rel}"
        for text in f.read_text(encoding="utf-8").splitlines():
            if m := re.match(r"# error: (\d+):(\d+) (.+)$", text):
                expected.append(Expected(shown, f, int(m[1]), int(m[2]), m[3].strip()))
            elif m := re.match(r"# hint: (.+)$", text):
                expected[-1].hint = m[1].strip()
            elif m := re.match(r"# errors: (\d+)$", text):
                count = int(m[1])
    assert expected, f"{case.name} states no expected error"
    return expected, count


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """The shipped specs, generated once: a pre-existing output folder that a failed run must not touch."""
    out = tmp_path_factory.mktemp("generated") / "out"
    assert main(["gen", str(SPECS), "-o", str(out)]) == 0
    return out


def diagnostics_in(err: str) -> list[tuple[int, re.Match]]:
    return [(i, m) for i, line in enumerate(err.splitlines()) if (m := HEAD.match(line))]


def assert_reported(err: str, e: Expected) -> None:
    lines = err.splitlines()
    prefix = f"{e.shown}:{e.line}:{e.col}: error: "
    found = [i for i, line in enumerate(lines) if line.startswith(prefix) and e.message in line[len(prefix) :]]
    assert found, f"expected `{prefix}{e.message}` in:\n{err}"
    i = found[0]
    # The source line, then a caret under the span.
    source_line = e.file.read_text(encoding="utf-8").split("\n")[e.line - 1].rstrip("\r")
    assert lines[i + 1] == f"    {source_line}", f"no source line after the error:\n{err}"
    caret = lines[i + 2]
    assert re.fullmatch(r"    [ \t]*\^+", caret), f"no caret line after the source line:\n{err}"
    assert caret.index("^") - 4 == e.col - 1, f"the caret is not under column {e.col}:\n{err}"
    if e.hint is not None:
        block = []
        for line in lines[i + 3 :]:
            if HEAD.match(line) or re.fullmatch(r"\d+ errors?", line):
                break
            block.append(line)
        hints = [line for line in block if line.startswith("  hint: ")]
        assert any(e.hint in h for h in hints), f"expected hint `{e.hint}` after `{lines[i]}`, got {hints}"


# ---------------------------------------------------------------- the corpus


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_error_case(case: Path, tmp_path: Path, generated: Path, capsys):
    specs = spec_dir(case, tmp_path)
    expected, count = expectations(case, specs)

    # A fresh output folder: exit 1, every expected diagnostic, and nothing written.
    out = tmp_path / "out"
    rc, _, err = run(capsys, "gen", str(specs), "-o", str(out))
    assert rc == 1, err
    assert "Traceback" not in err
    for e in expected:
        assert_reported(err, e)
    heads = diagnostics_in(err)
    assert heads, err
    for _, m in heads:  # every diagnostic is located in a file of the case
        assert m["path"].endswith(".layer") and int(m["line"]) >= 1 and int(m["col"]) >= 1, err
    if count is not None:
        assert len(heads) == count, err
        assert err.rstrip().endswith(f"{count} error{'s' if count != 1 else ''}"), err
    assert not out.exists() or not any(out.rglob("*")), "a failed gen wrote files"

    # An output folder that already holds generated code is left byte-identical.
    existing = tmp_path / "existing"
    shutil.copytree(generated, existing)
    before = snapshot(existing)
    rc, _, err2 = run(capsys, "gen", str(specs), "-o", str(existing))
    assert rc == 1
    assert err2 == err.replace(str(out), str(existing))
    assert snapshot(existing) == before

    # `check` reports the same and exits 1.
    rc, _, err3 = run(capsys, "check", str(specs))
    assert rc == 1
    assert err3 == err


def test_check_on_the_whole_corpus_fails(capsys):
    rc, _, err = run(capsys, "check", str(CORPUS))
    assert rc == 1
    assert "Traceback" not in err
    # every case's errors are among those of the whole corpus (shown under the corpus folder's name)
    for case in CASES:
        for e in expectations(case, CORPUS)[0]:
            assert f"{e.shown}:{e.line}:{e.col}: error: " in err, e


def test_check_on_the_shipped_specs_passes(capsys):
    rc, out, err = run(capsys, "check", str(SPECS))
    assert rc == 0, err
    assert "no errors" in out


# ---------------------------------------------------------------- several errors in one run

SEVERAL = """\
layer Broken(features: int, bias: bool = True) {
    param weight: [features, hidden] = xavier_unifrom
    param weight: [features]
    sub act = nn.ReLu()
    example(features = 4, featurs = 3)

    forward(x: [B, features]) {
        y = x @ wieght
        update weight = y
        return sigmod(y) + sum(y, dims = 1)
    }
}
"""


def test_every_independent_error_is_reported_in_one_run(tmp_path: Path, capsys):
    spec = tmp_path / "specs" / "broken.layer"
    spec.parent.mkdir()
    spec.write_text(SEVERAL, encoding="utf-8")
    out = tmp_path / "out"
    rc, _, err = run(capsys, "gen", str(spec.parent), "-o", str(out))
    assert rc == 1
    wanted = [
        (1, 42, "a default must be a literal", "did you mean 'true'?"),
        (2, 30, "unknown dim 'hidden'", None),
        (2, 40, "unknown initialiser 'xavier_unifrom'", "did you mean 'xavier_uniform'"),
        (3, 11, "'weight' is already defined in layer 'Broken'", None),
        (4, 15, "unknown torch.nn layer 'nn.ReLu'", "did you mean 'nn.ReLU'?"),
        (5, 27, "example names unknown argument, dim or input 'featurs'", None),
        (8, 17, "unknown name 'wieght'", "did you mean 'weight'?"),
        (9, 16, "update needs a buffer, not the param 'weight'", None),
        (10, 16, "unknown operation 'sigmod'", "did you mean 'sigmoid'"),
        (10, 35, "sum() has no argument 'dims'", "did you mean 'dim'?"),
    ]
    for line, col, message, hint in wanted:
        assert_reported(err, Expected("specs/broken.layer", spec, line, col, message, hint))
    assert len(diagnostics_in(err)) == len(wanted), err
    assert not out.exists()


def test_errors_in_several_files_are_all_reported(tmp_path: Path, capsys):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "a.layer").write_text("layer A() {\n    forward(x) { return x + }\n}\n", encoding="utf-8")
    (specs / "b.layer").write_text("layer B() {\n    forward(x) { return exp(y) }\n}\n", encoding="utf-8")
    (specs / "c.layer").write_text(
        "layer C() {\n    sub a = A()\n    forward(x) { return a(x) }\n}\n", encoding="utf-8"
    )
    rc, _, err = run(capsys, "gen", str(specs), "-o", str(tmp_path / "out"))
    assert rc == 1
    assert_reported(err, Expected("specs/a.layer", specs / "a.layer", 2, 29, "unexpected '}'; expected an expression"))
    assert_reported(err, Expected("specs/b.layer", specs / "b.layer", 2, 29, "unknown name 'y'"))
    # A's file has a syntax error: no follow-on "unknown layer 'A'" in c.layer.
    assert "c.layer" not in err
    assert err.rstrip().endswith("2 errors")


def test_not_utf8_is_an_error_not_a_traceback(tmp_path: Path, capsys):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "latin.layer").write_bytes("layer A() { # caf\xe9\n}\n".encode("latin-1"))
    rc, _, err = run(capsys, "gen", str(specs), "-o", str(tmp_path / "out"))
    assert rc == 1
    assert "specs/latin.layer:1:1: error: not UTF-8" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "source, where, message, hint",
    [
        (
            "layer A(n: int = True) {\n    forward(x) { return x }\n}\n",
            "1:18",
            "a default must be a literal",
            "did you mean 'true'?",
        ),
        ("layer A() {\n    forward(x) { return x * None }\n}\n", "2:29", "unknown name 'None'", "did you mean 'none'?"),
        ("layer A() {\n\tforward(x) { return y }\n}\n", "2:22", "unknown name 'y'", None),
        ("layer A() {\r\n    forward(x) { return y }\r\n}\r\n", "2:25", "unknown name 'y'", None),
        ('layer A() {\n    """doc\n', "2:5", "unterminated string", None),
        ("layer A() {\n    forward(x) { return x[:, 0] + q }\n}\n", "2:35", "unknown name 'q'", None),
        ("layer A() {\n    forward(x) {\n        return x\n", "2:16", "'{' was never closed", None),
        (
            "layer A() {\n    forward(x) { return F.relu(x) }\n}\n",
            "2:25",
            "'F.relu' cannot be called",
            "did you mean 'relu'?",
        ),
        (
            "layer A() {\n    forward(x: [B, n]) { return mean[n](x) }\n}\n",
            "2:33",
            "only allowed in an index statement",
            None,
        ),
        (
            "layer A(k: bool = true) {\n    forward(x) {\n        if k { y = x }\n        return y\n    }\n}\n",
            "4:16",
            "'y' is not bound on every path",
            None,
        ),
        ("layer A() {\n    forward(x) { y = x \u00b7 2 }\n}\n", "2:24", "unexpected character", None),
        ("\ufefflayer A() {\n    forward(x) { return y }\n}\n", "2:25", "unknown name 'y'", None),
        (
            "layer A() {\n    forward(x) { return x }\n}\nlayer A() {\n    forward(x) { return x }\n}\n",
            "4:7",
            "layer 'A' is defined twice: here and at a.layer:1:7",
            None,
        ),
        (
            "layer A() {\n    sub s = nn.Linear\n    forward(x) { return s(x) }\n}\n",
            "2:13",
            "a sub is a call to a layer",
            "write `nn.Linear(...)`",
        ),
        (
            "layer A() {\n    forward(x) { return x }\n}\nlayer B() {\n    forward(x) { return x }\n",
            "4:11",
            "'{' was never closed",
            None,
        ),
        (
            "layer A() {\n    param w: [2] = zeros\n    forward(x) { return x }\n    param w: [2] = ones\n}\n",
            "4:11",
            "'w' is already defined",
            None,
        ),
    ],
)
def test_small_cases(tmp_path: Path, capsys, source, where, message, hint):
    spec = tmp_path / "a.layer"
    spec.write_bytes(source.encode("utf-8"))
    rc, _, err = run(capsys, "check", str(spec))
    assert rc == 1
    line, col = map(int, where.split(":"))
    assert_reported(err, Expected("a.layer", spec, line, col, message, hint))


# ---------------------------------------------------------------- writer safety


def test_gen_refuses_to_overwrite_a_file_it_did_not_generate(tmp_path: Path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "my_layer.py"
    mine.write_text("# my own code\nx = 1\n", encoding="utf-8")
    rc, _, err = run(capsys, "gen", str(SPECS), "-o", str(out))
    assert rc == 1
    assert str(mine) in err and "refusing to overwrite" in err
    assert snapshot(out) == {"my_layer.py": b"# my own code\nx = 1\n"}  # nothing else written either


def test_gen_removes_a_generated_file_whose_spec_is_gone(tmp_path: Path, capsys):
    specs = tmp_path / "specs"
    shutil.copytree(SPECS, specs)
    out = tmp_path / "out"
    rc, _, _ = run(capsys, "gen", str(specs), "-o", str(out))
    assert rc == 0 and (out / "swish.py").exists()
    (specs / "swish.layer").unlink()
    rc, stdout, _ = run(capsys, "gen", str(specs), "-o", str(out))
    assert rc == 0
    assert not (out / "swish.py").exists()
    assert "1 removed" in stdout
    assert "from .swish import" not in (out / "__init__.py").read_text(encoding="utf-8")


def test_gen_leaves_a_stray_file_alone(tmp_path: Path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "helpers.py").write_text("def helper():\n    return 1\n", encoding="utf-8")
    (out / "notes.txt").write_text("notes\n", encoding="utf-8")
    rc, _, _ = run(capsys, "gen", str(SPECS), "-o", str(out))
    assert rc == 0
    assert (out / "helpers.py").read_text(encoding="utf-8") == "def helper():\n    return 1\n"
    assert (out / "notes.txt").read_text(encoding="utf-8") == "notes\n"
    rc, _, _ = run(capsys, "gen", str(SPECS), "-o", str(out))  # and on a second run too
    assert rc == 0 and (out / "helpers.py").exists()


def test_gen_check_writes_nothing_and_lists_what_is_stale(tmp_path: Path, capsys):
    out = tmp_path / "out"
    rc, stdout, _ = run(capsys, "gen", "--check", str(SPECS), "-o", str(out))
    assert rc == 1
    assert f"missing: {out / 'my_layer.py'}" in stdout
    assert not out.exists()

    rc, _, _ = run(capsys, "gen", str(SPECS), "-o", str(out))
    assert rc == 0
    before = snapshot(out)
    rc, stdout, _ = run(capsys, "gen", "--check", str(SPECS), "-o", str(out))
    assert rc == 0, stdout
    assert snapshot(out) == before

    stale = out / "swish.py"
    stale.write_text(stale.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    (out / "gone.py").write_text(f"{HEADER_PREFIX}specs/gone.layer. Do not edit.\n", encoding="utf-8")
    edited = snapshot(out)
    rc, stdout, _ = run(capsys, "gen", "--check", str(SPECS), "-o", str(out))
    assert rc == 1
    assert f"stale: {stale}" in stdout
    assert f"obsolete: {out / 'gone.py'}" in stdout
    assert "my_layer.py" not in stdout
    assert snapshot(out) == edited


def test_gen_check_on_a_spec_error_writes_nothing(tmp_path: Path, capsys):
    out = tmp_path / "out"
    rc, _, err = run(capsys, "gen", "--check", str(CORPUS / "misspelt_name.layer"), "-o", str(out))
    assert rc == 1
    assert "misspelt_name.layer:8:20: error: unknown name 'weigth'" in err
    assert not out.exists()
