"""Rename of a family of params (`param w_l{k}: [d, d]` in `for k in range(n) { ... }`): the family's
name, its stem and suffix around the `{k}`, is renamed wherever the family is named: its declaration,
its `w_l{k}` reads, and its members' names (`w_l0`, read in the declaring layer, or through a sub in any
spec of the workspace, `blk.w_l0` and `init blk.w_l0 = ...`). Each use keeps its own index (`{j}`, `0`).
The new name is the family's form (`v_l{k}`, the index's name ignored) or a stem (`v_l`: the suffix is
kept). A new name whose members another name of the layer already is, or another family's, is refused."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

from lsprotocol import types as T
from pygls.uris import from_fs_path

from layerdsl.diagnostics import Span
from layerdsl.ir import nodes as N
from layerdsl.tools.lsp.documents import Analysis, LayerServer, parse_document
from layerdsl.tools.lsp.layer_index import VisibleLayers
from layerdsl.tools.lsp.navigation import Occurrence, layer_occurrences, occurrence_at, resolve_name
from layerdsl.tools.lsp.positions import from_position, to_range
from layerdsl.tools.lsp.references import RenameError

_STEM = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_FORM = re.compile(r"([A-Za-z][A-Za-z0-9_]*)\{\s*(?:[A-Za-z_][A-Za-z0-9_]*)?\s*\}([A-Za-z0-9_]*)")
_DECLARING = ("arg", "tensor", "sub", "let", "input", "target", "loop", "repeat")
_OVERLAP_CHECKED = 100  # member indices compared with another family's (`w{k}` and `w1{k}` share `w10`)


@dataclass
class Family:
    """A family: the layer declaring it (in the spec file `path`) and its declaration."""

    path: str
    layer: N.Layer
    tensor: N.Tensor

    @property
    def prefix(self) -> str:
        return self.tensor.name.partition("{}")[0]

    @property
    def suffix(self) -> str:
        return self.tensor.name.partition("{}")[2]

    def is_member(self, name: str) -> bool:
        """`w_l0` of `w_l{k}`."""
        return is_member(name, self.prefix, self.suffix)

    def same(self, path: str, layer: N.Layer) -> bool:
        return os.path.abspath(path) == os.path.abspath(self.path) and layer.name == self.layer.name


def is_member(name: str, prefix: str, suffix: str) -> bool:
    middle = name[len(prefix) : len(name) - len(suffix)] if len(name) > len(prefix) + len(suffix) else ""
    return name.startswith(prefix) and name.endswith(suffix) and middle.isdigit()


@dataclass
class Use:
    """Where the family is named in the spec file at `path`: the written name at `span` (one line), which
    starts with the family's stem and ends with its suffix."""

    path: str
    text: str
    span: Span
    declaration: bool = False


def _families(layer: N.Layer) -> list[N.Tensor]:
    return [t for t in layer.tensors if t.repeat is not None and "{}" in t.name]


def _member_family(layer: N.Layer, name: str) -> N.Tensor | None:
    return next((t for t in _families(layer) if is_member(name, *t.name.split("{}", 1)[:2])), None)


def _sub_layer(seen: Analysis, layer: N.Layer, sub_name: str) -> N.Layer | None:
    sub = next((s for s in layer.subs if s.name == sub_name), None)
    return seen.layers.get(sub.call.func) if sub is not None and sub.repeat is None else None


def _family_of(a: Analysis, occ: Occurrence, layer: N.Layer) -> tuple[Family, Span] | None:
    """The family the occurrence names, with the span of its written name (the member part of `blk.w_l0`)."""
    node, span = occ.node, occ.span
    if occ.kind == "tensor" and isinstance(node, N.Tensor) and node in _families(layer):
        return Family(layer.path or a.path, layer, node), span
    if occ.kind == "name" and isinstance(node, N.FamilyName):
        t = layer.tensor(node.id)
        return (Family(layer.path or a.path, layer, t), span) if t is not None and t.repeat is not None else None
    if occ.kind == "name" and "." not in occ.name:
        t = _member_family(layer, occ.name)
        if t is not None and resolve_name(layer, occ.name, span) is None:
            return Family(layer.path or a.path, layer, t), span
        return None
    if occ.kind == "name" or (occ.kind == "member" and isinstance(node, N.Reinit)):
        if isinstance(node, N.Reinit) and occ.kind == "member":
            sub_name, member = node.sub, node.member
        else:
            sub_name, _, member = occ.name.partition(".")
        other = _sub_layer(a, layer, sub_name)
        t = _member_family(other, member) if other is not None else None
        if other is None or t is None:
            return None
        if occ.kind == "name":
            span = Span(span.line, span.col + len(sub_name) + 1, span.end_line, span.end_col)
        return Family(other.path or a.path, other, t), span
    return None


