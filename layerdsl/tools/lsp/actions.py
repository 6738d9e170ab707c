"""Code actions: a quick fix for every diagnostic whose hint says what to write: each name a
`did you mean 'X'?` suggests (`weight` for `wieght`, `true` for `True`), and the additions hints ask for
(`add `example(n = ...)``, `add `@function` on the line above `layer``). The hint travels in the
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
