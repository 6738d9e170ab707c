"""Go to definition on a layer name that two sibling folders define as near as each other (an ambiguity
the checker reports): the server offers both definitions, through a real client (pytest-lsp)."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest
from lsprotocol import types as T
from pytest_lsp import LanguageClient

from .lsp_session import client_fixture

pytestmark = pytest.mark.asyncio(loop_scope="module")

SCALE = textwrap.dedent("""\
    # A scale of its folder's own.
    layer Scale(features: int) {
        param weight: [features] = ones
        example(features = 4)
        forward(x: [B, features]) -> [B, features] {
            return x * weight
        }
    }
    """)

USER = textwrap.dedent("""\
    layer User() {
        sub scale = Scale(4)
        example()
        forward(x: [B, 4]) -> [B, 4] {
            return scale(x)
        }
    }
    """)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """specs/left/scale.layer and specs/right/scale.layer define Scale; specs/user.layer and
    specs/left/user.layer use it."""
    root = tmp_path_factory.mktemp("lsp_ambiguous")
    for folder in ("left", "right"):
        (root / "specs" / folder).mkdir(parents=True)
        (root / "specs" / folder / "scale.layer").write_text(SCALE, encoding="utf-8")
    (root / "specs" / "user.layer").write_text(USER, encoding="utf-8")
    (root / "specs" / "left" / "user.layer").write_text(USER, encoding="utf-8")
    return root


client = client_fixture()


async def opened(client: LanguageClient, path: Path) -> str:
    """Open `path` and wait for its diagnostics; its uri."""
    uri = path.as_uri()
    client.text_document_did_open(
        T.DidOpenTextDocumentParams(
            T.TextDocumentItem(uri=uri, language_id="layer", version=1, text=path.read_text(encoding="utf-8"))
        )
    )
    deadline = asyncio.get_running_loop().time() + 15.0
    while uri not in client.diagnostics:
        assert asyncio.get_running_loop().time() < deadline, f"no diagnostics for {uri}"
        await asyncio.sleep(0.02)
    return uri


def on_scale() -> T.Position:
    line = USER.split("\n")[1]
    return T.Position(line=1, character=line.index("Scale(") + 2)


async def definitions(client: LanguageClient, uri: str) -> list[T.Location]:
    result = await client.text_document_definition_async(T.DefinitionParams(T.TextDocumentIdentifier(uri), on_scale()))
    if result is None:
        return []
    return [result] if isinstance(result, T.Location) else list(result)


async def test_an_ambiguous_layer_name_goes_to_every_definition(client: LanguageClient, workspace: Path):
    specs = workspace / "specs"
    uri = await opened(client, specs / "user.layer")
    assert any("ambiguous" in d.message for d in client.diagnostics[uri])
    found = await definitions(client, uri)
    assert sorted(loc.uri for loc in found) == sorted(
        (specs / folder / "scale.layer").as_uri() for folder in ("left", "right")
    )
    for loc in found:  # the layer's name, on its declaration's line
        assert loc.range.start == T.Position(line=1, character=6)


async def test_a_name_its_own_folder_defines_goes_to_that_one_only(client: LanguageClient, workspace: Path):
    specs = workspace / "specs"
    found = await definitions(client, await opened(client, specs / "left" / "user.layer"))
    assert [loc.uri for loc in found] == [(specs / "left" / "scale.layer").as_uri()]
