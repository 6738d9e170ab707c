"""The language server's framing under hostile input: raw bytes written to a `layerdsl lsp` subprocess
(the `stdio_lsp` fixture, tests/conftest.py), with time bounds; and the frame reader fuzzed with
hypothesis."""

from __future__ import annotations

import io
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layerdsl.tools.lsp.framing import MAX_BODY_BYTES, FrameReader, FramingError
from tests.lsp_session import StdioServer, frame


def _still_serving(server: StdioServer, msg_id: int) -> None:
    """The server answers a normal request after the hostile input, within the time bound."""
    t0 = time.monotonic()
    server.send(frame({"jsonrpc": "2.0", "id": msg_id, "method": "workspace/symbol", "params": {"query": ""}}))
    reply = server.reply_to(msg_id, timeout=10)
    assert "result" in reply
    assert time.monotonic() - t0 < 5


def test_a_huge_content_length_is_refused_and_the_server_keeps_serving(stdio_lsp: StdioServer):
    stdio_lsp.send(b"Content-Length: 999999999999\r\n\r\n{}")
    err = stdio_lsp.wait_for(lambda r: "error" in r and r.get("id") is None, timeout=5)
    assert err["error"]["code"] == -32700
    assert "larger than the limit" in err["error"]["message"]
    _still_serving(stdio_lsp, 2)
    assert stdio_lsp.close() == 0


def test_a_non_numeric_content_length_is_refused_and_the_server_is_not_deaf(stdio_lsp: StdioServer):
    stdio_lsp.send(b"Content-Length: abc\r\n\r\n{}")
    err = stdio_lsp.wait_for(lambda r: "error" in r and r.get("id") is None, timeout=5)
    assert "not a number" in err["error"]["message"]
    _still_serving(stdio_lsp, 3)
    assert stdio_lsp.close() == 0


def test_an_overlong_header_is_refused(stdio_lsp: StdioServer):
    stdio_lsp.send(b"X-Junk: " + b"a" * 20000 + b"\r\n\r\n")
    err = stdio_lsp.wait_for(lambda r: "error" in r and r.get("id") is None, timeout=5)
    assert "header longer" in err["error"]["message"]
    _still_serving(stdio_lsp, 4)


def test_a_body_that_is_not_json_gets_a_parse_error(stdio_lsp: StdioServer):
    stdio_lsp.send(frame(b"{not json"))
    stdio_lsp.send(frame(b"[1, 2]"))
    stdio_lsp.wait_for(lambda r: r.get("error", {}).get("code") == -32700, timeout=5)
    stdio_lsp.wait_for(lambda r: r.get("error", {}).get("code") == -32600, timeout=5)
    _still_serving(stdio_lsp, 5)


def test_a_request_with_ill_typed_params_gets_an_error_response(stdio_lsp: StdioServer):
    hover = {"jsonrpc": "2.0", "id": 7, "method": "textDocument/hover", "params": {"textDocument": 5, "position": "x"}}
    stdio_lsp.send(frame(hover))
    reply = stdio_lsp.reply_to(7, timeout=5)
    assert reply["error"]["code"] == -32602
    _still_serving(stdio_lsp, 8)
    assert stdio_lsp.close() == 0


# ---------------------------------------------------------------- the reader, fuzzed


def _read_all(data: bytes) -> tuple[list[bytes], int]:
    stream = io.BytesIO(data)
    reader = FrameReader(stream.read)
    bodies, errors = [], 0
    for _ in range(10_000):
        try:
            body = reader.next_body()
        except FramingError:
            errors += 1
            continue
        if body is None:
            break
        bodies.append(body)
    else:
        raise AssertionError("the reader does not reach the end of the stream")
    return bodies, errors


_bodies = st.lists(st.binary(min_size=0, max_size=60).filter(lambda b: b"content-length:" not in b.lower()), max_size=5)
_junk = st.one_of(
    st.binary(max_size=80),
    st.sampled_from(
        [
            b"Content-Length: abc\r\n\r\n",
            b"Content-Length: 999999999999\r\n\r\n",
            b"Content-Length: -1\r\n\r\n",
            b"Content-Type: x\r\n\r\n",
            b"garbage\r\n\r\n",
            b"Content-Length: 5\r\n",
        ]
    ),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bodies, _junk, _bodies)
def test_good_frames_after_junk_are_read_after_resynchronising(before, junk, after):
    data = b"".join(frame(b) for b in before) + junk + b"\r\n\r\n" + b"".join(frame(b) for b in after)
    bodies, errors = _read_all(data)
    assert bodies[: len(before)] == before  # the frames before the junk are intact
    frames_a_body = junk.lower().startswith(b"content-length: 5")  # a valid header: it takes 5 bytes
    if after and not frames_a_body:
        assert bodies[-len(after) :] == after  # reading resynchronises on the frames after the junk


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_end_without_an_exception_or_a_huge_allocation(data):
    bodies, _ = _read_all(data)
    assert all(len(b) <= MAX_BODY_BYTES for b in bodies)
