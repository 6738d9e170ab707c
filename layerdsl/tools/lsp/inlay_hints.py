"""Inlay hints: the shape of each binding after it, in the spec's own dims (`: [B, out_features]`, and
`-> [B, out]` after a returned value). A layer that checked clean gets the static shape pass's shapes
(`semantics.shape_check`, what `layerdsl show --shapes` prints); while it has errors, the shape engine infers
what it can from the declared shapes (members and inputs). A binding whose shape is unknown gets no hint."""

from __future__ import annotations

from lsprotocol import types as T

from layerdsl.ir import nodes as N
from layerdsl.ir.visit import statements
from layerdsl.semantics.shape_check import LayerShapes, shape_hints
from layerdsl.semantics.shapes import Shape, declared_shape, expr_shape
from layerdsl.tools.lsp.documents import LayerServer
from layerdsl.tools.lsp.positions import to_position


def declared_shapes(layer: N.Layer) -> dict[str, Shape]:
    """The shapes the layer declares: its members' and its inputs'."""
    env: dict[str, Shape] = {t.name: declared_shape(t.shape, t.name) for t in layer.tensors}
    for inp in layer.forward.inputs if layer.forward is not None else []:
        env[inp.name] = declared_shape(inp.shape, inp.name)
    return env


def binding_shapes(layer: N.Layer) -> list[tuple[N.Assign, Shape]]:
    """Each assignment of the forward with the shape of the value it binds (None: unknown)."""
    if layer.forward is None:
        return []
    env = declared_shapes(layer)
    out = []
    for stmt in statements(layer.forward.body):
        if isinstance(stmt, N.Assign):
            try:
                shape = expr_shape(stmt.value, env)
            except Exception:  # an unchecked or half-checked expression: no hint
                shape = None
            env[stmt.target] = shape
            out.append((stmt, shape))
    return out


def inlay_hints(ls: LayerServer, uri: str, visible: T.Range) -> list[T.InlayHint]:
    a = ls.analyze(uri)  # checked: the shape engine reads the checker's kinds
    if a.spec is None or a.partial:
        return []
    lines = a.text.split("\n")
    out = []
    for layer in a.spec.layers:
        for span, label in _hints(layer, a.shapes.get(layer.name)):
            if not visible.start.line <= span.line - 1 <= visible.end.line:
                continue
            at = to_position(lines, span.end_line, span.end_col, ls.codec())
            out.append(T.InlayHint(position=at, label=label, kind=T.InlayHintKind.Type, padding_left=False))
    return out


def _hints(layer: N.Layer, checked: LayerShapes | None) -> list[tuple[N.Span, str]]:
    if checked is not None:
        return [(span, label) for span, label in shape_hints(checked) if "<" not in label]
    return [
        (stmt.target_span, f": [{', '.join(shape)}]")
        for stmt, shape in binding_shapes(layer)
        if shape is not None and not any(d.startswith("<") for d in shape)
    ]
