"""Writing files: the one atomic writer (used by `gen` and `fmt`), and `gen`'s plan of what to write: only
over files layerdsl generated, removing stale ones."""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


class RefusedOverwrite(Exception):
    """A target path holds a file that layerdsl did not generate."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        super().__init__(", ".join(map(str, paths)))


@dataclass
class Plan:
    """What `gen` will do to the output folder."""

    write: dict[Path, str] = field(default_factory=dict)  # absolute path -> content (new or changed)
    remove: list[Path] = field(default_factory=list)  # generated files whose spec is gone
    unchanged: int = 0


def is_generated(path: Path) -> bool:
    """Whether `path` starts with the header layerdsl writes (so `gen` may overwrite or remove it)."""
    from layerdsl.codegen.module import HEADER_PREFIX  # imported here: `fmt` writes files without loading codegen

    try:
        with path.open(encoding="utf-8") as f:
            return f.readline().startswith(HEADER_PREFIX)
    except (OSError, UnicodeDecodeError):
        return False


def plan(out_dir: Path, outputs: dict[Path, str]) -> Plan:
    """The writes and removals that make `out_dir` hold exactly `outputs` (paths relative to it); raises
    RefusedOverwrite, before anything is written, if a target is a file layerdsl did not generate."""
    result = Plan()
    foreign = []
    for rel, content in outputs.items():
        target = out_dir / rel
        if target.exists():
            if not is_generated(target):
                foreign.append(target)
                continue
            if target.read_text(encoding="utf-8") == content:
                result.unchanged += 1
                continue
        result.write[target] = content
    if foreign:
        raise RefusedOverwrite(foreign)
    wanted = {out_dir / rel for rel in outputs}
    if out_dir.is_dir():
        for existing in sorted(out_dir.rglob("*.py")):
            if existing not in wanted and is_generated(existing):
                result.remove.append(existing)
    return result


def apply(p: Plan) -> None:
    """Carry out a plan."""
    for target, content in p.write.items():
        write_atomic(target, content)
    for stale in p.remove:
        stale.unlink()


def write_atomic(target: Path, content: str) -> None:
    """Replace `target` with `content` (UTF-8, newlines as given) in one step: a reader sees the old file or
    the new one, never a part. Creates the folder. The file keeps the permission bits of the file it
    replaces; a new file gets the umask's usual mode (0o644 under umask 022), as `open()` would give it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(content)
        os.chmod(tmp, _mode_for(target))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mode_for(target: Path) -> int:
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)  # the only portable way to read it
        os.umask(umask)
        return 0o666 & ~umask
