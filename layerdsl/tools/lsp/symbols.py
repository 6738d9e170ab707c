"""Document symbols: the outline of a spec (layers, and their tensors, subs, lets, forward and backward)."""

from __future__ import annotations

from lsprotocol import types as T

from layerdsl.diagnostics import Span
from layerdsl.tools.lsp.documents import Analysis
from layerdsl.tools.lsp.hover import layer_signature
from layerdsl.tools.lsp.positions import text_lines, to_range, within


def document_symbols(a: Analysis, codec) -> list[T.DocumentSymbol]:
    out = []
    text = a.text
    lines = text_lines(text)
    nlines = len(lines)

    def rng(span: Span) -> T.Range:
        span = Span(min(span.line, nlines), span.col, min(span.end_line, nlines), span.end_col)
        return to_range(span, text, codec)

    for layer in a.spec.layers if a.spec else []:
        extent = a.extents.get(id(layer), layer.span)
        children = []
        for t in layer.tensors:
            kind = T.SymbolKind.Field if t.kind == "param" else T.SymbolKind.Variable
            children.append(
                T.DocumentSymbol(
                    name=t.name,
                    kind=kind,
                    detail=t.kind if t.persistent else "transient buffer",
                    range=rng(t.span),
                    selection_range=rng(t.span),
                )
            )
        for s in layer.subs:
            children.append(
                T.DocumentSymbol(
                    name=s.name,
                    kind=T.SymbolKind.Module,
                    detail=f"sub {s.call.func}",
                    range=rng(s.span),
                    selection_range=rng(s.span),
                )
            )
        for let in layer.lets:
            children.append(
                T.DocumentSymbol(
                    name=let.name,
                    kind=T.SymbolKind.Constant,
                    detail="let",
                    range=rng(let.span),
                    selection_range=rng(let.span),
                )
            )
        for name, block in (("forward", layer.forward), ("backward", layer.backward)):
            if block is not None:
                sel = Span(block.span.line, block.span.col, block.span.line, block.span.col + len(name))
                children.append(
                    T.DocumentSymbol(
                        name=name, kind=T.SymbolKind.Method, range=rng(block.span), selection_range=rng(sel)
                    )
                )
        children.sort(key=lambda s: (s.range.start.line, s.range.start.character))
        full = extent if within(layer.span, extent) else layer.span
        out.append(
            T.DocumentSymbol(
                name=layer.name,
                kind=T.SymbolKind.Class,
                detail=layer_signature(layer, text)[6:],
                range=rng(full),
                selection_range=rng(layer.span),
                children=children,
            )
        )
    return out
