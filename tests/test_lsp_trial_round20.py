"""A demanding user's trial of the language server's editor features (round 20), over stdio as an editor
drives it: rename and references of the names written in loops, `require`s, lists of subs and argument
types; edits made with incremental changes and UTF-16 columns; quick fixes applied to the text; the
requests at a document's very start and end, on empty and huge documents; and watched files changing."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from tests.lsp_session import OpenDocument, StdioServer

LOOPS = """\
layer Block(d: int) {
    param w: [d, d]
    example(d = 4)
    forward(x: [B, d]) -> [B, d] {
        return x @ w
    }
}

layer Stack(d: int, depth: int, steps: int) {
    sub blocks = [Block(d) for i in range(depth)]
    example(d = 4, depth = 2, steps = 3)
    forward(x: [B, d]) -> [B, d] {
        require steps > 0, "steps must be positive"
        h = x
        outs = []
        for t in range(steps) {
            h = h + t
            outs.append(h)
        }
        for each in blocks {
            h = each(h)
        }
        return h
    }
}
"""

IDS = itertools.count(100)  # the requests' ids, unique in a server's session


class Session(OpenDocument):
    """One document open in a `layerdsl lsp` over stdio, and the requests about it (edits as incremental
    changes)."""

    def __init__(self, server: StdioServer, path: Path, text: str) -> None:
        super().__init__(server, path, text, IDS)

    def change(self, changes: list[dict]) -> None:
        self.version += 1
        self.notify(
            "textDocument/didChange",
            {"textDocument": {"uri": self.uri, "version": self.version}, "contentChanges": changes},
        )


def _words(text: str, name: str) -> set[tuple[int, int]]:
    """(line, column) of each word `name` in the code of `text` (outside strings and comments)."""
    code = re.sub(r'"[^"\n]*"|#[^\n]*', lambda m: " " * len(m.group()), text)
    out = set()
    for m in re.finditer(rf"(?<![A-Za-z0-9_.]){name}(?![A-Za-z0-9_])", code):
        out.add((code.count("\n", 0, m.start()), m.start() - (code.rfind("\n", 0, m.start()) + 1)))
    return out


def _edits(result: dict) -> set[tuple[int, int]]:
    return {
        (e["range"]["start"]["line"], e["range"]["start"]["character"]) for es in result["changes"].values() for e in es
    }


def test_rename_reaches_the_names_written_in_loops_requires_and_lists_of_subs(stdio_lsp: StdioServer, tmp_path: Path):
    """`range(depth)` of a list of subs, `require steps > 0`, `for t in range(steps)`, `outs.append(h)`
    and a loop's variable were left behind by a rename (their occurrences were not listed)."""
    s = Session(stdio_lsp, tmp_path / "loops.layer", LOOPS)
    for name in ["depth", "steps", "outs", "t", "each"]:
        line, col = min(_words(LOOPS, name))
        result = s.ask("textDocument/rename", s.at(line, col, newName="renamed"))["result"]
        assert _edits(result) == _words(LOOPS, name), name
        refs = s.ask("textDocument/references", s.at(line, col, context={"includeDeclaration": True}))["result"]
        assert {(r["range"]["start"]["line"], r["range"]["start"]["character"]) for r in refs} == _words(LOOPS, name)


def test_a_rename_to_a_taken_or_builtin_name_is_refused_with_the_reason(stdio_lsp: StdioServer, tmp_path: Path):
    """Renaming the local `h` to `x` made its uses mean the input `x` (the edit was given); so did a
    rename to an argument's, a builtin operation's or constant's, another layer's name, and a loop variable
    renamed to a local it would capture. A name free where it is used is still renamed."""
    s = Session(stdio_lsp, tmp_path / "loops.layer", LOOPS)
    h, t, depth, block = (min(_words(LOOPS, name)) for name in ["h", "t", "depth", "Block"])
    refused = [(h, "x"), (h, "d"), (h, "steps"), (h, "relu"), (h, "pi"), (h, "training"), (h, "Block")]
    refused += [(t, "h"), (t, "outs"), (depth, "d"), (depth, "steps"), (block, "Stack"), (block, "relu")]
    for (line, col), new in refused:
        reply = s.ask("textDocument/rename", s.at(line, col, newName=new))
        assert "error" in reply and f"'{new}'" in reply["error"]["message"], (line, col, new, reply)
    for (line, col), new in [(h, "w"), (t, "step"), (depth, "layers"), (block, "Mixer")]:
        result = s.ask("textDocument/rename", s.at(line, col, newName=new))["result"]
        assert {e["newText"] for es in result["changes"].values() for e in es} == {new}


def test_completion_right_after_a_closing_brace_offers_nothing_and_the_file_edges_answer(
    stdio_lsp: StdioServer, tmp_path: Path
):
    """After the last `}` of a layer (or of its forward) nothing may follow on the line, yet the whole
    list of operations and expression keywords was offered; at the file's start, past its end and past
    a line's end every request answers without an error."""
    s = Session(stdio_lsp, tmp_path / "loops.layer", LOOPS)
    lines = LOOPS.split("\n")
    last, forward_end = len(lines) - 2, len(lines) - 3
    for line in (last, forward_end):
        items = s.ask("textDocument/completion", s.at(line, len(lines[line])))["result"]["items"]
        assert items == [], (line, [i["label"] for i in items][:5])
    top = {i["label"] for i in s.ask("textDocument/completion", s.at(0, 0))["result"]["items"]}
    assert "layer" in top and "relu" not in top
    for line, col in [(0, 0), (len(lines) - 1, 0), (len(lines) + 5, 3), (0, 1000)]:
        for method in ["hover", "completion", "definition", "signatureHelp", "documentHighlight", "prepareRename"]:
            assert "result" in s.ask(f"textDocument/{method}", s.at(line, col)), (method, line, col)
