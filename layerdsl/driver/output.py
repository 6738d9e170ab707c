"""Writing generated files: atomically, only over files layerdsl generated, removing stale ones."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from layerdsl.codegen.module import HEADER_PREFIX


class RefusedOverwrite(Exception):
    """A target path holds a file that layerdsl did not generate."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        super().__init__(", ".join(map(str, paths)))


@dataclass
class Plan:
    write: dict[Path, str] = field(default_factory=dict)  # absolute path -> content (new or changed)
    remove: list[Path] = field(default_factory=list)  # generated files whose spec is gone
    unchanged: int = 0


def is_generated(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as f:
            return f.readline().startswith(HEADER_PREFIX)
    except (OSError, UnicodeDecodeError):
        return False


def plan(out_dir: Path, outputs: dict[Path, str]) -> Plan:
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
    for target, content in p.write.items():
        write_atomic(target, content)
    for stale in p.remove:
        stale.unlink()


def write_atomic(target: Path, content: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(content)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
