"""The language server's round-21 gaps, driven over stdio as an editor drives it: the variable of a member
loop and of a list of subs (go to definition, references, rename, hover), one layer index per analysis
however many renames and reference searches follow, a spec over the token limit said so at its start in
bounded time, and quick fixes computed for the document's current version only."""

from __future__ import annotations

import itertools
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerdsl.tools.lsp.documents import parse_document
from tests.lsp_session import OpenDocument, StdioServer, initialised_stdio_server

IDS = itertools.count(100)

FAMILY = """\
layer Block(d: int) {
    param w: [d, d]
    example(d = 4)
    forward(x: [B, d]) -> [B, d] {
        return x @ w
    }
}

layer Family(d: int, n: int = 2) {
    for k in range(n) {
        param w_l{k}: [d, d if k == 0 else d] = uniform(-k, k)
        param b_l{k}: [d] = zeros if k > 0
    }
    sub blocks = [Block(d) for i in range(n)]
    sub more = [Block(d) for i in range(n)]
    example(d = 4)
    forward(x: [B, d]) -> [B, d] {
        h = x
        for k in range(n) {
            h = h @ w_l{k} + b_l{k}
        }
        for b in blocks {
            h = b(h)
        }
        for b in more {
            h = b(h)
        }
        return h
    }
}
"""


def _words(text: str, name: str, lines: range | None = None) -> set[tuple[int, int]]:
    """(line, column), 0-based, of each word `name` in the code of `text` (in `lines` only, when given)."""
    out = set()
    for n, line in enumerate(text.split("\n")):
        code = re.sub(r'"[^"]*"|#.*', lambda m: " " * len(m.group()), line)
        for m in re.finditer(rf"(?<![A-Za-z0-9_.]){name}(?![A-Za-z0-9_])", code):
            if lines is None or n in lines:
                out.add((n, m.start()))
    return out


def _starts(locations: list[dict]) -> set[tuple[int, int]]:
    return {(loc["range"]["start"]["line"], loc["range"]["start"]["character"]) for loc in locations}


def _edits(result: dict) -> set[tuple[int, int]]:
    return _starts([e for es in result["changes"].values() for e in es])


def _apply(text: str, edits: list[dict]) -> str:
    """Apply LSP text edits (ASCII text), from the last to the first."""
    offsets = list(itertools.accumulate((len(line) + 1 for line in text.split("\n")), initial=0))

    def offset(p: dict) -> int:
        return offsets[p["line"]] + p["character"]

    for e in sorted(edits, key=lambda e: offset(e["range"]["start"]), reverse=True):
        text = text[: offset(e["range"]["start"])] + e["newText"] + text[offset(e["range"]["end"]) :]
    return text


# ---------------------------------------------------------------- loop variables of members


MEMBER_LOOP = range(9, 13)  # the lines of `for k in range(n) { param ... }`
FORWARD_LOOP = range(18, 21)


def test_the_variable_of_a_member_loop_is_bound_in_its_members(stdio_lsp: StdioServer, tmp_path: Path):
    """The `k` of `for k in range(n) { param w_l{k}: [d, d if k == 0 else d] ... }` meant nothing: go to
    definition, references and rename missed it (and the `{k}` of the families' names)."""
    s = OpenDocument(stdio_lsp, tmp_path / "family.layer", FAMILY, IDS)
    assert s.diagnostics(version=1) == []
    declared = min(_words(FAMILY, "k", MEMBER_LOOP))
    uses = _words(FAMILY, "k", MEMBER_LOOP) - {declared}
    assert len(uses) == 6  # the two names' `{k}`, the shape's, the initialiser's two and the condition's
    for line, col in uses:
        found = s.ask("textDocument/definition", s.at(line, col))["result"]
        found = found[0] if isinstance(found, list) else found
        assert (found["range"]["start"]["line"], found["range"]["start"]["character"]) == declared, (line, col)
    for line, col in [declared, max(uses)]:
        refs = s.ask("textDocument/references", s.at(line, col, context={"includeDeclaration": True}))["result"]
        assert _starts(refs) == _words(FAMILY, "k", MEMBER_LOOP)
    hover = s.ask("textDocument/hover", s.at(*max(uses)))["result"]
    assert "(loop variable) k: int" in hover["contents"]["value"]
    renamed = s.ask("textDocument/rename", s.at(*declared, newName="layer_index"))["result"]
    assert _edits(renamed) == _words(FAMILY, "k", MEMBER_LOOP)  # not the forward's own `for k`
    text = _apply(FAMILY, renamed["changes"][s.uri])
    assert "param w_l{layer_index}: [d, d if layer_index == 0 else d]" in text and "@ w_l{k}" in text
    s.replace_text(text)
    assert s.diagnostics(version=2) == []  # the renamed spec checks clean


