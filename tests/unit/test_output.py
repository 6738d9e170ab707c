"""The one atomic writer (`gen` and `fmt` both write through it) and `gen`'s plan of what to write."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from layerdsl.codegen.module import HEADER_PREFIX
from layerdsl.driver import output
from layerdsl.driver.output import RefusedOverwrite, apply, plan, write_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_atomic_creates_folders_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "a" / "b" / "m.py"
    write_atomic(target, "x = 1\n")
    assert target.read_text(encoding="utf-8") == "x = 1\n"
    assert os.listdir(target.parent) == ["m.py"]


def test_write_atomic_writes_newlines_as_given(tmp_path):
    target = tmp_path / "crlf.layer"
    write_atomic(target, "layer A() {\r\n}\n")
    assert target.read_bytes() == b"layer A() {\r\n}\n"


@pytest.mark.skipif(os.name != "posix", reason="permission bits are POSIX")
def test_a_replaced_file_keeps_its_permissions(tmp_path):
    target = tmp_path / "spec.layer"
    target.write_text("old", encoding="utf-8")
    target.chmod(0o640)
    write_atomic(target, "new")
    assert target.read_text(encoding="utf-8") == "new"
    assert _mode(target) == 0o640


@pytest.mark.skipif(os.name != "posix", reason="permission bits are POSIX")
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_new_file_gets_the_umasks_usual_mode(tmp_path, umask):
    """Not the temporary file's 0600: a generated module is as readable as any file the user writes."""
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "m.py", "text")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "m.py") == 0o666 & ~umask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "m.py"
    target.write_text("old", encoding="utf-8")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(output.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "new")
    assert target.read_text(encoding="utf-8") == "old"
    assert os.listdir(tmp_path) == ["m.py"]


def _generated(text: str) -> str:
    return f"{HEADER_PREFIX} test.\n{text}"


def test_plan_writes_changes_keeps_the_unchanged_and_removes_the_obsolete(tmp_path):
    (tmp_path / "same.py").write_text(_generated("same"), encoding="utf-8")
    (tmp_path / "changed.py").write_text(_generated("old"), encoding="utf-8")
    (tmp_path / "gone.py").write_text(_generated("gone"), encoding="utf-8")
    (tmp_path / "mine.py").write_text("# not generated\n", encoding="utf-8")
    outputs = {
        Path("same.py"): _generated("same"),
        Path("changed.py"): _generated("new"),
        Path("new.py"): _generated(""),
    }
    todo = plan(tmp_path, outputs)
    assert set(todo.write) == {tmp_path / "changed.py", tmp_path / "new.py"}
    assert todo.remove == [tmp_path / "gone.py"]
    assert todo.unchanged == 1
    apply(todo)
    assert sorted(os.listdir(tmp_path)) == ["changed.py", "mine.py", "new.py", "same.py"]
    assert (tmp_path / "changed.py").read_text(encoding="utf-8") == _generated("new")


def test_plan_refuses_to_overwrite_a_file_layerdsl_did_not_generate(tmp_path):
    (tmp_path / "mine.py").write_text("# mine\n", encoding="utf-8")
    with pytest.raises(RefusedOverwrite) as refused:
        plan(tmp_path, {Path("mine.py"): _generated("x")})
    assert refused.value.paths == [tmp_path / "mine.py"]
