"""A document opened outside any workspace, in a folder crowded with specs (as /tmp may be): the language
server reads the other specs' texts but parses only those that may define a layer the document names
(tools/lsp/layer_index.py), so its diagnostics come within seconds, and a sub's layer defined in a sibling
file is still found (no false "unknown layer"), as are hover and go-to-definition on it."""

from __future__ import annotations

import time
from pathlib import Path

from tests.lsp_session import StdioServer, frame

ROOT = Path(__file__).resolve().parent.parent
MY_LAYER = (ROOT / "specs" / "my_layer.layer").read_text(encoding="utf-8")
CROWD = 1500  # the other specs of the folder; parsing them all takes about a minute

HELPER = '''\
layer Helper(n: int) {
    """Scales each feature by a learned weight."""
    param weight: [n] = uniform(0.5, 1.0)
    example(n = 4)
    forward(x: [B, n]) -> [B, n] {
        return x * weight
    }
}
'''

MAIN = """\
layer Main(n: int) {
    sub inner = Helper(n)
    sub other = Crowd7(n, n)
    example(n = 4)
    forward(x: [B, n]) -> [B, n] {
        return other(inner(x))
    }
}
"""


def _crowd(folder: Path) -> None:
    """`CROWD` specs: most small, every 100th big (40 layers), every 50th broken; and, before `helper.layer`
    in the folder's order, one that names `Helper` only in a comment and a broken one that defines it."""
    for i in range(CROWD):
        if i % 100 == 99:
            text = "\n".join(MY_LAYER.replace("MyLayer", f"Crowd{i}x{k}") for k in range(40))
        elif i % 50 == 49:
            text = MY_LAYER.replace("MyLayer", f"Crowd{i}").replace("return sqrt(", "return sqrt((")
        else:
            text = MY_LAYER.replace("MyLayer", f"Crowd{i}")
        (folder / f"crowd_{i:04}.layer").write_text(text, encoding="utf-8")
    (folder / "a_note.layer").write_text("# layer Helper lives in helper.layer\n" + MY_LAYER, encoding="utf-8")
    (folder / "b_broken.layer").write_text(HELPER.replace("return x * weight", "return x *"), encoding="utf-8")
    (folder / "helper.layer").write_text(HELPER, encoding="utf-8")


def _request(server: StdioServer, msg_id: int, method: str, uri: str, line: int, character: int):
    params = {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}
    server.send(frame({"jsonrpc": "2.0", "id": msg_id, "method": f"textDocument/{method}", "params": params}))
    return server.reply_to(msg_id, timeout=20)["result"]


def test_a_document_in_a_crowded_folder_gets_its_diagnostics_within_seconds(stdio_lsp: StdioServer, tmp_path: Path):
    _crowd(tmp_path)
    main = tmp_path / "main.layer"
    main.write_text(MAIN, encoding="utf-8")
    uri = main.as_uri()
    document = {"uri": uri, "languageId": "layer", "version": 1, "text": MAIN}
    t0 = time.monotonic()
    stdio_lsp.send(frame({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": document}}))
    published = stdio_lsp.wait_for(
        lambda r: r.get("method") == "textDocument/publishDiagnostics" and r["params"]["uri"] == uri, timeout=60
    )
    elapsed = time.monotonic() - t0
    assert published["params"]["diagnostics"] == []  # `Helper` and `Crowd7` found in their files
    assert elapsed < 5, elapsed  # parsing every spec of the folder took 25 s

    line = MAIN.splitlines()[1]
    definition = _request(stdio_lsp, 2, "definition", uri, 1, line.index("Helper"))
    assert definition["uri"] == (tmp_path / "helper.layer").as_uri()
    assert definition["range"]["start"] == {"line": 0, "character": 6}
    hover = _request(stdio_lsp, 3, "hover", uri, 1, line.index("Helper") + 1)
    assert "Scales each feature by a learned weight." in hover["contents"]["value"]
    line = MAIN.splitlines()[2]
    definition = _request(stdio_lsp, 4, "definition", uri, 2, line.index("Crowd7"))
    assert definition["uri"] == (tmp_path / "crowd_0007.layer").as_uri()
    # completion names every layer without parsing their specs; resolving an item reads its docstring
    items = _request(stdio_lsp, 5, "completion", uri, 1, len("    sub inner = "))["items"]
    labels = [item["label"] for item in items]
    assert {"nn.", "Helper", "Main", "Crowd0", "Crowd99x39"} <= set(labels)
    helper = next(item for item in items if item["label"] == "Helper")
    assert "documentation" not in helper
    stdio_lsp.send(frame({"jsonrpc": "2.0", "id": 6, "method": "completionItem/resolve", "params": helper}))
    resolved = stdio_lsp.reply_to(6, timeout=20)["result"]
    assert resolved["documentation"]["value"] == "Scales each feature by a learned weight."

    unknown = MAIN.replace("Crowd7", "Crowd49")  # defined only in a broken spec
    changes = {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [{"text": unknown}]}
    stdio_lsp.send(frame({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": changes}))
    published = stdio_lsp.wait_for(
        lambda r: r.get("method") == "textDocument/publishDiagnostics" and r["params"].get("version") == 2, timeout=20
    )
    assert ["unknown layer 'Crowd49'" in d["message"] for d in published["params"]["diagnostics"]] == [True]
    assert stdio_lsp.close() == 0