def test_the_forward_loop_and_the_lists_of_subs_keep_their_own_variables(stdio_lsp: StdioServer, tmp_path: Path):
    """The forward's `for k` is another `k` than the member loop's; each list of subs' `i` (the name bound
    twice, once per list) is its own declaration, which names nothing; each `for b in ...` over subs binds
    its own `b`."""
    s = OpenDocument(stdio_lsp, tmp_path / "family.layer", FAMILY, IDS)
    forward_k = _words(FAMILY, "k", FORWARD_LOOP)
    refs = s.ask("textDocument/references", s.at(*min(forward_k), context={"includeDeclaration": True}))["result"]
    assert _starts(refs) == forward_k
    for line, col in sorted(_words(FAMILY, "i")):
        reply = s.ask("textDocument/rename", s.at(line, col, newName="item"))["result"]
        assert reply is not None and _edits(reply) == {(line, col)}, (line, col, reply)
        hover = s.ask("textDocument/hover", s.at(line, col))["result"]
        assert "it names nothing" in hover["contents"]["value"]
    b = sorted(_words(FAMILY, "b"))
    first, second = b[:2], b[2:]
    for loop in (first, second):
        declared = min(loop)
        refs = s.ask("textDocument/references", s.at(*declared, context={"includeDeclaration": True}))["result"]
        assert _starts(refs) == {declared, max(loop)}


# ---------------------------------------------------------------- one layer index per analysis


COUNTING_SERVER = """\
from layerdsl.tools.lsp import layer_index, server

builds = 0
build = layer_index.LayerIndex.__init__


def counting(self, *args, **kwargs):
    global builds
    builds += 1
    build(self, *args, **kwargs)


layer_index.LayerIndex.__init__ = counting
server.server.command("test.layerIndexBuilds")(lambda ls, *args: builds)
server.serve()
"""

USER = """\
layer User(d: int) {
    sub block = Block(d = d)
    example(d = 4)
    forward(x: [B, d]) -> [B, d] {
        return block(x)
    }
}
"""


@pytest.fixture
def counting_lsp(tmp_path: Path) -> Iterator[StdioServer]:
    """A `layerdsl lsp` that answers `test.layerIndexBuilds`: how many `LayerIndex`es it has built."""
    script = tmp_path / "counting_server.py"
    script.write_text(COUNTING_SERVER, encoding="utf-8")
    yield from initialised_stdio_server(command=[sys.executable, str(script)])


def test_renames_and_references_reuse_the_analysis_layer_index(counting_lsp: StdioServer, tmp_path: Path):
    """Each rename (and reference search) of a name other files may use built its own `LayerIndex` twice
    (a fresh workset's, then one more), reading every spec of the folder again: now the analysis's index
    serves them all while the folder's specs are unchanged, and a new spec costs one index, once."""
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "user.layer").write_text(USER, encoding="utf-8")
    s = OpenDocument(counting_lsp, folder / "family.layer", FAMILY, IDS)
    assert s.diagnostics(version=1) == []

    def builds() -> int:
        return s.ask("workspace/executeCommand", {"command": "test.layerIndexBuilds", "arguments": []})["result"]

    before = builds()
    block, d = min(_words(FAMILY, "Block")), min(_words(FAMILY, "d"))
    for _ in range(3):
        result = s.ask("textDocument/rename", s.at(*block, newName="Unit"))["result"]
        assert (folder / "user.layer").as_uri() in result["changes"]  # the other spec's use is renamed too
        s.ask("textDocument/rename", s.at(*d, newName="size"))
        s.ask("textDocument/references", s.at(*block, context={"includeDeclaration": True}))
    assert builds() == before
    (folder / "more.layer").write_text(USER.replace("User", "More"), encoding="utf-8")
    time.sleep(2.1)  # the folder's listing is kept two seconds
    for _ in range(2):
        result = s.ask("textDocument/rename", s.at(*block, newName="Unit"))["result"]
        assert (folder / "more.layer").as_uri() in result["changes"]
    assert builds() == before + 1


# ---------------------------------------------------------------- over the token limit


def _huge(statements: int) -> str:
    lines = ["layer Big(d: int) {", "    param w: [d, d]", "    example(d = 2)", "    forward(x: [B, d]) -> [B, d] {"]
    lines += ["        h = x"] + [f"        h = h + x * {i}" for i in range(statements)]
    return "\n".join(lines + ["        return h", "    }", "}", ""])


