"""How spec names become Python names that every stage agrees on."""

from __future__ import annotations

import re


def snake_case(name: str) -> str:
    """The name of a layer's functional form in the generated code: `MyLayer` → `my_layer`."""
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    s = re.sub(r"(?<=[A-Z])([A-Z][a-z])", r"_\1", s)
    return s.lower()
