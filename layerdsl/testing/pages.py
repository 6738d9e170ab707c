"""The generated docs pages (`docs/torch-nn-parity.md`, `docs/function-coverage.md`): written, or checked
to be current."""

from __future__ import annotations

from pathlib import Path


def write_or_check(doc: Path, text: str, check: bool, command: str) -> int | None:
    """With `check`, say whether `doc` holds `text` and return the exit status; else write it (None)."""
    if check:
        current = doc.exists() and doc.read_text(encoding="utf-8") == text
        print(f"{doc}: {'current' if current else f'stale: run {command}'}")
        return 0 if current else 1
    doc.write_text(text, encoding="utf-8")
    return None
