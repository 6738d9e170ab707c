"""Code actions: a quick fix for every diagnostic whose hint says what to write: each name a
`did you mean 'X'?` suggests (`weight` for `wieght`, `true` for `True`), the additions hints ask for
(`add `example(n = ...)``, `add `@function` on the line above `layer``), and the move a derivation
refusal inside a sub suggests (`put @function on Block instead of Stack`). The hint travels in the
diagnostic's `data` (see `diagnostics.lsp_diagnostic`); the message's `hint:` line is the fallback."""

from __future__ import annotations

import re

from lsprotocol import types as T

from layerdsl.tools.lsp.documents import Analysis, LayerServer
from layerdsl.tools.lsp.navigation import layer_at
from layerdsl.tools.lsp.positions import to_position

_SUGGESTED = re.compile(r"'([^']+)'")
_EXAMPLE = re.compile(r"add `example\((\w+) = \.\.\.\)`|add `(\w+) = \.\.\.` to the first `example")
_FUNCTION = "add `@function` on the line above `layer`"
_PLACEHOLDER = {"int": "1", "float": "1.0", "bool": "true", "str": '""'}
_MOVE_FUNCTION = re.compile(r"put @function on (\w+) instead of (\w+):")
_FUNCTION_TEXT = re.compile(r"""@function(\s*\((?:"[^"]*"|'[^']*'|[^)"'])*\))?""")


def _hint(d: T.Diagnostic) -> str:
    if isinstance(d.data, dict) and isinstance(d.data.get("hint"), str):
        return d.data["hint"]
    _, _, hint = d.message.partition("\nhint: ")
    return hint


def code_actions(ls: LayerServer, params: T.CodeActionParams) -> list[T.CodeAction]:
    uri = params.text_document.uri
    out: list[T.CodeAction] = []
    for d in params.context.diagnostics:
        if d.source not in (None, "layerdsl"):
            continue
        hint = _hint(d)
        if hint.startswith("did you mean"):
            for name in _SUGGESTED.findall(hint):
                out.append(_fix(uri, d, f"Replace with '{name}'", [T.TextEdit(range=d.range, new_text=name)]))
        elif (m := _EXAMPLE.search(hint)) is not None:
            name = m.group(1) or m.group(2)
            edit = _add_example(ls, uri, d, name)
            if edit is not None:
                out.append(_fix(uri, d, f"Add an example value for '{name}'", [edit]))
        elif hint == _FUNCTION:
            edit = _add_function(ls, uri, d)
            if edit is not None:
                out.append(_fix(uri, d, "Add @function", [edit]))
        elif (m := _MOVE_FUNCTION.match(hint)) is not None:
            edits = _move_function(ls, uri, m.group(2), m.group(1))
            if edits:
                out.append(_fix(uri, d, f"Move @function to {m.group(1)}", edits))
    if out:
        out[0].is_preferred = True
    return out


def _fix(uri: str, d: T.Diagnostic, title: str, edits: list[T.TextEdit]) -> T.CodeAction:
    return T.CodeAction(
        title=title,
        kind=T.CodeActionKind.QuickFix,
        diagnostics=[d],
        edit=T.WorkspaceEdit(changes={uri: edits}),
    )


def _add_example(ls: LayerServer, uri: str, d: T.Diagnostic, name: str) -> T.TextEdit | None:
    """`, name = 1` in the layer's first example, or a new `example(name = 1)` line before its forward."""
    a: Analysis | None = ls.usable(uri)
    if a is None:
        return None
    layer = layer_at(a, d.range.start.line + 1)
    if layer is None:
        return None
    arg = layer.arg(name)
    value = _PLACEHOLDER.get(arg.type if arg is not None else "int", "1")
    lines = a.text.split("\n")
    codec = ls.codec()
    first = [e for e in layer.examples if e.group == 0]  # the line every argument is given on
    if first:
        last = first[-1].value.span
        at = to_position(lines, last.end_line, last.end_col, codec)
        return T.TextEdit(range=T.Range(at, at), new_text=f", {name} = {value}")
    anchor = layer.forward or layer.backward
    if anchor is None:
        return None
    line = anchor.span.line
    indent = re.match(r"[ \t]*", lines[line - 1]).group()  # type: ignore[union-attr]
    at = T.Position(line=line - 1, character=0)
    return T.TextEdit(range=T.Range(at, at), new_text=f"{indent}example({name} = {value})\n\n")


def _add_function(ls: LayerServer, uri: str, d: T.Diagnostic) -> T.TextEdit | None:
    """`@function` on a line of its own above the layer's header (above its other decorators)."""
    a = ls.usable(uri)
    layer = layer_at(a, d.range.start.line + 1) if a is not None else None
    if layer is None:
        return None
    line = min([layer.span.line] + [dec.span.line for dec in layer.decorators])
    at = T.Position(line=line - 1, character=0)
    return T.TextEdit(range=T.Range(at, at), new_text="@function\n")


def _move_function(ls: LayerServer, uri: str, source: str, target: str) -> list[T.TextEdit]:
    """`source`'s `@function` decorator (its whole line when it stands alone), removed, and its text
    (`@function(save = "inputs")` keeps its argument) on a line of its own above `target`'s header and
    decorators, unless `target` has one: the way out a refusal inside a sub's statements suggests, when
    the sub's layer derives on its own (both are in this document: the hint is given only then)."""
    a = ls.usable(uri)
    if a is None or a.spec is None:
        return []
    layers = {layer.name: layer for layer in a.spec.layers}
    if source not in layers or target not in layers:
        return []
    decorator = layers[source].decorator("function")
    if decorator is None:
        return []
    lines = a.text.split("\n")
    codec = ls.codec()
    line = lines[decorator.span.line - 1]
    m = _FUNCTION_TEXT.match(line, decorator.span.col - 1)
    if m is None:
        return []
    if not line[: m.start()].strip() and not line[m.end() :].strip():  # it stands alone: the whole line
        removed = T.Range(T.Position(decorator.span.line - 1, 0), T.Position(decorator.span.line, 0))
    else:
        end = len(line) - len(line[m.end() :].lstrip(" \t"))
        removed = T.Range(
            to_position(lines, decorator.span.line, m.start() + 1, codec),
            to_position(lines, decorator.span.line, end + 1, codec),
        )
    edits = [T.TextEdit(range=removed, new_text="")]
    if not layers[target].is_function:
        first = min([layers[target].span.line] + [dec.span.line for dec in layers[target].decorators])
        indent = re.match(r"[ \t]*", lines[first - 1]).group()  # type: ignore[union-attr]
        at = T.Position(line=first - 1, character=0)
        edits.append(T.TextEdit(range=T.Range(at, at), new_text=f"{indent}{m.group()}\n"))
    return edits