def family_at(ls: LayerServer, uri: str, position: T.Position) -> tuple[Analysis, Family, Span] | None:
    """The family named under the cursor (None: no family there)."""
    a = ls.usable(uri)
    if a is None:
        return None
    line, col = from_position(a.text, position, ls.codec())
    hit = occurrence_at(a, line, col)
    if hit is None:
        return None
    found = _family_of(a, *hit)
    return None if found is None else (a, *found)


def prepare_family_rename(ls: LayerServer, uri: str, position: T.Position) -> T.PrepareRenamePlaceholder | None:
    """The written name under the cursor, and the family's name as declared, when it names a family."""
    hit = family_at(ls, uri, position)
    if hit is None:
        return None
    a, family, span = hit
    return T.PrepareRenamePlaceholder(range=to_range(span, a.text, ls.codec()), placeholder=family.tensor.written)


def _uses_in(family: Family, seen: Analysis, path: str, text: str, layers: list[N.Layer]) -> list[Use]:
    """The family's uses in one spec file's layers."""
    uses = []
    for layer in layers:
        own = family.same(layer.path or path, layer)
        subs = set()
        for s in layer.subs:
            other = _sub_layer(seen, layer, s.name)
            if other is not None and family.same(other.path or path, other):
                subs.add(s.name)
        if not own and not subs:
            continue
        for occ in layer_occurrences(layer):
            if own and occ.kind == "tensor" and occ.node is family.tensor:
                uses.append(Use(path, text, occ.span, declaration=True))
            elif own and occ.kind == "name" and isinstance(occ.node, N.FamilyName) and occ.name == family.tensor.name:
                uses.append(Use(path, text, occ.span))
            elif own and occ.kind == "name" and family.is_member(occ.name):
                if resolve_name(layer, occ.name, occ.span) is None:
                    uses.append(Use(path, text, occ.span))
            elif occ.kind == "name" and "." in occ.name:
                base, member = occ.name.split(".", 1)
                if base in subs and family.is_member(member):
                    at = occ.span
                    uses.append(Use(path, text, Span(at.line, at.col + len(base) + 1, at.end_line, at.end_col)))
            elif occ.kind == "member" and isinstance(occ.node, N.Reinit):
                if occ.node.sub in subs and family.is_member(occ.node.member):
                    uses.append(Use(path, text, occ.span))
    return uses


def family_uses(
    ls: LayerServer, a: Analysis, family: Family, strict: bool = True, everywhere: bool = True
) -> list[Use]:
    """Every use of the family: in this document and (when `everywhere`) in the workspace's specs whose
    text declares it or reads a member through a sub (only those are parsed). When `strict` (a rename), a
    spec among them with a syntax error is refused (its unread lines may name it)."""
    layers = a.spec.layers if a.spec is not None else []
    if a.partial and strict:
        raise RenameError("this spec has a syntax error: fix it first, so that every use of the family is renamed")
    uses = _uses_in(family, a, a.path, a.text, layers)
    if not everywhere:
        return uses
    ws = ls.current_workset(a)
    index = ws.index.reading(ls.readable_spec) if ws.index is not None else None
    named = _naming(family)
    for path, text in ws.sources.items():
        if path == a.path or family.prefix not in text or not named.search(text):  # (`in` first: far faster)
            continue
        spec, repaired = ls.readable(path, text)
        if spec is None:
            continue
        if repaired and strict:
            name = os.path.relpath(path, os.path.dirname(a.path))
            raise RenameError(f"{name} has a syntax error and may name this family: fix it first")
        seen = replace(a, layers=VisibleLayers(index, [], seen_from=path))
        uses += _uses_in(family, seen, path, text, spec.layers)
    return uses


def _naming(family: Family) -> re.Pattern[str]:
    """What a spec that names the family has in its text: its declaration (`w_l{`) or a member read
    through a sub (`blk.w_l0`, also in `init blk.w_l0 = ...`); the only specs parsed."""
    p, s = re.escape(family.prefix), re.escape(family.suffix)
    return re.compile(rf"(?<![A-Za-z0-9_]){p}\{{|[A-Za-z0-9_]\.{p}[0-9]+{s}(?![A-Za-z0-9_])")


def _new_name(family: Family, new: str) -> tuple[str, str]:
    """The new stem and suffix: `v_l{k}_rev` gives both; `v_l` is a stem (the suffix is kept)."""
    form = _FORM.fullmatch(new)
    if form is not None:
        return form.group(1), form.group(2)
    if _STEM.fullmatch(new):
        return new, family.suffix
    raise RenameError(
        f"'{new}' cannot name a family: write it as the family is written, "
        f"`{family.prefix}{{k}}{family.suffix}` renamed (e.g. `v{{k}}{family.suffix}`), or give a new stem"
    )