def test_a_spec_over_the_token_limit_is_said_so_at_its_start_in_bounded_time(stdio_lsp: StdioServer, tmp_path: Path):
    """A spec over 10,000 tokens got its one diagnostic thousands of lines down, seconds later (the server
    blanked line after line trying to repair it): now it is on the first line, saying the limit and that
    the server reads none of it, within a few parses' time, for every version."""
    text = _huge(1500)
    path = tmp_path / "big.layer"
    start = time.monotonic()
    parse_document(str(path), text)
    one_parse = time.monotonic() - start
    start = time.monotonic()
    s = OpenDocument(stdio_lsp, path, text, IDS)
    (d,) = s.diagnostics(version=1, timeout=60)
    took = time.monotonic() - start
    assert d["range"]["start"] == {"line": 0, "character": 0}
    assert "more than 10,000 tokens" in d["message"] and "line 1250" in d["message"]
    assert took < 3 * one_parse + 2, (took, one_parse)
    for method in ["hover", "completion", "definition", "documentHighlight"]:
        assert "result" in s.ask(f"textDocument/{method}", s.at(1, 10), timeout=10)
    s.replace_text(_huge(1600))
    (d,) = s.diagnostics(version=2, timeout=60)
    assert d["range"]["start"] == {"line": 0, "character": 0} and "10,000" in d["message"]


# ---------------------------------------------------------------- quick fixes of the current version


TYPO = """\
layer Typo(d: int) {
    param weight: [d, d]
    example(d = 4)
    forward(x: [B, d]) -> [B, d] {
        return x @ wieght
    }
}
"""


@pytest.fixture
def versioned_lsp() -> Iterator[StdioServer]:
    """A `layerdsl lsp` whose client takes versioned edits (`documentChanges`), as VS Code and Neovim do."""
    capabilities = {"workspace": {"workspaceEdit": {"documentChanges": True}}}
    yield from initialised_stdio_server(capabilities)


def _actions(s: OpenDocument, diagnostics: list[dict]) -> list[dict]:
    end = {"line": len(s.text.split("\n")), "character": 0}
    params = {
        "textDocument": {"uri": s.uri},
        "range": {"start": {"line": 0, "character": 0}, "end": end},
        "context": {"diagnostics": diagnostics},
    }
    return s.ask("textDocument/codeAction", params)["result"]


def test_a_quick_fix_is_computed_for_the_current_version_only(versioned_lsp: StdioServer, tmp_path: Path):
    """A client asking with the diagnostics of the version before an edit (its new diagnostics not yet
    published) got the fix of the old text: `Replace with 'weight'` at the old place, which in the new
    text overwrote `forward`'s line. Now a stale diagnostic gets a fix only where the current version has
    it too, and every fix names the version it is for."""
    s = OpenDocument(versioned_lsp, tmp_path / "typo.layer", TYPO, IDS)
    (old,) = s.diagnostics(version=1)
    s.replace_text("# a comment line above moves every line down\n" + TYPO)
    for action in _actions(s, [old]):  # the old diagnostic's place is another line now
        fixed = _apply(s.text, action["edit"]["changes"][s.uri])
        assert fixed == s.text.replace("wieght", "weight"), action
    assert old["data"]["version"] == 1
    (new,) = s.diagnostics(version=2)
    (action,) = _actions(s, [new])
    (versioned,) = action["edit"]["documentChanges"]
    assert versioned["textDocument"] == {"uri": s.uri, "version": 2}
    assert _apply(s.text, versioned["edits"]) == s.text.replace("wieght", "weight")
    s.replace_text(s.text + "\n# an edit below keeps the diagnostic's place\n")
    (action,) = _actions(s, [new])  # a diagnostic of version 2 that version 3 has at the same place
    (versioned,) = action["edit"]["documentChanges"]
    assert versioned["textDocument"]["version"] == 3
    assert _apply(s.text, versioned["edits"]) == s.text.replace("wieght", "weight")


def test_the_parser_recognises_its_own_size_refusals_and_nothing_else():
    """The server skips repairs for exactly the parser's size and token refusals (`over_size_limit`): a
    change of their wording that the check misses would bring back the slow line-by-line repair."""
    from layerdsl.syntax.grammar import MAX_TOKENS
    from layerdsl.syntax.parser import MAX_SOURCE_CHARS, over_size_limit, parse_partial

    too_long = "# " + "x" * MAX_SOURCE_CHARS + "\n"
    too_many = "layer L(n: int) {\n  forward(x: [n]) -> [n] {\n    return x" + " + x" * MAX_TOKENS + "\n  }\n}\n"
    broken = "layer L(n: int) {\n  forward(x: [n]) -> [n] {\n    return x +\n  }\n}\n"
    for source, expected in ((too_long, True), (too_many, True), (broken, False)):
        diagnostics = parse_partial("t.layer", source).diagnostics
        assert diagnostics, source[:40]
        assert over_size_limit(diagnostics[0]) is expected, diagnostics[0].message
