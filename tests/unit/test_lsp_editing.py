"""Correctness under editing, as a property: random edit sequences (insertions of whole and half-typed
tokens, deletions; more than 300 edits in all) never make a feature raise, and after each edit the
positions the server answers with (document symbols, hover ranges, semantic tokens, references) are
those of the current text: each names what is written there, and they equal a fresh server's answers
for the same text (no state carried over from an older version)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lsprotocol import types as T
from pygls.workspace import Workspace

from layerdsl.tools.lsp.completion import completion_items
from layerdsl.tools.lsp.documents import LayerServer
from layerdsl.tools.lsp.folding import folding_ranges
from layerdsl.tools.lsp.hover import hover_at
from layerdsl.tools.lsp.inlay_hints import inlay_hints
from layerdsl.tools.lsp.navigation import layer_occurrences
from layerdsl.tools.lsp.semantic_tokens import semantic_tokens
from layerdsl.tools.lsp.signature_help import signature_help
from layerdsl.tools.lsp.symbols import document_symbols

SPEC = """\
layer Block(n: int, m: int = 2) {
    \"\"\"A block.\"\"\"
    let half = n / 2
    param weight: [n, m] = xavier_uniform(gain = 1)
    param bias: [m] = zeros
    example(n = 4)

    forward(x: [B, n]) -> [B, m] {
        h = x @ weight
        if training {
            h = h * 2
        }
        return softmax(h + bias, dim = -1)
    }
}
"""

TOKENS = [
    "weight", "wei", "bias", "h", "x", " ", "\n", "(", ")", "{", "}", "[", "]", ",", " = ", "=", "@", "+",
    "relu(", "softmax(h", "param ", "par", "let k = ", "forward", "return ", "if ", "else", "#", '"', '"""',
    "1", "2.5", "-", "layer Z() {", "sub s = Block(n)", "example(", "dim = ", "True",
]  # fmt: skip

ROOT = Path("/nonexistent-layerdsl-ws")


def _server(text: str) -> tuple[LayerServer, str]:
    server = LayerServer()
    server.protocol._workspace = Workspace(ROOT.as_uri(), T.TextDocumentSyncKind.Full, [])
    uri = (ROOT / "edit.layer").as_uri()
    server.workspace.put_text_document(T.TextDocumentItem(uri=uri, language_id="layer", version=1, text=text))
    return server, uri


def _set_text(server: LayerServer, uri: str, text: str, version: int) -> None:
    server.workspace.update_text_document(
        T.VersionedTextDocumentIdentifier(uri=uri, version=version),
        T.TextDocumentContentChangeWholeDocument(text=text),
    )


def _slice(text: str, r: T.Range) -> str:
    lines = text.split("\n")
    if r.start.line != r.end.line:
        return ""
    return lines[r.start.line][r.start.character : r.end.character]


@st.composite
def edits(draw):
    """(offset fraction, delete count, inserted text) triples."""
    n = draw(st.integers(min_value=22, max_value=30))  # 14 sequences: at least 308 edits
    return [
        (
            draw(st.floats(min_value=0, max_value=1)),
            draw(st.sampled_from([0, 0, 0, 1, 2, 5])),
            draw(st.sampled_from(TOKENS)) if draw(st.booleans()) else "",
        )
        for _ in range(n)
    ]


def _answers(server: LayerServer, uri: str) -> tuple:
    """Every position-bearing answer for the current text, checked against the text as it goes."""
    text = server.workspace.get_text_document(uri).source
    a = server.usable(uri)
    symbols = document_symbols(a, server.codec()) if a is not None else []
    for s in symbols:  # a selection range names its symbol
        assert _slice(text, s.selection_range) == s.name
        for c in s.children or []:
            assert _slice(text, c.selection_range) in (c.name, c.name.split()[0])
    hovers = []
    for layer in a.spec.layers if a is not None and a.spec is not None else []:
        for occ in layer_occurrences(layer)[:40]:
            if occ.kind == "decorator":
                continue
            pos = T.Position(occ.span.line - 1, occ.span.col - 1)
            h = hover_at(server, uri, pos)
            if h is not None and h.range is not None:
                assert _slice(text, h.range) == occ.name
                hovers.append((h.range.start.line, h.range.start.character, h.contents.value))  # type: ignore[union-attr]
    tokens = semantic_tokens(server, uri).data
    assert len(tokens) % 5 == 0
    folding_ranges(text)
    end = T.Position(len(text.split("\n")) - 1, 0)
    completion_items(server, uri, end)
    signature_help(server, uri, end)
    inlay_hints(server, uri, T.Range(T.Position(0, 0), end))
    server.analyze(uri)  # the diagnostics' analysis
    return [(s.name, s.selection_range) for s in symbols], hovers, tokens


@settings(max_examples=14, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(edits())
def test_random_edits_never_crash_and_answer_at_the_current_positions(sequence):
    server, uri = _server(SPEC)
    text = SPEC
    for version, (where, delete, insert) in enumerate(sequence, start=2):
        at = int(where * len(text))
        text = text[:at] + insert + text[at + delete :]
        _set_text(server, uri, text, version)
        answers = _answers(server, uri)
        fresh, fresh_uri = _server(text)
        assert _answers(fresh, fresh_uri) == answers
