"""Find references, rename and document highlight: every occurrence that means the same declaration as
the one under the cursor (arguments, members, lets, inputs, locals, dims, index variables, gradients and
layers), across the workspace's spec files for what another file can name (layers and their arguments).
Of the other files only those whose text has the name as a word are parsed, and the layer names in them
are looked up lazily in their folder (layer_index.py): a folder may hold thousands of specs. A builtin's
name (an operation, an initialiser, torch.nn's, ...) is refused with the reason."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

from lsprotocol import types as T
from pygls.uris import from_fs_path

from layerdsl.diagnostics import Span
from layerdsl.ir import nodes as N
from layerdsl.language.tables import RESERVED
from layerdsl.tools.lsp.documents import Analysis, LayerServer
from layerdsl.tools.lsp.layer_index import LayerIndex, VisibleLayers
from layerdsl.tools.lsp.navigation import Occurrence, Target, layer_occurrences, occurrence_at, resolve
from layerdsl.tools.lsp.positions import from_position, to_range

RENAMABLE = {"arg", "param", "buffer", "sub", "let", "input", "local", "dim", "grad", "index", "layer"}
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

Key = tuple[str, int, int]  # a declaration: its file, line and column


@dataclass
class SpecText:
    """A spec file the occurrences are looked for in: its path, text and layers."""

    path: str
    text: str
    layers: list[N.Layer]


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


def _meant_at(ls: LayerServer, uri: str, position: T.Position) -> tuple[Analysis, Occurrence, Target] | None:
    """The analysis, the occurrence under the cursor and what it means (None: no name, or an unknown one)."""
    a = ls.usable(uri)
    if a is None:
        return None
    line, col = from_position(a.text, position, ls.codec())
    hit = occurrence_at(a, line, col)
    if hit is None:
        return None
    target = resolve(a, *hit)
    return None if target is None else (a, hit[0], target)


def target_at(ls: LayerServer, uri: str, position: T.Position) -> tuple[Analysis, Occurrence, Target] | None:
    """The analysis, the occurrence under the cursor and what it means (None: nothing renamable)."""
    hit = _meant_at(ls, uri, position)
    return hit if hit is not None and _key(hit[2], hit[0].path) is not None else None


_BUILTIN = {
    "op": "a builtin operation",
    "op-param": "a parameter of a builtin operation",
    "nn": "a torch.nn layer",
    "init": "a builtin initialiser",
    "reduce": "a builtin reduction",
    "decorator": "a decorator of the language",
    "const": "a builtin constant",
    "training": "the builtin training flag",
}


def builtin_refusal(occ: Occurrence, target: Target) -> str | None:
    """Why the name under the cursor cannot be renamed when it is a builtin's (None: it is not)."""
    if target.kind not in _BUILTIN:
        return None
    if target.kind == "init" and occ.kind == "kwarg":
        what = f"a parameter of the builtin initialiser '{target.name}'"
    else:
        what = _BUILTIN[target.kind]
    shown = {"nn": f"nn.{target.name}", "decorator": f"@{occ.name}"}.get(target.kind, occ.name)
    return f"'{shown}' is {what}: only the names a spec declares can be renamed"


def naming(name: str) -> re.Pattern[str]:
    """`name` as a whole word of a spec's text. Every occurrence of a name is its own word in the text (a
    letter or `_` never comes right before or after a name), so a spec without it as a word cannot name
    it; the words of comments and strings match too (such a spec is parsed and found not to)."""
    return re.compile(rf"(?<![A-Za-z_]){re.escape(name)}(?![A-Za-z0-9_])")


def _files(ls: LayerServer, a: Analysis, name: str, everywhere: bool) -> tuple[list[SpecText], LayerIndex | None]:
    """This document and, when `everywhere`, the workspace's other specs whose text has `name` as a word
    (only those are parsed: a folder may hold thousands), with the index their folders' layers are looked
    up in."""
    files = [SpecText(a.path, a.text, a.spec.layers if a.spec is not None else [])]
    if not everywhere:
        return files, None
    ws = ls.workset(a.path, a.text, a.spec)  # afresh: specs opened since the analysis count
    word = naming(name)
    for path, text in ws.sources.items():
        if path == a.path or name not in text or not word.search(text):  # (`in` first: far faster)
            continue
        spec = ls.pristine(path, text)
        if spec is not None:
            files.append(SpecText(path, text, spec.layers))
    return files, ws.index


def occurrences_of(ls: LayerServer, a: Analysis, target: Target, other_files: bool = True) -> list[Found]:
    """Every occurrence meaning `target`: in this document for what is local to a layer, in every spec
    of the workspace for a layer and its arguments (unless not `other_files`)."""
    key = _key(target, a.path)
    if key is None:
        return []
    # Other files name layers, arguments (as keywords) and members (`init out_proj.bias = ...`).
    everywhere = other_files and target.kind in ("layer", "arg", "param", "buffer")
    found = []
    files, index = _files(ls, a, target.name, everywhere)
    for f in files:
        # another file's layer names mean what its own folder sees (a folder is a namespace)
        seen = a if f.path == a.path else replace(a, layers=VisibleLayers(index, [], seen_from=f.path))
        for layer in f.layers:
            for occ in layer_occurrences(layer):
                if occ.name != target.name:
                    continue
                meant = resolve(seen, occ, layer)
                if meant is not None and _key(meant, f.path) == key:
                    found.append(Found(f.path, f.text, occ.span, (occ.span.line, occ.span.col) == key[1:]))
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
        for f in occurrences_of(ls, a, target, other_files=False)
    ]


class RenameError(ValueError):
    """The name cannot be renamed, or the new name cannot be used (answered to the client as an error)."""


def _renamable_at(ls: LayerServer, uri: str, position: T.Position) -> tuple[Analysis, Occurrence, Target] | None:
    """`target_at`, except that a builtin's name (an operation, torch.nn's, ...) is refused with the reason."""
    hit = _meant_at(ls, uri, position)
    if hit is None:
        return None
    a, occ, target = hit
    refusal = builtin_refusal(occ, target)
    if refusal is not None:
        raise RenameError(refusal)
    return hit if _key(target, a.path) is not None else None


def prepare_rename(ls: LayerServer, uri: str, position: T.Position) -> T.PrepareRenamePlaceholder | None:
    hit = _renamable_at(ls, uri, position)
    if hit is None:
        return None
    a, occ, target = hit
    return T.PrepareRenamePlaceholder(range=to_range(occ.span, a.text, ls.codec()), placeholder=target.name)


def rename(ls: LayerServer, params: T.RenameParams) -> T.WorkspaceEdit | None:
    hit = _renamable_at(ls, params.text_document.uri, params.position)
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
