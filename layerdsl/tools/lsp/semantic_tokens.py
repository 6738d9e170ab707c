"""Semantic tokens: the whole document classified, so that clients without the TextMate grammar (Neovim,
Helix) highlight from the server. Names are classified by what they mean (`navigation.resolve` on the
current text's IR); keywords, numbers, strings, comments and operations by a scan of the text, which
also covers a half-typed document."""

from __future__ import annotations

import re

from lsprotocol import types as T

from layerdsl.language.ops import CALLABLE
from layerdsl.language.tables import INITS
from layerdsl.tools.lsp.documents import Analysis, LayerServer
from layerdsl.tools.lsp.navigation import layer_occurrences, resolve

TOKEN_TYPES = [
    "namespace",
    "class",
    "function",
    "parameter",
    "variable",
    "property",
    "typeParameter",
    "keyword",
    "number",
    "string",
    "comment",
    "decorator",
    "type",
]
TOKEN_MODIFIERS = ["declaration", "readonly", "defaultLibrary"]
LEGEND = T.SemanticTokensLegend(token_types=TOKEN_TYPES, token_modifiers=TOKEN_MODIFIERS)

KEYWORDS = frozenset(
    "layer param buffer transient sub let example forward backward return if else update grad "
    "true false none and or not for in".split()
)
TYPES = frozenset("int float bool str long fn".split())

# what a name means -> (token type, modifiers)
_BY_KIND: dict[str, tuple[str, tuple[str, ...]]] = {
    "layer": ("class", ()),
    "arg": ("parameter", ()),
    "param": ("property", ()),
    "buffer": ("property", ()),
    "sub": ("property", ()),
    "let": ("variable", ("readonly",)),
    "input": ("parameter", ()),
    "local": ("variable", ()),
    "dim": ("typeParameter", ()),
    "index": ("typeParameter", ()),
    "grad": ("variable", ()),
    "op": ("function", ("defaultLibrary",)),
    "init": ("function", ("defaultLibrary",)),
    "reduce": ("function", ("defaultLibrary",)),
    "nn": ("class", ("defaultLibrary",)),
    "const": ("variable", ("readonly", "defaultLibrary")),
    "training": ("variable", ("defaultLibrary",)),
    "op-param": ("parameter", ()),
    "decorator": ("decorator", ()),
}

_SCAN = re.compile(
    r'(?P<comment>#[^\n]*)|(?P<string>"""[\s\S]*?(?:"""|\Z)|"(?:\\.|[^"\\\n])*"?)'
    r"|(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<decorator>@[A-Za-z_]\w*)"
    r"|(?P<nn>\bnn\.)?(?P<name>[A-Za-z_]\w*)"
)


def _classified_names(a: Analysis) -> dict[tuple[int, int], tuple[str, tuple[str, ...]]]:
    """(line, col) of each name the IR knows -> its token type and modifiers."""
    out: dict[tuple[int, int], tuple[str, tuple[str, ...]]] = {}
    for layer in a.spec.layers if a.spec is not None else []:
        for occ in layer_occurrences(layer):
            if occ.kind == "decorator":
                continue
            target = resolve(a, occ, layer)
            if target is None:
                continue
            kind = "arg" if occ.kind == "kwarg" and target.kind in ("layer", "arg") else str(target.kind)
            found = _BY_KIND.get(kind)
            if found is None:
                continue
            token, modifiers = found
            if target.span is not None and (target.span.line, target.span.col) == (occ.span.line, occ.span.col):
                modifiers = (*modifiers, "declaration")
            out[(occ.span.line, occ.span.col)] = (token, modifiers)
    return out


def _scan(text: str, names: dict[tuple[int, int], tuple[str, tuple[str, ...]]]):
    """(line0, start char, length in code points, type, modifiers) for each token, in order; a token
    over several lines (a docstring) is cut into one per line."""
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    line = 0
    for m in _SCAN.finditer(text):
        start = m.start()
        while line + 1 < len(line_starts) and line_starts[line + 1] <= start:
            line += 1
        kind = m.lastgroup
        if kind == "name":
            word = m.group("name")
            start = m.start("name")
            col = start - line_starts[line]
            if m.group("nn"):
                yield line, col - 3, 2, "namespace", ()
                yield line, col, len(word), "class", ("defaultLibrary",)
                continue
            if word in KEYWORDS:
                yield line, col, len(word), "keyword", ()
            elif (line + 1, col + 1) in names:
                token, modifiers = names[(line + 1, col + 1)]
                yield line, col, len(word), token, modifiers
            elif word in TYPES:
                yield line, col, len(word), "type", ()
            elif word in CALLABLE or word in INITS:
                yield line, col, len(word), "function", ("defaultLibrary",)
            continue
        piece = m.group()
        col = start - line_starts[line]
        for i, part in enumerate(piece.split("\n")):
            if part:
                yield line + i, (col if i == 0 else 0), len(part), kind, ()
        line += piece.count("\n")


def semantic_tokens(ls: LayerServer, uri: str) -> T.SemanticTokens:
    """The document's tokens, encoded as LSP asks (relative positions, in the client's units)."""
    a = ls.usable(uri)
    text = ls.workspace.get_text_document(uri).source
    names = _classified_names(a) if a is not None and a.text == text else {}
    lines = text.split("\n")
    codec = ls.codec()
    data: list[int] = []
    prev_line = prev_char = 0
    for line, col, length, token, modifiers in _scan(text, names):
        src = lines[line] if line < len(lines) else ""
        char = codec.client_num_units(src[:col])
        units = codec.client_num_units(src[col : col + length])
        bits = sum(1 << TOKEN_MODIFIERS.index(m) for m in set(modifiers))
        delta_char = char - prev_char if line == prev_line else char
        data += [line - prev_line, delta_char, units, TOKEN_TYPES.index(token), bits]
        prev_line, prev_char = line, char
    return T.SemanticTokens(data=data)
