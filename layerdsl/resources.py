"""Where the grammar and templates live: inside the installed package, or beside it in a checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """`grammars` or `templates`: packaged copies win; a source checkout uses the top-level folders."""
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"layerdsl is missing its {name}/ folder (looked beside {_PACKAGE})")
