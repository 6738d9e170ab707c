"""Code actions: a quick fix for every diagnostic whose hint says what to write: each name a
`did you mean 'X'?` suggests (`weight` for `wieght`, `true` for `True`), the additions hints ask for
(`add `example(n = ...)``, `add `@function` on the line above `layer``), and the move a derivation
refusal inside a sub suggests (`put @function on Block instead of Stack`). The hint travels in the
diagnostic's `data` (see `diagnostics.lsp_diagnostic`); the message's `hint:` line is the fallback.

A fix is computed against the document's current version only: a diagnostic of another version (the
client asks before the edit's diagnostics are published) gets one only when the current version has it
at the same place, and each edit names the version it is for, so that a client that applies it after a
further edit refuses it instead of editing the wrong text."""

from __future__ import annotations

import re
from collections.abc import Sequence

from lsprotocol import types as T

from layerdsl.tools.lsp.diagnostics import current_diagnostics
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
    version = ls.workspace.get_text_document(uri).version
    versioned = _versioned_edits(ls)
    out: list[T.CodeAction] = []
    for d in _of_this_version(ls, uri, version, params.context.diagnostics):
        for title, edits in _fixes(ls, uri, d):
            out.append(_fix(uri, version if versioned else None, d, title, edits))
    if out:
        out[0].is_preferred = True
    return out


def _of_this_version(
    ls: LayerServer, uri: str, version: int | None, given: Sequence[T.Diagnostic]
) -> list[T.Diagnostic]:
    """The client's diagnostics that hold in the document's current version: those published for it, and
    those of another version (or of unknown version) that the current one has at the same place."""
    ours = [d for d in given if d.source in (None, "layerdsl")]
    if all(_version_of(d) == version for d in ours):
        return ours
    current = {(_where(d), d.message) for d in current_diagnostics(ls, uri)}
    return [d for d in ours if _version_of(d) == version or (_where(d), d.message) in current]


def _version_of(d: T.Diagnostic) -> int | None:
    version = d.data.get("version") if isinstance(d.data, dict) else None
    return version if isinstance(version, int) else None


def _where(d: T.Diagnostic) -> tuple[int, int, int, int]:
    r = d.range
    return r.start.line, r.start.character, r.end.line, r.end.character


def _fixes(ls: LayerServer, uri: str, d: T.Diagnostic) -> list[tuple[str, list[T.TextEdit]]]:
    """The quick fixes of one diagnostic of the current version: (title, edits) each."""
    hint = _hint(d)
    if hint.startswith("did you mean"):
        return [
            (f"Replace with '{name}'", [T.TextEdit(range=d.range, new_text=name)]) for name in _SUGGESTED.findall(hint)
        ]
    if (m := _EXAMPLE.search(hint)) is not None:
        name = m.group(1) or m.group(2)
        edit = _add_example(ls, uri, d, name)
        return [(f"Add an example value for '{name}'", [edit])] if edit is not None else []
    if hint == _FUNCTION:
        edit = _add_function(ls, uri, d)
        return [("Add @function", [edit])] if edit is not None else []
    if (m := _MOVE_FUNCTION.match(hint)) is not None:
        edits = _move_function(ls, uri, m.group(2), m.group(1))
        return [(f"Move @function to {m.group(1)}", edits)] if edits else []
    return []


def _versioned_edits(ls: LayerServer) -> bool:
    """Whether the client takes edits that name the document's version (`documentChanges`)."""
    try:
        return bool(ls.client_capabilities.workspace.workspace_edit.document_changes)  # type: ignore[union-attr]
    except AttributeError:  # a capability left out
        return False


def _fix(uri: str, version: int | None, d: T.Diagnostic, title: str, edits: list[T.TextEdit]) -> T.CodeAction:
    """The quick fix; with `version`, its edits also name the version they are for (`documentChanges`,
    which a client prefers to `changes`, and refuses to apply to another version)."""
    document_changes = None
    if version is not None:
        document = T.OptionalVersionedTextDocumentIdentifier(uri=uri, version=version)
        document_changes = [T.TextDocumentEdit(text_document=document, edits=list(edits))]
    return T.CodeAction(
        title=title,
        kind=T.CodeActionKind.QuickFix,
        diagnostics=[d],
        edit=T.WorkspaceEdit(changes={uri: edits}, document_changes=document_changes),
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
