"""`gen`'s cache of whole generated files, so that a run over unchanged specs only reads and writes.

Everything is keyed by the tool's fingerprint (a hash of layerdsl's own code, grammar and templates, and of
the black version the fallback formats with), so that any change to the compiler misses the cache.

- An **entry** is one generated file's final text, keyed by everything that text is made of: for a module,
  its spec's text, where the spec and the module are, and the text and module of every other spec defining
  a layer whose name occurs in the spec (a superset of the layers it uses: their interfaces are all that
  reaches its code); for a package `__init__`, its unformatted text.
- A **run** record maps a set of specs (every path, module path and text, and the package's name) to the
  entries of the files it generated, written only after a run without errors. A run whose record exists
  needs no parsing or checking at all: the same inputs give the same outputs.

The cache lives in `$LAYERDSL_CACHE_DIR`, else `$XDG_CACHE_HOME/layerdsl`, else `~/.cache/layerdsl`. A missing
or read-only cache costs only time; entries are written atomically, so concurrent runs cannot corrupt them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from layerdsl.driver.output import write_atomic
from layerdsl.resources import resource_dir

_PACKAGE = Path(__file__).resolve().parent.parent


class OutputCache:
    """The entries and run records under one folder (one per tool fingerprint)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder  # None: caching off

    @classmethod
    def default(cls) -> OutputCache:
        if os.environ.get("LAYERDSL_NO_CACHE"):
            return cls(None)
        base = os.environ.get("LAYERDSL_CACHE_DIR") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "layerdsl"
        )
        return cls(Path(base) / f"gen-{tool_fingerprint()[:20]}")

    def get(self, key: str) -> str | None:
        if self.folder is None:
            return None
        try:
            return (self.folder / "files" / key[:2] / key).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def put(self, key: str, text: str) -> None:
        if self.folder is not None:
            _write(self.folder / "files" / key[:2] / key, text)

    def load_run(self, key: str) -> dict[Path, str] | None:
        """The outputs of a run with these inputs, or None when any part of it is missing."""
        if self.folder is None:
            return None
        try:
            record = json.loads((self.folder / "runs" / key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        outputs: dict[Path, str] = {}
        for rel, entry in record.items():
            text = self.get(entry)
            if text is None:
                return None
            outputs[Path(rel)] = text
        return outputs

    def save_run(self, key: str, entries: dict[Path, str]) -> None:
        if self.folder is not None:
            record = {rel.as_posix(): entry for rel, entry in entries.items()}
            _write(self.folder / "runs" / key, json.dumps(record, sort_keys=True))


def key(*parts: str | Iterable[str]) -> str:
    """A hash of `parts` (strings, or sequences of strings), with no two different lists giving one key."""
    h = hashlib.sha256()
    for part in parts:
        items = [part] if isinstance(part, str) else list(part)
        h.update(f"{len(items)}\0".encode())
        for item in items:
            data = item.encode("utf-8", "surrogateescape")
            h.update(f"{len(data)}\0".encode())
            h.update(data)
    return h.hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


@functools.cache
def tool_fingerprint() -> str:
    """A hash of the compiler's own code, grammar and templates, and of the black version the fallback
    formatter uses: a cached output is valid only for the tool that wrote it."""
    h = hashlib.sha256()
    for folder in (_PACKAGE, resource_dir("grammars"), resource_dir("templates")):
        for path in sorted(folder.rglob("*")):
            if path.suffix in (".py", ".lark", ".j2") and "__pycache__" not in path.parts:
                h.update(path.relative_to(folder).as_posix().encode() + b"\0")
                h.update(path.read_bytes() + b"\0")
    h.update(_black_version().encode())
    return h.hexdigest()


def _black_version() -> str:
    """Where black is installed and when (cheaper than reading its version from the package metadata)."""
    from importlib.util import find_spec

    spec = find_spec("black")
    if spec is None or spec.origin is None:
        return "none"
    info = os.stat(spec.origin)
    return f"{spec.origin}\0{info.st_size}\0{info.st_mtime_ns}"


def _write(path: Path, text: str) -> None:
    try:
        write_atomic(path, text)
    except OSError:
        pass  # a read-only or full cache only costs time
