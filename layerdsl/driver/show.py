"""`layerdsl show`: cut one layer's code (functional form, Function, module) out of a module (`--layer`), or
list each forward statement with its statically inferred shape (`--shapes`)."""

from __future__ import annotations

import ast

from layerdsl.ir import nodes as N
from layerdsl.language.naming import snake_case
from layerdsl.semantics.checker import Program
from layerdsl.semantics.shape_check import shape_hints


def select_layer(code: str, name: str) -> str | None:
    """The source of the top-level definitions belonging to layer `name`, or None if there is none (`a`, the
    functional form's name, or `AFunction` name no layer: each layer is a class of its own name)."""
    wanted = {name, f"{name}Function", snake_case(name)}
    lines = code.splitlines(keepends=True)
    parts = []
    body = ast.parse(code).body
    if not any(isinstance(node, ast.ClassDef) and node.name == name and not _is_function(node) for node in body):
        return None
    for node in body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name in wanted:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
            parts.append("".join(lines[start : node.end_lineno]))
    return "\n\n".join(parts) if parts else None


def _is_function(node: ast.ClassDef) -> bool:
    """Whether the class is a layer's autograd.Function (not a layer's module)."""
    return any(ast.unparse(base) == "torch.autograd.Function" for base in node.bases)


def shapes_listing(files: list[N.SpecFile], program: Program, only: str | None = None) -> str | None:
    """Each layer's forward, one line per statement that binds or returns a value, with its inferred
    shape (`?`: known only at run time), and what is checked at run time; None if layer `only` is not there."""
    out: list[str] = []
    for f in files:
        lines = f.source.splitlines()
        for layer in f.layers:
            shapes = program.shapes.get(program.key(layer))
            if only is not None and layer.name != only or layer.forward is None or shapes is None:
                continue
            out.append(f"{layer.name}  ({f.path}:{layer.span.line})")
            hints = shape_hints(shapes)
            width = max((len(lines[span.line - 1].strip()) for span, _ in hints), default=0)
            for span, label in hints:
                text = lines[span.line - 1].strip()
                out.append(f"  {span.line:>4}  {text:<{width}}  {label}")
            for k in sorted(shapes.unproven):
                out.append(f"        output {k + 1}: not proven statically, checked at run time")
            out.append("")
    if only is not None and not out:
        return None
    return "\n".join(out)
