"""`layerdsl show --layer NAME`: cut one layer's code (functional form, Function, module) out of a module."""

from __future__ import annotations

import ast

from layerdsl.language.naming import snake_case


def select_layer(code: str, name: str) -> str | None:
    """The source of the top-level definitions belonging to layer `name`, or None if there is none."""
    wanted = {name, f"{name}Function", snake_case(name)}
    lines = code.splitlines(keepends=True)
    parts = []
    for node in ast.parse(code).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name in wanted:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
            parts.append("".join(lines[start : node.end_lineno]))
    return "\n\n".join(parts) if parts else None
