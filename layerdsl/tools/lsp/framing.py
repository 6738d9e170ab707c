"""The base protocol on stdio, hardened: `Content-Length` framing read with bounded memory, and every
malformed frame or message answered with a JSON-RPC error instead of killing or deafening the server.

pygls's own reader trusts the header (`Content-Length: 999999999999` is read into memory, and a header
it cannot parse makes it skip every later message); this one refuses a header that is too long, a length
that is not a number or is larger than `MAX_BODY_BYTES`, answers with a JSON-RPC error (id null) and
resynchronises on the next `Content-Length:` header. A message with ill-typed params gets an error
response with its id (InvalidParams), as JSON-RPC asks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

from pygls.exceptions import JsonRpcException
from pygls.io_ import StdoutWriter

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 8192  # all header lines of one message together
MAX_BODY_BYTES = 32 * 2**20
_CHUNK = 65536

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INTERNAL_ERROR = -32603

_HEADER_START = re.compile(rb"content-length:", re.I)
_DIGITS = re.compile(rb"[0-9]{1,12}")


class FramingError(Exception):
    """A frame that cannot be read: answered with a parse error, then the reader resynchronises."""


class FrameReader:
    """Reads `Content-Length`-framed message bodies from a byte stream, holding at most one header
    block and one body of at most `MAX_BODY_BYTES` in memory."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._buf = bytearray()
        self._resync = False

    def _fill(self) -> bool:
        data = self._read(_CHUNK)
        if not data:
            return False
        self._buf += data
        return True

    def _skip_to_header(self) -> bool:
        """Drop bytes up to the next `Content-Length:` header; False at the end of the stream."""
        keep = len(b"content-length:") - 1
        while True:
            m = _HEADER_START.search(self._buf)
            if m is not None:
                del self._buf[: m.start()]
                self._resync = False
                return True
            del self._buf[: max(0, len(self._buf) - keep)]
            if not self._fill():
                return False

    def _fail(self, message: str) -> FramingError:
        self._resync = True
        return FramingError(message)

    def next_body(self) -> bytes | None:
        """The next message body; None at the end of the stream. Raises FramingError on a bad frame
        (the next call goes on with the next frame)."""
        if self._resync and not self._skip_to_header():
            return None
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            if len(self._buf) > MAX_HEADER_BYTES:
                del self._buf[:1]  # so that resynchronising looks past this header
                raise self._fail(f"header longer than {MAX_HEADER_BYTES} bytes")
            if not self._fill():
                return None
        if end > MAX_HEADER_BYTES:
            del self._buf[:1]
            raise self._fail(f"header longer than {MAX_HEADER_BYTES} bytes")
        header = bytes(self._buf[:end])
        del self._buf[: end + 4]
        length = self._content_length(header)
        while len(self._buf) < length:
            if not self._fill():
                return None
        body = bytes(self._buf[:length])
        del self._buf[:length]
        return body

    def _content_length(self, header: bytes) -> int:
        length = None
        for line in header.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if not sep:
                raise self._fail(f"malformed header line {line[:80]!r}")
            if name.strip().lower() != b"content-length":
                continue
            value = value.strip()
            if not _DIGITS.fullmatch(value):
                raise self._fail(f"Content-Length is not a number: {value[:40]!r}")
            length = int(value)
        if length is None:
            raise self._fail("no Content-Length header")
        if length > MAX_BODY_BYTES:
            raise self._fail(f"Content-Length {length} is larger than the limit of {MAX_BODY_BYTES} bytes")
        return length


def error_response(msg_id: Any, code: int, message: str) -> bytes:
    """A framed JSON-RPC error response."""
    body = json.dumps({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}})
    data = body.encode("utf-8")
    return b"Content-Length: %d\r\n\r\n" % len(data) + data


def _request_id(data: dict) -> Any:
    msg_id = data.get("id")
    return msg_id if isinstance(msg_id, (int, str)) and not isinstance(msg_id, bool) else None


def dispatch(protocol: Any, body: bytes, send: Callable[[bytes], None]) -> None:
    """Decode one message body and hand it to the pygls protocol; answer what cannot be handled."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        send(error_response(None, PARSE_ERROR, f"the message is not JSON: {str(exc)[:200]}"))
        return
    if not isinstance(data, dict) or data.get("jsonrpc") != "2.0":
        msg_id = _request_id(data) if isinstance(data, dict) else None
        send(error_response(msg_id, INVALID_REQUEST, "not a JSON-RPC 2.0 message object"))
        return
    is_request = "id" in data and "method" in data
    if "method" in data and not isinstance(data["method"], str):
        if is_request:
            send(error_response(_request_id(data), INVALID_REQUEST, "the method is not a string"))
        return
    try:
        message = protocol.structure_message(data)
    except JsonRpcException as exc:
        if is_request:
            send(error_response(_request_id(data), exc.code, f"{exc.message}: ill-typed params"))
        return
    except Exception as exc:
        if is_request:
            send(error_response(_request_id(data), INTERNAL_ERROR, f"cannot read the message: {exc}"[:300]))
        return
    try:
        protocol.handle_message(message)
    except Exception:
        log.exception("unable to handle a message")


async def read_loop(protocol: Any, stream: BinaryIO, writer: StdoutWriter, stop: threading.Event) -> None:
    """Read frames from `stream` until it ends or `stop` is set, dispatching each message."""
    loop = asyncio.get_running_loop()
    read = getattr(stream, "read1", stream.read)
    reader = FrameReader(read)
    while not stop.is_set():
        try:
            body = await loop.run_in_executor(None, reader.next_body)
        except FramingError as exc:
            log.warning("bad frame: %s", exc)
            writer.write(error_response(None, PARSE_ERROR, f"bad message frame: {exc}"))
            continue
        if body is None:
            break
        dispatch(protocol, body, writer.write)


def serve_stdio(server: Any) -> None:
    """Run `server` (a pygls LanguageServer) on stdin/stdout with the hardened reader."""
    stop = threading.Event()
    server._stop_event = stop  # pygls's shutdown() sets it to end the loop
    writer = StdoutWriter(sys.stdout.buffer)
    server.protocol.set_writer(writer)
    try:
        asyncio.run(read_loop(server.protocol, sys.stdin.buffer, writer, stop))
    except BrokenPipeError:
        log.error("the connection to the client is lost; shutting down")
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.shutdown()
