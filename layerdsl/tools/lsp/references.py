"""Find references, rename and document highlight: every occurrence that means the same declaration as
the one under the cursor (arguments, members, lets, inputs, locals, dims, index variables, gradients and
layers), across the workspace's spec files for what another file can name (layers and their arguments)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

from lsprotocol import types as T
from pygls.uris import from_fs_path

from layerdsl.diagnostics import Span
from layerdsl.ir import nodes as N
from layerdsl.language.tables import RESERVED
from layerdsl.semantics.scopes import Namespace
from layerdsl.tools.lsp.documents import Analysis, LayerServer
from layerdsl.tools.lsp.layer_index import VisibleLayers
from layerdsl.tools.lsp.navigation import Occurrence, Target, layer_occurrences, occurrence_at, resolve
from layerdsl.tools.lsp.positions import from_position, to_range

RENAMABLE = {"arg", "param", "buffer", "sub", "let", "input", "local", "dim", "grad", "index", "layer"}
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

Key = tuple[str, int, int]  # a declaration: its file, line and column


@dataclass
class Found:
    """One occurrence of the declaration looked for, in the file at `path`."""

    path: str
    text: str
    span: Span
    declaration: bool


def _key(target: Target, default_path: str) -> Key | None:
    if target.span is None or target.kind not in RENAMABLE:
        return None
    return (os.path.abspath(target.layer.path or default_path), target.span.line, target.span.col)


def target_at(ls: LayerServer, uri: str, position: T.Position) -> tuple[Analysis, Occurrence, Target] | None:
    """The analysis, the occurrence under the cursor and what it means (None: nothing renamable)."""
    a = ls.usable(uri)
    if a is None:
        return None
    line, col = from_position(a.text, position, ls.codec())
    hit = occurrence_at(a, line, col)
    if hit is None:
        return None
    target = resolve(a, *hit)
    if target is None or _key(target, a.path) is None:
        return None
    return a, hit[0], target


def _files(ls: LayerServer, a: Analysis, everywhere: bool) -> list[tuple[str, str, list[N.Layer]]]:
    """(path, text, layers) of this document and, when `everywhere`, of the workspace's other specs."""
    files = [(a.path, a.text, a.spec.layers if a.spec is not None else [])]
    if not everywhere:
        return files
    sources = ls.workset(a.path, a.text, a.spec).sources  # afresh: specs opened since the analysis count
    for path, text in sources.items():
        if path == a.path:
            continue
        spec = ls.pristine(path, text)
        if spec is not None:
            files.append((path, text, spec.layers))
    return files


def occurrences_of(ls: LayerServer, a: Analysis, target: Target) -> list[Found]:
    """Every occurrence meaning `target`: in this document for what is local to a layer, in every spec
    of the workspace for a layer and its arguments."""
    key = _key(target, a.path)
    if key is None:
        return []
    # Other files name layers, arguments (as keywords) and members (`init out_proj.bias = ...`).
    everywhere = target.kind in ("layer", "arg", "param", "buffer")
    found = []
    files = _files(ls, a, everywhere)
    namespace = Namespace(layer for _, _, layers in files for layer in layers)
    for path, text, layers in files:
        # another file's layer names mean what its own folder sees (a folder is a namespace)
        seen = a if path == a.path else replace(a, layers=VisibleLayers(None, [*namespace.visible(path).values()]))
        for layer in layers:
            for occ in layer_occurrences(layer):
                if occ.name != target.name:
                    continue
                meant = resolve(seen, occ, layer)
                if meant is not None and _key(meant, path) == key:
                    found.append(Found(path, text, occ.span, (occ.span.line, occ.span.col) == key[1:]))
    unique = {(f.path, f.span.line, f.span.col): f for f in found}
    return sorted(unique.values(), key=lambda f: (f.path != a.path, f.path, f.span.line, f.span.col))


def _uri(a: Analysis, path: str) -> str:
    return a.uri if path == a.path else from_fs_path(path) or path


def references(ls: LayerServer, params: T.ReferenceParams) -> list[T.Location]:
    hit = target_at(ls, params.text_document.uri, params.position)
    if hit is None:
        return []
    a, _, target = hit
    return [
        T.Location(uri=_uri(a, f.path), range=to_range(f.span, f.text, ls.codec()))
        for f in occurrences_of(ls, a, target)
        if params.context.include_declaration or not f.declaration
    ]


def highlights(ls: LayerServer, uri: str, position: T.Position) -> list[T.DocumentHighlight]:
    hit = target_at(ls, uri, position)
    if hit is None:
        return []
    a, _, target = hit
    return [
        T.DocumentHighlight(
            range=to_range(f.span, f.text, ls.codec()),
            kind=T.DocumentHighlightKind.Write if f.declaration else T.DocumentHighlightKind.Read,
        )
        for f in occurrences_of(ls, a, target)
        if f.path == a.path
    ]


def prepare_rename(ls: LayerServer, uri: str, position: T.Position) -> T.PrepareRenamePlaceholder | None:
    hit = target_at(ls, uri, position)
    if hit is None:
        return None
    a, occ, target = hit
    return T.PrepareRenamePlaceholder(range=to_range(occ.span, a.text, ls.codec()), placeholder=target.name)


class RenameError(ValueError):
    """The new name cannot be used (answered to the client as an error)."""


def rename(ls: LayerServer, params: T.RenameParams) -> T.WorkspaceEdit | None:
    hit = target_at(ls, params.text_document.uri, params.position)
    if hit is None:
        return None
    a, _, target = hit
    new = params.new_name
    if not _IDENTIFIER.fullmatch(new) or new in RESERVED or new in ("True", "False", "None"):
        raise RenameError(f"'{new}' cannot be a name")
    changes: dict[str, list[T.TextEdit]] = {}
    for f in occurrences_of(ls, a, target):
        edit = T.TextEdit(range=to_range(f.span, f.text, ls.codec()), new_text=new)
        changes.setdefault(_uri(a, f.path), []).append(edit)
    return T.WorkspaceEdit(changes=changes)
