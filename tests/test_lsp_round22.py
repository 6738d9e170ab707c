"""The language server's round-22 gaps, driven over stdio as an editor drives it: renaming a family of
params (its declaration, its `w_l{k}` reads and its members read through a sub, in another spec too), a
clashing new name refused with the reason, and a spec over the token or size limit outlined (document
symbols), navigable (go to definition, hover) by a bounded line scan."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from tests.lsp_session import OpenDocument, StdioServer
from tests.test_lsp_round21 import _apply, _huge

IDS = itertools.count(100)

FAMILY = """\
layer Fam(d: int, n: int = 2) {
    for k in range(n) {
        param w_l{k}_rev: [d, d]
        param b_l{k}: [d] = zeros
    }
    param c0: [d] = zeros
    example(d = 4)
    forward(x: [B, d]) -> [B, d] {
        h = x
        for j in range(n) {
            h = h @ w_l{j}_rev + b_l{j}
        }
        return h + c0
    }
}
"""

USER = """\
layer User(d: int) {
    sub f = Fam(d)
    example(d = 4)
    forward(x: [B, d]) -> [B, d] {
        return f(x) @ f.w_l0_rev
    }
}
"""


def _position(text: str, needle: str, nth: int = 0, shift: int = 1) -> tuple[int, int]:
    at = -1
    for _ in range(nth + 1):
        at = text.index(needle, at + 1)
    line = text.count("\n", 0, at)
    return line, at - (text.rfind("\n", 0, at) + 1) + shift


def test_a_family_is_renamed_wherever_it_is_named(stdio_lsp: StdioServer, tmp_path: Path):
    """Renaming `w_l{k}_rev` was refused ('would mean' another name) at its declaration and its reads:
    now its stem and suffix are renamed at the declaration, at each `w_l{j}_rev` read (keeping `{j}`) and
    at its member read through a sub in another spec (`f.w_l0_rev`), from any of them; find references
    lists those uses too."""
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "user.layer").write_text(USER, encoding="utf-8")
    s = OpenDocument(stdio_lsp, folder / "fam.layer", FAMILY, IDS)
    assert s.diagnostics(version=1) == []
    user_uri = (folder / "user.layer").as_uri()
    for where in [_position(FAMILY, "w_l{k}"), _position(FAMILY, "w_l{j}", shift=5)]:
        prepared = s.ask("textDocument/prepareRename", s.at(*where))["result"]
        assert prepared["placeholder"] == "w_l{k}_rev"
        for new in ["v{k}_fwd", "v{}_fwd"]:
            result = s.ask("textDocument/rename", s.at(*where, newName=new))["result"]
            text = _apply(FAMILY, result["changes"][s.uri])
            assert "param v{k}_fwd: [d, d]" in text and "h @ v{j}_fwd + b_l{j}" in text, text
            assert "w_l" not in text
            assert _apply(USER, result["changes"][user_uri]) == USER.replace("f.w_l0_rev", "f.v0_fwd")
        stem = s.ask("textDocument/rename", s.at(*where, newName="weight_l"))["result"]
        assert "param weight_l{k}_rev" in _apply(FAMILY, stem["changes"][s.uri])  # a stem keeps the suffix
    refs = s.ask("textDocument/references", s.at(*_position(FAMILY, "w_l{k}"), context={"includeDeclaration": True}))
    found = {(r["uri"], r["range"]["start"]["line"], r["range"]["start"]["character"]) for r in refs["result"]}
    assert found == {
        (s.uri, *_position(FAMILY, "w_l{k}", shift=0)),
        (s.uri, *_position(FAMILY, "w_l{j}", shift=0)),
        (user_uri, *_position(USER, "w_l0", shift=0)),
    }  # the member read through the sub in the other spec too
    user = OpenDocument(stdio_lsp, folder / "user.layer", USER, IDS)
    reply = user.ask("textDocument/rename", user.at(*_position(USER, "w_l0"), newName="u_l"))["result"]
    assert _apply(USER, reply["changes"][user.uri]) == USER.replace("w_l0_rev", "u_l0_rev")  # from the other spec
    assert "param u_l{k}_rev" in _apply(s.text, reply["changes"][s.uri])
    s.replace_text(_apply(FAMILY, result["changes"][s.uri]))
    assert s.diagnostics(version=2) == []  # the renamed spec checks clean


def test_a_family_rename_that_would_clash_is_refused(stdio_lsp: StdioServer, tmp_path: Path):
    """A new name one of whose members is already a name of the layer (`c{k}` has `c0`), or that shares
    members with another family (`b_l{k}`), is refused with the reason; a name not a family's is too."""
    s = OpenDocument(stdio_lsp, tmp_path / "fam.layer", FAMILY, IDS)
    assert s.diagnostics(version=1) == []
    where = _position(FAMILY, "w_l{k}")
    for new, reason in [("c{k}", "'c0' is already a name"), ("b_l{k}", "the family 'b_l{k}'"), ("1x", "cannot name")]:
        reply = s.ask("textDocument/rename", s.at(*where, newName=new))
        assert "error" in reply and reason in reply["error"]["message"], (new, reply)


