"""A flat chain of operators (`x + x + ... + x`) is one level of nesting, not one per operator: `check` and
`gen` take a chain of up to `MAX_CHAIN` operators, and the generated Python compiles; a longer chain is a
located error, as real nesting (calls, parentheses) past `MAX_DEPTH` levels still is
(tests/test_hostile_inputs.py bounds the time and memory of those). The CLI, the language server and
`driver.pipeline.generate` all run on a deep stack (`layerdsl.deep_stack`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from layerdsl.driver.pipeline import generate
from layerdsl.syntax.parser import MAX_CHAIN, MAX_DEPTH, parse_file
from tests.lsp_session import StdioServer, frame

ROOT = Path(__file__).resolve().parent.parent
MY_LAYER = (ROOT / "specs" / "my_layer.layer").read_text(encoding="utf-8")
BODY = "return sqrt(x ** 2 + bias) @ weight"


def _spec(body: str) -> str:
    assert BODY in MY_LAYER
    return MY_LAYER.replace(BODY, body)


def _chain(operators: int, op: str = "+") -> str:
    """`return (x + x + ... + x) @ weight`: `operators` operators in one chain (the `@` the last of them)."""
    return f"return ({f' {op} '.join(['x'] * operators)}) @ weight"


def _layerdsl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LAYERDSL_NO_CACHE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "layerdsl", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def _messages(text: str) -> list[str]:
    return [d.message for d in parse_file("chain.layer", text).problems]


def test_a_chain_of_101_operators_is_no_deep_nesting():
    """The issue's case: 101 `+` were reported as nested too deeply."""
    assert _messages(_spec(_chain(102))) == []


def test_one_operator_more_than_max_chain_is_a_located_error():
    problems = parse_file("chain.layer", _spec(_chain(MAX_CHAIN + 1))).problems
    assert [(d.message, d.span.line, d.span.col) for d in problems] == [("this chain of operators is too long", 13, 16)]
    assert problems[0].hint == f"split it into several statements (at most {MAX_CHAIN:,} operators)"
    ands = _spec(f"return where({' and '.join(['x > 0'] * (MAX_CHAIN + 2))}, x, x) @ weight")
    assert _messages(ands) == ["this chain of operators is too long"]


def test_real_nesting_is_still_bounded():
    """Calls and right-nested operators (`x ** x ** ...`, `x - (x - (...))`) count a level each."""
    for body in (
        "return " + "exp(" * (MAX_DEPTH + 1) + "x" + ")" * (MAX_DEPTH + 1) + " @ weight",
        "return " + " ** ".join(["x"] * (MAX_DEPTH + 2)) + " @ weight",
        "return " + "x - (" * (MAX_DEPTH + 1) + "x" + ")" * (MAX_DEPTH + 1) + " @ weight",
    ):
        assert _messages(_spec(body)) == ["this expression is nested too deeply"], body
    # a chain inside nesting: the chain's links are one level, the calls around it one each
    inner = " + ".join(["x"] * (MAX_DEPTH + 50))
    assert _messages(_spec("return " + "exp(" * 20 + inner + ")" * 20 + " @ weight")) == []


