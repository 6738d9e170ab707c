"""The one atomic writer (`gen` and `fmt` both write through it) and `gen`'s plan of what to write."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from layerdsl.codegen.module import HEADER_PREFIX
from layerdsl.driver import output
from layerdsl.driver.output import MANIFEST, RefusedOverwrite, apply, plan, stamp, write_atomic


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
    assert set(todo.write) == {tmp_path / "changed.py", tmp_path / "new.py", tmp_path / MANIFEST}
    assert todo.remove == [tmp_path / "gone.py"]
    assert todo.unchanged == 1
    apply(todo)
    assert sorted(os.listdir(tmp_path)) == [MANIFEST, "changed.py", "mine.py", "new.py", "same.py"]
    assert (tmp_path / MANIFEST).read_text(encoding="utf-8").splitlines()[-3:] == ["changed.py", "new.py", "same.py"]
    assert (tmp_path / "changed.py").read_text(encoding="utf-8") == _generated("new")


def test_plan_refuses_to_overwrite_a_file_layerdsl_did_not_generate(tmp_path):
    (tmp_path / "mine.py").write_text("# mine\n", encoding="utf-8")
    with pytest.raises(RefusedOverwrite) as refused:
        plan(tmp_path, {Path("mine.py"): _generated("x")})
    assert refused.value.paths == [tmp_path / "mine.py"]


def test_plan_never_touches_another_generated_package_below_the_output_folder(tmp_path):
    """`gen specs -o p/sub && gen one.layer -o p` must not remove p/sub's files: p/sub has its own manifest."""
    sub = tmp_path / "sub"
    apply(plan(sub, {Path("a.py"): stamp(_generated("a")), Path("__init__.py"): stamp(_generated("i"))}))
    todo = plan(tmp_path, {Path("b.py"): stamp(_generated("b"))})
    assert todo.remove == []
    apply(todo)
    assert sorted(os.listdir(sub)) == [MANIFEST, "__init__.py", "a.py"]
    with pytest.raises(RefusedOverwrite) as refused:
        plan(tmp_path, {Path("sub/a.py"): stamp(_generated("other"))})
    assert "belongs to the generated package" in refused.value.refusals[0][1]


def test_a_generated_file_edited_by_hand_is_kept_unless_forced(tmp_path):
    apply(plan(tmp_path, {Path("a.py"): stamp(_generated("a = 1")), Path("b.py"): stamp(_generated("b = 1"))}))
    for name in ("a.py", "b.py"):
        (tmp_path / name).write_text((tmp_path / name).read_text(encoding="utf-8") + "# mine\n", encoding="utf-8")
    with pytest.raises(RefusedOverwrite) as refused:
        plan(tmp_path, {Path("a.py"): stamp(_generated("a = 2"))})  # a.py overwritten, b.py obsolete
    assert sorted(refused.value.paths) == [tmp_path / "a.py", tmp_path / "b.py"]
    assert all("edited by hand" in why for _, why in refused.value.refusals)
    apply(plan(tmp_path, {Path("a.py"): stamp(_generated("a = 2"))}, force=True))
    assert sorted(os.listdir(tmp_path)) == [MANIFEST, "a.py"]
    assert "a = 2" in (tmp_path / "a.py").read_text(encoding="utf-8")


def test_stamp_puts_the_bodys_hash_on_the_second_line():
    text = stamp(_generated("x = 1\n"))
    head, hash_line, body = text.split("\n", 2)
    assert head.startswith(HEADER_PREFIX) and body == "x = 1\n"
    assert hash_line == output.HASH_PREFIX + hashlib.sha256(body.encode()).hexdigest()[:16]


def test_a_temporary_left_by_a_killed_run_is_cleaned_at_the_next(tmp_path):
    (tmp_path / "sub").mkdir()
    stray = tmp_path / "sub" / ".m.py.k3j2.layerdsl.tmp"
    stray.write_text("half", encoding="utf-8")
    mine = tmp_path / ".notes.tmp"
    mine.write_text("not ours", encoding="utf-8")
    assert output.clean_temporaries(tmp_path) == [stray]
    assert not stray.exists() and mine.exists()


@pytest.mark.skipif(os.name != "posix", reason="permission bits are POSIX")
def test_a_regenerated_file_keeps_its_0644_mode(tmp_path):
    old = os.umask(0o022)
    try:
        apply(plan(tmp_path, {Path("a.py"): stamp(_generated("a = 1"))}))
        assert _mode(tmp_path / "a.py") == 0o644
        apply(plan(tmp_path, {Path("a.py"): stamp(_generated("a = 2"))}))
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.py") == 0o644


def test_reading_refuses_devices_and_fifos_and_stops_at_the_limit(tmp_path):
    with pytest.raises(output.Unreadable, match="not a regular file"):
        output.read_spec(Path("/dev/zero"), 1000)
    fifo = tmp_path / "f.layer"
    os.mkfifo(fifo)
    with pytest.raises(output.Unreadable, match="not a regular file"):
        output.read_spec(fifo, 1000)  # without O_NONBLOCK this would wait for a writer forever
    big = tmp_path / "big.layer"
    big.write_text("x" * 1001, encoding="utf-8")
    with pytest.raises(output.Unreadable, match="over 1,000 bytes"):
        output.read_spec(big, 1000)
    assert output.read_spec(big, 1001) == "x" * 1001