def test_a_family_rename_waits_for_a_spec_with_a_syntax_error_that_reads_it(stdio_lsp: StdioServer, tmp_path: Path):
    """A spec of the workspace with a syntax error whose text reads a member (`f.w_l0_rev`) may read it in
    the lines its repair leaves unread: the rename is refused naming it; one that does not is ignored."""
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "other.layer").write_text("layer Other(d: int) {\n    let w_l = d +\n}\n", encoding="utf-8")
    s = OpenDocument(stdio_lsp, folder / "fam.layer", FAMILY, IDS)
    assert s.diagnostics(version=1) == []
    where = _position(FAMILY, "w_l{k}")
    assert "result" in s.ask("textDocument/rename", s.at(*where, newName="v"))
    (folder / "broken.layer").write_text(USER.replace("f.w_l0_rev", "(f.w_l0_rev +"), encoding="utf-8")
    time.sleep(2.1)  # the folder's listing is kept two seconds
    reply = s.ask("textDocument/rename", s.at(*where, newName="v"))
    assert "error" in reply and "broken.layer has a syntax error" in reply["error"]["message"], reply


def test_a_spec_over_the_token_limit_has_an_outline_definition_and_hover(stdio_lsp: StdioServer, tmp_path: Path):
    """A spec over the token limit had no document symbols, definition or hover at all: now a line scan
    gives its layers and members, goes to a member's declaration and shows its line, in bounded time."""
    text = _huge(1500) + FAMILY
    s = OpenDocument(stdio_lsp, tmp_path / "big.layer", text, IDS)
    (d,) = s.diagnostics(version=1, timeout=60)
    assert "outline" in d["message"]
    symbols = s.ask("textDocument/documentSymbol", {"textDocument": {"uri": s.uri}})["result"]
    assert [x["name"] for x in symbols] == ["Big", "Fam"]
    assert [c["name"] for c in symbols[1]["children"]] == ["w_l{k}_rev", "b_l{k}", "c0", "forward"]
    use = _position(text, "h + c0", shift=5)
    found = s.ask("textDocument/definition", s.at(*use))["result"]
    assert (found["range"]["start"]["line"], found["range"]["start"]["character"]) == _position(text, "c0", shift=0)
    hover = s.ask("textDocument/hover", s.at(*use))["result"]["contents"]["value"]
    assert "param c0: [d] = zeros" in hover and "over the size limit" in hover


def test_a_hostile_spec_over_the_size_limit_is_scanned_in_bounded_time(stdio_lsp: StdioServer, tmp_path: Path):
    """Megabytes of one line, and of member lines, get an answer quickly (the scan reads a bounded prefix)."""
    for text in [
        "layer A(d: int) {\n    param " + "x" * 8_000_000 + "\n}\n",
        "layer A(d: int) {\n" + "    param p: [d]\n" * 400_000,
    ]:
        s = OpenDocument(stdio_lsp, tmp_path / "hostile.layer", text, IDS)
        s.diagnostics(timeout=60)
        start = time.monotonic()
        symbols = s.ask("textDocument/documentSymbol", {"textDocument": {"uri": s.uri}})["result"]
        s.ask("textDocument/definition", s.at(1, 11))
        assert symbols[0]["name"] == "A" and time.monotonic() - start < 5
