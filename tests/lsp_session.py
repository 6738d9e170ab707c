"""How the end-to-end tests of `layerdsl lsp` start it: a pytest-lsp client fixture, one server per test module,
initialised like VS Code on the module's `workspace` fixture (a folder of specs); and `StdioServer`, a raw
stdio session (bytes in, frames out, with time bounds), which the `stdio_lsp` fixture of tests/conftest.py
starts initialised without a workspace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest_lsp
from lsprotocol import types as T
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from layerdsl.tools.lsp.framing import FrameReader

ROOT = Path(__file__).resolve().parent.parent

SERVER_ENV = dict(os.environ)
SERVER_ENV["PYTHONPATH"] = os.pathsep.join([str(ROOT), SERVER_ENV.get("PYTHONPATH", "")]).rstrip(os.pathsep)


def client_fixture():
    """A module-scoped `client` fixture: `client = client_fixture()` in a test module that has a `workspace`
    fixture."""

    @pytest_lsp.fixture(
        config=ClientServerConfig(server_command=[sys.executable, "-m", "layerdsl", "lsp"], server_env=SERVER_ENV),
        scope="module",
    )
    async def client(lsp_client: LanguageClient, workspace: Path):
        await lsp_client.initialize_session(
            T.InitializeParams(
                capabilities=client_capabilities("visual-studio-code"),
                root_uri=workspace.as_uri(),
                workspace_folders=[T.WorkspaceFolder(uri=workspace.as_uri(), name="ws")],
            )
        )
        yield
        await lsp_client.shutdown_session()

    return client


def frame(message: dict | bytes) -> bytes:
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}}
SHUTDOWN = {"jsonrpc": "2.0", "id": 99, "method": "shutdown"}
EXIT = {"jsonrpc": "2.0", "method": "exit"}


class StdioServer:
    """A `layerdsl lsp` subprocess whose replies are read by a thread (`command`: another way to start it,
    a script that wraps the server)."""

    def __init__(self, command: list[str] | None = None) -> None:
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "layerdsl", "lsp"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=SERVER_ENV,
        )
        self.replies: list[dict] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        reader = FrameReader(self.proc.stdout.read1)  # type: ignore[union-attr]
        while True:
            body = reader.next_body()
            if body is None:
                return
            self.replies.append(json.loads(body))

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def wait_for(self, check, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.replies:
                if check(r):
                    return r
            assert self.proc.poll() is None, f"the server exited with {self.proc.returncode}"
            time.sleep(0.02)
        raise AssertionError(f"no matching reply in {timeout}s; replies: {self.replies}")

    def reply_to(self, msg_id, timeout: float = 20.0) -> dict:
        return self.wait_for(lambda r: r.get("id") == msg_id and ("result" in r or "error" in r), timeout)

    def close(self) -> int:
        try:
            self.send(frame(SHUTDOWN))
            self.reply_to(99)
            self.send(frame(EXIT))
            return self.proc.wait(timeout=10)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def initialised_stdio_server(
    capabilities: dict | None = None, command: list[str] | None = None
) -> Iterator[StdioServer]:
    """A `StdioServer`, initialised without a workspace folder (with the client's `capabilities`, none by
    default); killed afterwards unless it was closed."""
    s = StdioServer(command)
    try:
        s.send(frame({**INITIALIZE, "params": {"capabilities": capabilities or {}}}))
        s.reply_to(1)
        s.send(frame({"jsonrpc": "2.0", "method": "initialized", "params": {}}))
        yield s
    finally:
        s.kill()


class OpenDocument:
    """One document open in a `StdioServer` (written to `path` too), and the requests about it."""

    def __init__(self, server: StdioServer, path: Path, text: str, ids: Iterator[int]) -> None:
        self.server, self.uri, self.text, self.version, self.ids = server, path.as_uri(), text, 1, ids
        path.write_text(text, encoding="utf-8")
        document = {"uri": self.uri, "languageId": "layer", "version": 1, "text": text}
        self.notify("textDocument/didOpen", {"textDocument": document})

    def notify(self, method: str, params: dict) -> None:
        self.server.send(frame({"jsonrpc": "2.0", "method": method, "params": params}))

    def ask(self, method: str, params: dict, timeout: float = 30) -> dict:
        msg_id = next(self.ids)
        self.server.send(frame({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}))
        return self.server.reply_to(msg_id, timeout=timeout)

    def at(self, line: int, character: int, **more) -> dict:
        return {"textDocument": {"uri": self.uri}, "position": {"line": line, "character": character}, **more}

    def replace_text(self, text: str) -> None:
        """The whole text changed (a new version)."""
        self.version += 1
        self.text = text
        self.notify(
            "textDocument/didChange",
            {"textDocument": {"uri": self.uri, "version": self.version}, "contentChanges": [{"text": text}]},
        )

    def diagnostics(self, version: int | None = None, timeout: float = 30) -> list[dict]:
        """The diagnostics published for this document (for `version`, when given), the latest first."""

        def published(r: dict) -> bool:
            p = r.get("params") or {}
            return (
                r.get("method") == "textDocument/publishDiagnostics"
                and p.get("uri") == self.uri
                and (version is None or p.get("version") == version)
            )

        self.server.wait_for(published, timeout)
        return [r for r in reversed(self.server.replies) if published(r)][0]["params"]["diagnostics"]
