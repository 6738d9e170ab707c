"""How spec names become Python names that every stage agrees on."""

from __future__ import annotations

import re
from collections.abc import Collection


def snake_case(name: str) -> str:
    """The name of a layer's functional form in the generated code: `MyLayer` → `my_layer`."""
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    s = re.sub(r"(?<=[A-Z])([A-Z][a-z])", r"_\1", s)
    return s.lower()


def fresh_name(hint: str, taken: Collection[str]) -> str:
    """A name for something the generated code introduces: `hint` itself unless `taken` has it, else the
    first of `hint_`, `hint_2`, `hint_3`, ... that it does not (`taken` holds the spec's names of the scope;
    forty gradient parts of one input are `grad_x_part_40`, not forty underscores)."""
    if hint not in taken:
        return hint
    name, k = hint + "_", 1
    while name in taken:
        k += 1
        name = f"{hint}_{k}"
    return name
