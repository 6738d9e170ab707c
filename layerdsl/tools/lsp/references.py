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
from layerdsl.language.ops import CALLABLE
from layerdsl.language.tables import ARG_TYPES, CONSTANTS, INITS, RESERVED
from layerdsl.tools.lsp.documents import Analysis, LayerServer, parse_document, recover
from layerdsl.tools.lsp.layer_index import LayerIndex, VisibleLayers
from layerdsl.tools.lsp.navigation import Occurrence, Target, layer_occurrences, occurrence_at, resolve
from layerdsl.tools.lsp.positions import from_position, to_range
from layerdsl.tools.lsp.scanning import code_characters

RENAMABLE = {"arg", "param", "buffer", "sub", "let", "input", "local", "dim", "grad", "index", "layer"}
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

Key = tuple[str, int, int]  # a declaration: its file, line and column


@dataclass
class SpecText:
    """A spec file the occurrences are looked for in: its path, text and layers (`repaired`: the layers of
    its repaired parse, which may miss what the lines it blanked wrote)."""

    path: str
    text: str
    layers: list[N.Layer]
    repaired: bool = False


@dataclass
class Found:
    """One occurrence of the declaration looked for, in the file at `path`; not `sure` when it is only the
    name's word in code a repaired parse left out (what it means there is unknown)."""

    path: str
    text: str
    span: Span
    declaration: bool
    sure: bool = True


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
    (only those are parsed: a folder may hold thousands; one that does not parse is repaired as an open
    document is), with the index their folders' layers are looked up in (the repaired specs' too)."""
    layers = a.spec.layers if a.spec is not None else []
    files = [SpecText(a.path, a.text, layers, a.partial)]
    if not everywhere:
        return files, None
    ws = ls.current_workset(a)  # specs opened since the analysis count
    word = naming(name)
    for path, text in ws.sources.items():
        if path == a.path or name not in text or not word.search(text):  # (`in` first: far faster)
            continue
        spec, repaired = ls.readable(path, text)
        if spec is not None:
            files.append(SpecText(path, text, spec.layers, repaired))
    return files, ws.index.reading(ls.readable_spec) if ws.index is not None else None


def _unplaced(f: SpecText, name: str, placed: set[tuple[int, int]]) -> list[Span]:
    """The words `name` in the code of a repaired spec that no occurrence of its layers starts at (the
    lines its repair blanked): nothing says what they mean."""
    if not f.repaired:
        return []
    code = [" "] * len(f.text)
    for i, c in code_characters(f.text):
        code[i] = c
    text = "".join(code)
    spans = []
    for m in naming(name).finditer(text):
        if m.start() > 0 and text[m.start() - 1] == ".":
            continue  # a method or a member of something else (`nn.Linear`, `outputs.append`)
        line = text.count("\n", 0, m.start()) + 1
        col = m.start() - text.rfind("\n", 0, m.start())
        if (line, col) not in placed:
            spans.append(Span(line, col, line, col + len(name)))
    return spans


def occurrences_of(ls: LayerServer, a: Analysis, target: Target, other_files: bool = True) -> list[Found]:
    """Every occurrence meaning `target`: in this document for what is local to a layer, in every spec
    of the workspace for a layer and its arguments (unless not `other_files`); in a spec with a syntax
    error, also the name's words its repaired parse left out, as not `sure`."""
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
        placed = set()
        for layer in f.layers:
            for occ in layer_occurrences(layer):
                if occ.name != target.name:
                    continue
                placed.add((occ.span.line, occ.span.col))
                meant = resolve(seen, occ, layer)
                if meant is not None and _key(meant, f.path) == key:
                    found.append(Found(f.path, f.text, occ.span, (occ.span.line, occ.span.col) == key[1:]))
        found += [Found(f.path, f.text, span, False, sure=False) for span in _unplaced(f, target.name, placed)]
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
            kind=(
                T.DocumentHighlightKind.Write
                if f.declaration
                else T.DocumentHighlightKind.Read if f.sure else T.DocumentHighlightKind.Text
            ),
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
    found = occurrences_of(ls, a, target)
    _refuse_unsure(a, target.name, found)
    if new != target.name:
        _refuse_taken(ls, a, target, new, found)
    changes: dict[str, list[T.TextEdit]] = {}
    for f in found:
        edit = T.TextEdit(range=to_range(f.span, f.text, ls.codec()), new_text=new)
        changes.setdefault(_uri(a, f.path), []).append(edit)
    return T.WorkspaceEdit(changes=changes)


