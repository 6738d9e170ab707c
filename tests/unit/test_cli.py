"""The command's exit codes (black's convention: 0 nothing to do, 1 errors or would change, 2 usage,
123 internal error) and `--version`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import layerdsl
from layerdsl.driver import cli, pipeline
from layerdsl.driver.cli import main
from layerdsl.tools.fmt import formatter

ROOT = Path(__file__).resolve().parents[2]
SPEC = """\
layer Offset(features: int) {
    \"\"\"Add a learned offset.\"\"\"
    param offset: [features] = zeros

    example(features = 4)

    forward(x: [..., features]) -> [..., features] {
        return x + offset
    }
}
"""
UNFORMATTED = SPEC.replace("    param offset: [features] = zeros", "  param offset:[features]=zeros")
MISSPELT = SPEC.replace("return x + offset", "return x + ofset")


@pytest.fixture
def specs(tmp_path) -> Path:
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "offset.layer").write_text(SPEC, encoding="utf-8")
    return folder


def _boom(*args, **kwargs):
    raise RuntimeError("boom")


def test_version(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"layerdsl {layerdsl.__version__}\n"


def test_help_lists_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "123 internal error" in " ".join(capsys.readouterr().out.split())


# ---------------------------------------------------------------- gen --check


def test_gen_check_exit_codes(specs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["gen", str(specs), "-o", str(out), "--check"]) == cli.EXIT_ERRORS  # missing
    assert main(["gen", str(specs), "-o", str(out)]) == cli.EXIT_OK
    assert main(["gen", str(specs), "-o", str(out), "--check"]) == cli.EXIT_OK  # nothing to do
    (specs / "offset.layer").write_text(SPEC.replace("learned offset", "learned bias"), encoding="utf-8")
    assert main(["gen", str(specs), "-o", str(out), "--check"]) == cli.EXIT_ERRORS  # stale
    assert "stale: " in capsys.readouterr().out


def test_gen_check_on_spec_errors_exits_1(specs, tmp_path, capsys):
    (specs / "offset.layer").write_text(MISSPELT, encoding="utf-8")
    assert main(["gen", str(specs), "-o", str(tmp_path / "out"), "--check"]) == 1
    assert "unknown name 'ofset'" in capsys.readouterr().err


def test_gen_check_internal_error_exits_123_with_the_traceback(specs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pipeline, "generate", _boom)
    assert main(["gen", str(specs), "-o", str(tmp_path / "out"), "--check"]) == 123
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "layerdsl: internal error: RuntimeError: boom" in err


def test_gen_into_a_path_that_is_a_file_exits_1(specs, tmp_path, capsys):
    blocker = tmp_path / "out"
    blocker.write_text("not a folder", encoding="utf-8")
    assert main(["gen", str(specs), "-o", str(blocker)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("layerdsl: ") and "Traceback" not in err


# ---------------------------------------------------------------- fmt --check


def test_fmt_check_exit_codes(specs, capsys):
    spec = specs / "offset.layer"
    assert main(["fmt", str(spec), "--check"]) == 0
    spec.write_text(UNFORMATTED, encoding="utf-8")
    assert main(["fmt", str(spec), "--check"]) == 1
    spec.write_text(SPEC.replace("forward(", "forward(("), encoding="utf-8")
    assert main(["fmt", str(spec), "--check"]) == 1  # a syntax error


def test_fmt_check_internal_error_exits_123(specs, capsys, monkeypatch):
    monkeypatch.setattr(formatter, "format_source", _boom)
    assert main(["fmt", str(specs), "--check"]) == 123
    assert "layerdsl: internal error: RuntimeError: boom" in capsys.readouterr().err


def test_fmt_refusing_its_own_output_exits_123(specs, capsys, monkeypatch):
    """The formatter's self-check failed: a bug in layerdsl, not in the spec."""

    def unsafe(text, path):
        raise formatter.FormatError("the formatted spec would mean something else")

    monkeypatch.setattr(formatter, "format_source", unsafe)
    assert main(["fmt", str(specs), "--check"]) == 123
    assert "cannot format: the formatted spec would mean something else" in capsys.readouterr().err


# ---------------------------------------------------------------- the other commands


def test_check_exit_codes(specs, capsys):
    assert main(["check", str(specs)]) == 0
    (specs / "offset.layer").write_text(MISSPELT, encoding="utf-8")
    assert main(["check", str(specs)]) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["gen", "{tmp}/nope", "-o", "{tmp}/out"],
        ["check", "{tmp}/nope.layer"],
        ["fmt", "{tmp}/nope.layer"],
        ["show", "{tmp}/nope.layer"],
        ["show", "{specs}"],
        ["show", "{specs}/offset.layer", "--layer", "Nope"],
    ],
    ids=["gen-missing", "check-missing", "fmt-missing", "show-missing", "show-folder", "show-unknown-layer"],
)
def test_usage_errors_exit_2(argv, specs, tmp_path, capsys):
    assert main([a.format(tmp=tmp_path, specs=specs) for a in argv]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_missing_path_is_named(tmp_path, capsys):
    main(["check", str(tmp_path / "nope.layer")])
    assert capsys.readouterr().err == f"layerdsl: no such file or folder: {tmp_path / 'nope.layer'}\n"


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["gen", "specs"])  # no -o
    assert exited.value.code == 2


def test_interrupted_exits_130(specs, tmp_path, monkeypatch):
    def interrupt(paths):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "generate", interrupt)
    assert main(["gen", str(specs), "-o", str(tmp_path / "out")]) == 130


def test_the_process_exits_with_the_code(tmp_path):
    """`python -m layerdsl` passes main's code on as the process's exit status."""
    script = (
        "import runpy, sys; import layerdsl.driver.pipeline as p; p.generate = lambda paths: 1 / 0; "
        f"sys.argv = ['layerdsl', 'gen', {str(tmp_path)!r}, '-o', {str(tmp_path / 'out')!r}]; "
        "runpy.run_module('layerdsl', run_name='__main__')"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 123, run.stderr
    assert "internal error: ZeroDivisionError" in run.stderr


# ---------------------------------------------------------------- what reaches the terminal


def test_a_diagnostic_shows_control_characters_escaped_with_the_caret_under_them(tmp_path, capsys):
    spec = tmp_path / "esc\x1b[31m.layer"
    spec.write_text(SPEC.replace("return x + offset", "return x\x1b[2J + ofset"), encoding="utf-8")
    assert main(["check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert "error: 'esc\\x1b[31m' cannot be a Python module name" in err
    lines = err.splitlines()
    at = next(i for i, text in enumerate(lines) if text.startswith("esc\\x1b[31m.layer:8:"))
    line, caret = lines[at + 1 : at + 3]
    assert line == "            return x\\x1b[2J + ofset"
    assert caret.index("^") == line.index("\\x1b") and caret.count("^") == len("\\x1b")  # under the escape


def test_gen_force_is_an_option_and_a_clean_run_needs_no_force(specs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["gen", str(specs), "-o", str(out)]) == 0
    assert main(["gen", str(specs), "-o", str(out), "--force"]) == 0
    assert "0 written, 3 unchanged, 0 removed" in capsys.readouterr().out
