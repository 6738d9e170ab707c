"""Signature help: inside a call's parentheses, the signature of what is called (an operation, an
initialiser, a layer being constructed, or a sub's forward) with the parameter being written marked."""

from __future__ import annotations

import re

from lsprotocol import types as T

from layerdsl.ir.nodes import Ref
from layerdsl.language.ops import CALLABLE
from layerdsl.language.tables import INITS
from layerdsl.semantics import scopes
from layerdsl.tools.lsp.completion import CALLEE
from layerdsl.tools.lsp.documents import Analysis, LayerServer
from layerdsl.tools.lsp.navigation import layer_at
from layerdsl.tools.lsp.positions import from_position
from layerdsl.tools.lsp.scanning import open_bracket


def _parameters(a: Analysis | None, callee: str, line: int, col: int) -> tuple[str, list[str], str] | None:
    """The callee's name as shown, its parameters (each as written in the signature) and a doc line."""
    if callee in CALLABLE:
        op = CALLABLE[callee]
        return callee, [p.name + (f" = {p.default}" if p.default is not None else "") for p in op.params], op.doc
    if callee in INITS:
        spec = INITS[callee]
        params = [f"{name} = {default}" if default else name for name, default in spec.params]
        if spec.fan_based:
            params += ["fan_in = …", "fan_out = …"]
        return callee, params, spec.doc
    if a is None:
        return None
    layer = layer_at(a, line)
    if layer is not None:
        binding = scopes.resolve(layer, callee, line, col)
        if binding is not None and binding.ref == Ref.SUB:  # calling a sub: its layer's forward
            other = a.layers.get(binding.decl.call.func)  # type: ignore[union-attr]
            if other is None or other.forward is None:
                return None
            return callee, [i.name for i in other.forward.inputs], f"forward of sub `{callee}` (layer {other.name})"
    other = a.layers.get(callee)
    if other is None:
        return None
    return callee, [f"{arg.name}: {arg.type}" for arg in other.args], other.docstring or f"layer {other.name}"


def _active(written: str, params: list[str]) -> int:
    """The parameter being written: the keyword's, or the count of the commas before the cursor."""
    depth, commas, start = 0, 0, 0
    for i, c in enumerate(written):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            commas, start = commas + 1, i + 1
    keyword = re.match(r"\s*([A-Za-z_]\w*)\s*=(?!=)", written[start:])
    if keyword is not None:
        names = [re.match(r"\w+", p).group() for p in params]  # type: ignore[union-attr]
        if keyword.group(1) in names:
            return names.index(keyword.group(1))
    return commas


def signature_help(ls: LayerServer, uri: str, position: T.Position) -> T.SignatureHelp | None:
    text = ls.workspace.get_text_document(uri).source
    line, col = from_position(text, position, ls.codec())
    lines = text.split("\n")
    offset = sum(len(x) + 1 for x in lines[: line - 1]) + col - 1
    opened = open_bracket(text[:offset])
    if opened is None or opened[0] != "(":
        return None
    m = CALLEE.search(text[: opened[1]])
    if m is None:
        return None
    callee = m.group(1)
    before = text[: m.start(1)]
    call_line = before.count("\n") + 1
    call_col = m.start(1) - (before.rfind("\n") + 1) + 1
    found = _parameters(ls.usable(uri), callee, call_line, call_col)
    if found is None:
        return None
    name, params, doc = found
    label = f"{name}({', '.join(params)})"
    info = T.SignatureInformation(
        label=label,
        documentation=T.MarkupContent(kind=T.MarkupKind.Markdown, value=doc) if doc else None,
        parameters=[T.ParameterInformation(label=p) for p in params],
    )
    active = min(_active(text[opened[1] + 1 : offset], params), max(len(params) - 1, 0))
    return T.SignatureHelp(signatures=[info], active_signature=0, active_parameter=active)
