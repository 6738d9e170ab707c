"""A spec over the parser's size or token limit (`syntax.parser.over_size_limit`) is not parsed; this module
reads its declarations line by line instead, for the outline (document symbols), go to definition and hover
within the document. The scan looks at the start of each line only (a layer's header, a member's line, a
`forward`/`backward`), of the first MAX_SCANNED characters, and keeps at most MAX_SCANNED_SYMBOLS
declarations, so hostile input costs time and memory in proportion to those bounds; what the scan reads
is a declaration's name and line, nothing of its meaning (the user splits the spec to get the rest)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from lsprotocol import types as T

from layerdsl.syntax.parser import MAX_SOURCE_CHARS, over_size_limit
from layerdsl.tools.lsp.documents import Analysis, LayerServer
from layerdsl.tools.lsp.positions import from_position, to_position

MAX_SCANNED = 4 * MAX_SOURCE_CHARS  # characters of an over-limit spec scanned
MAX_SCANNED_SYMBOLS = 5000  # declarations kept
_HEAD = 400  # characters of a line looked at

_LAYER = re.compile(r"((?:@[A-Za-z_]\w*\s+)*)layer\s+([A-Za-z_]\w*)")
_ARG = re.compile(r"([A-Za-z_]\w*)\s*:")
_MEMBER = re.compile(r"(param|transient\s+buffer|buffer|sub|let)\s+([A-Za-z_][\w{}]*)")
_BLOCK = re.compile(r"(forward|backward)\b")
_WORD = re.compile(r"[A-Za-z_][\w{}]*")


@dataclass
class Declared:
    """A declaration the scan found: its kind (`layer`, `arg`, `param`, `sub`, ...), name, 1-based line
    and column (code points), and the line as written."""

    kind: str
    name: str
    line: int
    col: int
    written: str


@dataclass
class ScannedLayer:
    layer: Declared
    end_line: int
    members: list[Declared] = field(default_factory=list)


def over_limit(a: Analysis) -> bool:
    """Whether the document is over the parser's limits (not parsed: only this scan reads it)."""
    if a.spec is not None or not a.diagnostics:
        return False
    # documents.limit_at_start adds to the parser's message where the limit was passed, and what the server reads
    d = a.diagnostics[0]
    return over_size_limit(
        replace(d, message=d.message.split(" (the first token", 1)[0].split(": the language server", 1)[0])
    )


def scan(text: str) -> tuple[list[ScannedLayer], bool]:
    """The layers declared in the first MAX_SCANNED characters of `text`, with their members; True when
    the scan stopped at a bound (the rest unread)."""
    layers: list[ScannedLayer] = []
    count, cut = 0, len(text) > MAX_SCANNED
    lines = text[:MAX_SCANNED].split("\n")
    for n, full in enumerate(lines, start=1):
        head = full[:_HEAD]
        body = head.lstrip()
        col = len(head) - len(body) + 1
        m = _LAYER.match(body)
        if m is not None and col == 1:
            if layers:
                layers[-1].end_line = n - 1
            name_col = col + m.start(2)
            layer = ScannedLayer(Declared("layer", m.group(2), n, name_col, head.strip()), len(lines))
            opened = body.find("(", m.end())
            if opened >= 0:
                for a in _ARG.finditer(body, opened + 1, body.find(")", opened) % (len(body) + 1)):
                    layer.members.append(Declared("arg", a.group(1), n, col + a.start(1), head.strip()))
            layers.append(layer)
            count += 1 + len(layer.members)
        elif layers and (m := _MEMBER.match(body)) is not None:
            kind = " ".join(m.group(1).split())
            layers[-1].members.append(Declared(kind, m.group(2), n, col + m.start(2), head.strip()))
            count += 1
        elif layers and (m := _BLOCK.match(body)) is not None:
            layers[-1].members.append(Declared(m.group(1), m.group(1), n, col, head.strip()))
            count += 1
        if count >= MAX_SCANNED_SYMBOLS:
            return layers, True
    return layers, cut


_KINDS = {
    "param": T.SymbolKind.Field,
    "buffer": T.SymbolKind.Variable,
    "transient buffer": T.SymbolKind.Variable,
    "sub": T.SymbolKind.Module,
    "let": T.SymbolKind.Constant,
    "forward": T.SymbolKind.Method,
    "backward": T.SymbolKind.Method,
}


