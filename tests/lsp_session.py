"""How the end-to-end tests of `layerdsl lsp` start it: a pytest-lsp client fixture, one server per test module,
initialised like VS Code on the module's `workspace` fixture (a folder of specs)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest_lsp
from lsprotocol import types as T
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

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
