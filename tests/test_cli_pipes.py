"""`layerdsl ... | head -1`: a subcommand whose reader stops reading ends quietly, with 141 (128 + SIGPIPE,
as a Unix tool killed by SIGPIPE), no traceback and no "Broken pipe" message (`driver.cli.main`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MY_LAYER = ROOT / "specs" / "my_layer.layer"
SIGPIPE_STATUS = 141

pytestmark = pytest.mark.skipif(os.name != "posix", reason="pipes closed early: POSIX")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "LAYERDSL_NO_CACHE": "1"}


def _closed_at_once(args: list[str], cwd: Path) -> tuple[int, str]:
    """`layerdsl args` with its standard output's reader gone before it writes: its status and stderr."""
    child = subprocess.Popen(
        [sys.executable, "-m", "layerdsl", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=_env(),
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    err = child.stderr.read().decode()
    return child.wait(timeout=600), err


def _unformatted(folder: Path, copies: int) -> Path:
    """`copies` specs, each indented by 2 rather than 4: `fmt --diff` prints about 1 kB for each."""
    text = "\n".join(line.replace("    ", "  ", 1) for line in MY_LAYER.read_text().split("\n"))
    folder.mkdir()
    for k in range(copies):
        (folder / f"layer_{k}.layer").write_text(text.replace("MyLayer", f"MyLayer{k}"))
    return folder


def _quiet(err: str) -> None:
    assert "Traceback" not in err, err
    assert "Broken pipe" not in err and "BrokenPipeError" not in err, err


@pytest.mark.parametrize(
    "args",
    [
        ["show", str(MY_LAYER)],
        ["check", str(MY_LAYER)],
        ["gen", str(MY_LAYER), "-o", "{out}"],
        ["fmt", "--diff", "{unformatted}"],
    ],
    ids=["show", "check", "gen", "fmt"],
)
def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Path, args: list[str]) -> None:
    folders = {"out": str(tmp_path / "out"), "unformatted": str(_unformatted(tmp_path / "specs", 1))}
    rc, err = _closed_at_once([a.format(**folders) for a in args], tmp_path)
    _quiet(err)
    assert rc == SIGPIPE_STATUS, err


def test_gen_check_lists_stale_files_into_a_closed_pipe_quietly(tmp_path: Path) -> None:
    rc, err = _closed_at_once(["gen", str(MY_LAYER), "-o", str(tmp_path / "never_written"), "--check"], tmp_path)
    _quiet(err)
    assert rc == SIGPIPE_STATUS, err


def test_test_command_into_a_closed_pipe_quietly(tmp_path: Path) -> None:
    rc, err = _closed_at_once(["test", str(MY_LAYER), "--example-only"], tmp_path)
    _quiet(err)
    assert rc == SIGPIPE_STATUS, err


def test_fmt_diff_piped_into_head(tmp_path: Path) -> None:
    """The issue's own pipeline: a diff far larger than a pipe's buffer, of which `head -1` reads one line."""
    specs = _unformatted(tmp_path / "specs", 120)
    done = subprocess.run(
        f'"{sys.executable}" -m layerdsl fmt --diff "{specs}" | head -1; echo "status=${{PIPESTATUS[0]}}"',
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        timeout=600,
    )
    first, status = done.stdout.splitlines()
    assert first.startswith("--- ") and first.endswith("layer_0.layer")
    assert status == f"status={SIGPIPE_STATUS}"
    _quiet(done.stderr)
    assert done.stderr == ""