def _range(lines: list[str], d: Declared, codec) -> T.Range:
    start = to_position(lines, d.line, d.col, codec)
    return T.Range(start=start, end=to_position(lines, d.line, d.col + len(d.name), codec))


def scanned_symbols(a: Analysis, codec) -> list[T.DocumentSymbol]:
    """The outline of an over-limit spec: its layers and their members as the scan finds them."""
    layers, cut = scan(a.text)
    lines = a.text[:MAX_SCANNED].split("\n")
    out = []
    for s in layers:
        children = [
            T.DocumentSymbol(
                name=d.name,
                kind=_KINDS[d.kind],
                detail=d.kind,
                range=_range(lines, d, codec),
                selection_range=_range(lines, d, codec),
            )
            for d in s.members
            if d.kind != "arg"
        ]
        end = to_position(lines, s.end_line, len(lines[s.end_line - 1]) + 1, codec)
        whole = T.Range(start=T.Position(line=s.layer.line - 1, character=0), end=end)
        detail = "(over the size limit: outline only" + (", the rest unread)" if cut else ")")
        sel = _range(lines, s.layer, codec)
        out.append(
            T.DocumentSymbol(
                name=s.layer.name,
                kind=T.SymbolKind.Class,
                detail=detail,
                range=whole,
                selection_range=sel,
                children=children,
            )
        )
    return out


def _declared_at(ls: LayerServer, a: Analysis, position: T.Position) -> tuple[Declared, str] | None:
    """The declaration the word under the cursor names (the cursor's layer's, else a layer), and the word."""
    line, col = from_position(a.text, position, ls.codec())
    lines = a.text[:MAX_SCANNED].split("\n")
    if line > len(lines):
        return None
    text = lines[line - 1]
    lo = max(0, col - 1 - _HEAD)
    word = next((m for m in _WORD.finditer(text, lo, col - 1 + _HEAD) if m.start() <= col - 1 <= m.end()), None)
    if word is None:
        return None
    name = word.group()
    layers, _ = scan(a.text)
    here = next((s for s in reversed(layers) if s.layer.line <= line), None)
    if here is not None:
        found = next((d for d in here.members if d.name == name and d.kind not in ("forward", "backward")), None)
        if found is not None:
            return found, name
    found = next((s.layer for s in layers if s.layer.name == name), None)
    return (found, name) if found is not None else None


def scanned_definition(ls: LayerServer, a: Analysis, position: T.Position) -> T.Location | None:
    hit = _declared_at(ls, a, position)
    if hit is None:
        return None
    lines = a.text[:MAX_SCANNED].split("\n")
    return T.Location(uri=a.uri, range=_range(lines, hit[0], ls.codec()))


def scanned_hover(ls: LayerServer, a: Analysis, position: T.Position) -> T.Hover:
    """The declaring line of the name under the cursor, and why no more is known."""
    why = (
        "This spec is over the size limit: the language server reads only its declarations, line by line"
        " (outline, go to definition); split it into several specs for the rest."
    )
    hit = _declared_at(ls, a, position)
    if hit is None:
        return T.Hover(contents=T.MarkupContent(kind=T.MarkupKind.Markdown, value=why))
    d, _ = hit
    value = f"```layer\n{d.written[:_HEAD]}\n```\n({d.kind}, line {d.line})\n\n{why}"
    return T.Hover(contents=T.MarkupContent(kind=T.MarkupKind.Markdown, value=value))


@dataclass
class Scanned:
    """An over-limit document's scanned features, for one request."""

    ls: LayerServer
    a: Analysis

    def symbols(self) -> list[T.DocumentSymbol]:
        return scanned_symbols(self.a, self.ls.codec())

    def definition(self, position: T.Position) -> T.Location | None:
        return scanned_definition(self.ls, self.a, position)

    def hover(self, position: T.Position) -> T.Hover:
        return scanned_hover(self.ls, self.a, position)


def scanned_at(ls: LayerServer, uri: str) -> Scanned | None:
    """The document's scanned features when it is over the parser's limits (None: it is parsed)."""
    a = ls.analyze(uri, check=False)
    return Scanned(ls, a) if over_limit(a) else None