def test_check_takes_a_chain_of_max_chain_operators(tmp_path: Path):
    """Through the CLI, whose passes recurse as deep as the chain is long (`driver.cli`'s deep stack)."""
    spec = tmp_path / "chain.layer"
    spec.write_text(_spec(_chain(MAX_CHAIN, "*")), encoding="utf-8")
    checked = _layerdsl("check", str(spec), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr[-2000:]


def test_gen_takes_a_chain_of_max_chain_operators_and_its_python_compiles(tmp_path: Path):
    spec = tmp_path / "chain.layer"
    spec.write_text(_spec(_chain(MAX_CHAIN)), encoding="utf-8")
    made = _layerdsl("gen", str(spec), "-o", "out", cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    source = (tmp_path / "out" / "chain.py").read_text(encoding="utf-8")
    assert " + ".join(["x"] * (MAX_CHAIN - 1)) in re.sub(r"\s+", " ", source)  # as black wraps it
    compile(source, "chain.py", "exec")


def test_generate_in_process_takes_a_chain_of_max_chain_operators(tmp_path: Path):
    """The library's entry point, called on this (shallow) thread, as a user's script calls it."""
    spec = tmp_path / "chain.layer"
    spec.write_text(_spec(_chain(MAX_CHAIN, "-")), encoding="utf-8")
    limit = sys.getrecursionlimit()
    made = generate([str(spec)], cache=None)
    assert sys.getrecursionlimit() == limit  # restored
    (path,) = [p for p in made if p.suffix == ".py" and p.name != "__init__.py"]
    assert " - ".join(["x"] * (MAX_CHAIN - 1)) in re.sub(r"\s+", " ", made[path])
    compile(made[path], str(path), "exec")


def _open(server: StdioServer, uri: str, text: str) -> None:
    document = {"uri": uri, "languageId": "layer", "version": 1, "text": text}
    server.send(frame({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": document}}))


def _diagnostics(server: StdioServer, uri: str, timeout: float) -> list[dict]:
    published = server.wait_for(
        lambda r: r.get("method") == "textDocument/publishDiagnostics" and r["params"]["uri"] == uri, timeout
    )
    return published["params"]["diagnostics"]


def _no_internal_error(server: StdioServer) -> None:
    logged = [r["params"]["message"] for r in server.replies if r.get("method") == "window/logMessage"]
    assert not [m for m in logged if "failed" in m or "Traceback" in m or "internal" in m], logged
    assert not [r for r in server.replies if "error" in r], server.replies


def test_the_language_server_checks_and_hovers_a_chain_of_max_chain_operators(stdio_lsp: StdioServer, tmp_path: Path):
    uri = (tmp_path / "chain.layer").as_uri()
    text = _spec(_chain(MAX_CHAIN))
    t0 = time.monotonic()
    _open(stdio_lsp, uri, text)
    assert _diagnostics(stdio_lsp, uri, timeout=60) == []
    line = text.splitlines().index("        " + _chain(MAX_CHAIN))
    hover = {"textDocument": {"uri": uri}, "position": {"line": line, "character": 16}}
    stdio_lsp.send(frame({"jsonrpc": "2.0", "id": 2, "method": "textDocument/hover", "params": hover}))
    reply = stdio_lsp.reply_to(2, timeout=60)
    elapsed = time.monotonic() - t0
    assert "x" in str(reply["result"]["contents"])
    for msg_id, method in enumerate(["documentSymbol", "inlayHint", "semanticTokens/full"], start=3):
        params = {"textDocument": {"uri": uri}}
        if method == "inlayHint":
            params["range"] = {"start": {"line": 0, "character": 0}, "end": {"line": 20, "character": 0}}
        stdio_lsp.send(frame({"jsonrpc": "2.0", "id": msg_id, "method": f"textDocument/{method}", "params": params}))
        assert "result" in stdio_lsp.reply_to(msg_id, timeout=60)
    _no_internal_error(stdio_lsp)
    assert elapsed < 30, elapsed
    assert stdio_lsp.close() == 0


def test_the_language_server_locates_a_chain_one_operator_too_long(stdio_lsp: StdioServer, tmp_path: Path):
    uri = (tmp_path / "chain.layer").as_uri()
    _open(stdio_lsp, uri, _spec(_chain(MAX_CHAIN + 1)))
    found = _diagnostics(stdio_lsp, uri, timeout=60)
    assert [(d["message"].splitlines()[0], d["range"]["start"]) for d in found] == [
        ("this chain of operators is too long", {"line": 12, "character": 15})
    ]
    _no_internal_error(stdio_lsp)
    assert stdio_lsp.close() == 0