def _refuse_unsure(a: Analysis, name: str, found: list[Found]) -> None:
    """Refuse a rename that would leave behind the name's words in lines a syntax error keeps unread (it
    cannot say whether they mean the name renamed): the user fixes the error first."""
    unsure = [f for f in found if not f.sure]
    if not unsure:
        return
    where = ", ".join(
        f"{os.path.relpath(f.path, os.path.dirname(a.path))}:{f.span.line}:{f.span.col}" for f in unsure[:3]
    )
    more = f" and {len(unsure) - 3} more" if len(unsure) > 3 else ""
    raise RenameError(
        f"'{name}' is also written at {where}{more}, in a spec with a syntax error that keeps those lines"
        " unread: fix the error first, so that every use is renamed"
    )


def _refuse_taken(ls: LayerServer, a: Analysis, target: Target, new: str, found: list[Found]) -> None:
    """Refuse a rename to a name already taken: a builtin's, another layer's where the layer is named, or
    one that would change what a name of the declaring file means (a capture either way)."""
    if new in CALLABLE or new in INITS or new in CONSTANTS or new == "training" or new in ARG_TYPES + ("nn",):
        raise RenameError(f"'{new}' is a builtin's name: choose another")
    if target.kind == "layer":
        index = a.layers.index
        for path in {f.path for f in found}:
            taken = index.candidates(new, path) if index is not None else []
            if new in a.names or taken:
                raise RenameError(f"'{new}' is already a layer's name here: choose another")
        return
    key = _key(target, a.path)
    assert key is not None
    _refuse_capture(ls, a, key, (target.name, new), [f for f in found if f.path == key[0]])


def _refuse_capture(ls: LayerServer, a: Analysis, key: Key, names: tuple[str, str], edits: list[Found]) -> None:
    """Rename the declaration `key`'s occurrences `edits` (in its own file) to `new` in that file's text,
    and refuse when then a renamed occurrence means something else, or another `new` the renamed
    declaration; or (the open document, checked clean) when the checker objects."""
    (old, new), path = names, key[0]
    text = edits[0].text if edits else a.text
    shift = _shifts([(f.span.line, f.span.col) for f in edits], len(new) - len(old))
    new_text = _applied(text, edits, new)
    spec, diags, _ = parse_document(path, new_text)
    if spec is None or diags:
        if not diags:
            return
        spec = recover(path, new_text, diags[0]).spec
        if spec is None:
            return
    renamed = {shift(f.span.line, f.span.col) for f in edits}
    declared = (path, *shift(key[1], key[2]))
    own = VisibleLayers(a.layers.index, spec.layers, seen_from=None if path == a.path else path)
    seen = replace(a, spec=spec, text=new_text, layers=own)
    for layer in spec.layers:
        for occ in layer_occurrences(layer):
            if occ.name != new:
                continue
            meant = resolve(seen, occ, layer)
            means_it = meant is not None and _key(meant, path) == declared
            if means_it == ((occ.span.line, occ.span.col) in renamed):
                continue
            where = f"{os.path.basename(path)}:{occ.span.line}:{occ.span.col}"
            if means_it:
                raise RenameError(f"'{new}' is already a name there: the '{new}' at {where} would mean the renamed one")
            what = f"the {meant.kind} '{new}'" if meant is not None else f"'{new}'"
            raise RenameError(f"'{new}' is already a name there: the renamed '{old}' at {where} would mean {what}")
    if path == a.path and a.checked and not a.diagnostics and not a.partial and a.workset is not None:
        problems, _, _ = ls.check(path, new_text, spec, a.workset)
        if problems:
            raise RenameError(f"renaming to '{new}': {problems[0].message}")


def _shifts(starts: list[tuple[int, int]], delta: int):
    """Where a position of the text is once each name starting at `starts` grew by `delta` characters."""

    def shift(line: int, col: int) -> tuple[int, int]:
        return line, col + delta * sum(1 for at in starts if at[0] == line and at[1] < col)

    return shift


def _applied(text: str, edits: list[Found], new: str) -> str:
    """`text` with each of `edits`' spans (one line each) replaced by `new`."""
    lines = text.split("\n")
    for f in sorted(edits, key=lambda f: (f.span.line, -f.span.col)):
        line = lines[f.span.line - 1]
        lines[f.span.line - 1] = line[: f.span.col - 1] + new + line[f.span.end_col - 1 :]
    return "\n".join(lines)
