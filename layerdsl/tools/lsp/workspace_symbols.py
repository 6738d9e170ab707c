"""Workspace symbols: the layers of every spec in the workspace folders, and their members, matched
against the query as a case-insensitive subsequence (`mlp` finds `MLP`, `lnr` finds `Linear`)."""

from __future__ import annotations

import os

from lsprotocol import types as T
from pygls.uris import from_fs_path, to_fs_path

from layerdsl.diagnostics import Span
from layerdsl.ir import nodes as N
from layerdsl.tools.lsp.documents import LayerServer
from layerdsl.tools.lsp.positions import to_range

MAX_SYMBOLS = 1000


def _matches(query: str, name: str) -> bool:
    it = iter(name.lower())
    return all(ch in it for ch in query.lower())


def _roots(ls: LayerServer) -> list[str]:
    roots = []
    for folder in ls.workspace.folders.values():
        path = to_fs_path(folder.uri)
        if path:
            roots.append(os.path.abspath(path))
    if not roots and ls.workspace.root_path:
        roots.append(os.path.abspath(ls.workspace.root_path))
    return roots


def _members(layer: N.Layer) -> list[tuple[str, T.SymbolKind, Span]]:
    out: list[tuple[str, T.SymbolKind, Span]] = []
    out += [(t.name, T.SymbolKind.Field, t.span) for t in layer.tensors]
    out += [(s.name, T.SymbolKind.Module, s.span) for s in layer.subs]
    out += [(let.name, T.SymbolKind.Constant, let.span) for let in layer.lets]
    return out


def workspace_symbols(ls: LayerServer, query: str) -> list[T.SymbolInformation]:
    opened = ls.open_texts()
    paths: list[str] = []
    for root in _roots(ls):
        paths += [os.path.abspath(p) for p in ls.spec_paths(root)]
    paths += [p for p in opened if p.endswith(".layer")]
    out: list[T.SymbolInformation] = []
    for path in sorted(set(paths)):
        text = opened.get(path)
        if text is None:
            text = ls.disk_text(path)
        spec = ls.pristine(path, text) if text is not None else None
        if spec is None or text is None:
            continue
        uri = from_fs_path(path) or path
        for layer in spec.layers:
            symbols: list[tuple[str, T.SymbolKind, Span, str | None]] = [
                (layer.name, T.SymbolKind.Class, layer.span, None)
            ]
            symbols += [(name, kind, span, layer.name) for name, kind, span in _members(layer)]
            for name, kind, span, container in symbols:
                if not _matches(query, name):
                    continue
                where = T.Location(uri=uri, range=to_range(span, text, ls.codec()))
                out.append(T.SymbolInformation(name=name, kind=kind, location=where, container_name=container))
                if len(out) >= MAX_SYMBOLS:
                    return out
    return out