def _refuse_clash(family: Family, prefix: str, suffix: str) -> None:
    """Refuse a new name one of whose members another name of the declaring layer already is, or that
    shares members with another family of the layer."""
    written = f"{prefix}{{{family.tensor.repeat.var.id if family.tensor.repeat else 'k'}}}{suffix}"
    for occ in layer_occurrences(family.layer):
        if occ.kind in _DECLARING and occ.node is not family.tensor and is_member(occ.name, prefix, suffix):
            raise RenameError(
                f"'{written}' would clash: its member '{occ.name}' is already a name of layer"
                f" '{family.layer.name}' (line {occ.span.line}): choose another"
            )
    for other in _families(family.layer):
        if other is family.tensor:
            continue
        o_prefix, o_suffix = other.name.split("{}", 1)
        shared = next(
            (
                f"{prefix}{i}{suffix}"
                for i in range(_OVERLAP_CHECKED)
                if is_member(f"{prefix}{i}{suffix}", o_prefix, o_suffix)
            ),
            None,
        )
        if shared is not None:
            raise RenameError(
                f"'{written}' would clash with the family '{other.written}' (line {other.span.line}):"
                f" both would have a member '{shared}': choose another"
            )


def family_rename(ls: LayerServer, params: T.RenameParams) -> T.WorkspaceEdit | None:
    """The edits renaming the family under the cursor (None: no family there)."""
    hit = family_at(ls, params.text_document.uri, params.position)
    if hit is None:
        return None
    a, family, _ = hit
    prefix, suffix = _new_name(family, params.new_name.strip())
    if (prefix, suffix) == (family.prefix, family.suffix):
        return T.WorkspaceEdit(changes={})
    _refuse_clash(family, prefix, suffix)
    uses = family_uses(ls, a, family)
    _refuse_unchecked(ls, a, [u for u in uses if u.path == a.path], family, (prefix, suffix))
    changes: dict[str, list[T.TextEdit]] = {}
    for use in uses:
        s = use.span
        line = use.text.split("\n")[s.line - 1] if s.line == s.end_line else ""
        written = line[s.col - 1 : s.end_col - 1]
        if not (written.startswith(family.prefix) and written.endswith(family.suffix)):
            continue  # (not written as parsed: never so)
        uri = a.uri if use.path == a.path else from_fs_path(use.path) or use.path
        at_prefix = Span(s.line, s.col, s.line, s.col + len(family.prefix))
        at_suffix = Span(s.line, s.end_col - len(family.suffix), s.line, s.end_col)
        edits = changes.setdefault(uri, [])
        edits.append(T.TextEdit(range=to_range(at_prefix, use.text, ls.codec()), new_text=prefix))
        if suffix != family.suffix:
            edits.append(T.TextEdit(range=to_range(at_suffix, use.text, ls.codec()), new_text=suffix))
    return T.WorkspaceEdit(changes=changes)


def _refuse_unchecked(ls: LayerServer, a: Analysis, uses: list[Use], family: Family, new: tuple[str, str]) -> None:
    """Refuse a rename after which the document, clean before, would not parse or check (`for{k}`: a
    keyword), with the first problem."""
    a = ls.analyze(a.uri, check=True)
    if a.spec is None or a.diagnostics or a.partial or a.workset is None or not uses:
        return
    lines = a.text.split("\n")
    for use in sorted(uses, key=lambda u: (u.span.line, -u.span.col)):
        s, line = use.span, lines[use.span.line - 1]
        middle = line[s.col - 1 + len(family.prefix) : s.end_col - 1 - len(family.suffix)]
        lines[s.line - 1] = line[: s.col - 1] + new[0] + middle + new[1] + line[s.end_col - 1 :]
    text = "\n".join(lines)
    spec, problems, _ = parse_document(a.path, text)
    if spec is not None and not problems:
        problems, _, _ = ls.check(a.path, text, spec, a.workset)
    if problems:
        raise RenameError(f"renaming to '{new[0]}{{k}}{new[1]}': {problems[0].message}")


def family_references(ls: LayerServer, params: T.ReferenceParams) -> list[T.Location] | None:
    """Every use of the family under the cursor, across the workspace (None: no family there)."""
    hit = family_at(ls, params.text_document.uri, params.position)
    if hit is None:
        return None
    a, family, _ = hit
    return [
        T.Location(
            uri=a.uri if u.path == a.path else from_fs_path(u.path) or u.path,
            range=to_range(u.span, u.text, ls.codec()),
        )
        for u in family_uses(ls, a, family, strict=False)
        if params.context.include_declaration or not u.declaration
    ]


def family_highlights(ls: LayerServer, uri: str, position: T.Position) -> list[T.DocumentHighlight] | None:
    """The family's uses in this document: its declaration (write) and its reads (None: no family there)."""
    hit = family_at(ls, uri, position)
    if hit is None:
        return None
    a, family, _ = hit
    return [
        T.DocumentHighlight(
            range=to_range(u.span, u.text, ls.codec()),
            kind=T.DocumentHighlightKind.Write if u.declaration else T.DocumentHighlightKind.Read,
        )
        for u in family_uses(ls, a, family, strict=False, everywhere=False)
    ]
