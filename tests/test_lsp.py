"""End-to-end tests of `layerdsl lsp` through a real client (pytest-lsp): one server for the module.

The workspace is a temporary folder with two spec files on disk (`linear.layer` defines `Linear`,
`mlp.layer` uses it as a sub), so cross-file resolution is exercised like in an editor.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest
from lsprotocol import types as T
from pytest_lsp import LanguageClient

from layerdsl.tools.fmt.formatter import format_source

from .lsp_session import client_fixture

pytestmark = pytest.mark.asyncio(loop_scope="module")

LINEAR = textwrap.dedent('''\
    # A linear layer laid out like torch.nn.Linear.
    layer Linear(in_features: int, out_features: int, bias: bool = true) {
        """y = x @ weight.T + bias."""
        param weight: [out_features, in_features] = xavier_uniform(gain = 1)
        param bias: [out_features] = zeros if bias
        example(in_features = 4, out_features = 3)

        forward(x: [..., in_features]) -> [..., out_features] {
            return x @ transpose(weight, 0, 1) + bias
        }
    }
    ''')

MLP = textwrap.dedent('''\
    layer MLP(in_features: int, hidden: int) {
        """Two layers with a relu between them."""
        sub first = Linear(in_features, hidden)
        sub second = Linear(hidden, in_features)
        example(in_features = 4, hidden = 8)

        forward(x: [B, in_features]) -> [B, in_features] {
            h = relu(first(x))
            return second(h)
        }
    }
    ''')


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lsp_ws")
    (root / "specs").mkdir()
    (root / "specs" / "linear.layer").write_text(LINEAR, encoding="utf-8")
    (root / "specs" / "mlp.layer").write_text(MLP, encoding="utf-8")
    return root


client = client_fixture()


# ---------------------------------------------------------------- helpers

_versions: dict[str, int] = {}


def _uri(workspace: Path, name: str) -> str:
    return (workspace / "specs" / name).as_uri()


async def _diagnostics(client: LanguageClient, uri: str, check=lambda ds: True, timeout: float = 15.0):
    """Wait until the diagnostics published for `uri` satisfy `check`; return them."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        ds = client.diagnostics.get(uri)
        if ds is not None and check(ds):
            return ds
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no matching diagnostics for {uri}: {ds}")
        await asyncio.sleep(0.02)


async def _open(client: LanguageClient, uri: str, text: str, check=lambda ds: True):
    client.diagnostics.pop(uri, None)
    _versions[uri] = 1
    client.text_document_did_open(
        T.DidOpenTextDocumentParams(T.TextDocumentItem(uri=uri, language_id="layer", version=1, text=text))
    )
    return await _diagnostics(client, uri, check)


async def _change(client: LanguageClient, uri: str, text: str, check=lambda ds: True):
    client.diagnostics.pop(uri, None)
    _versions[uri] += 1
    client.text_document_did_change(
        T.DidChangeTextDocumentParams(
            text_document=T.VersionedTextDocumentIdentifier(uri=uri, version=_versions[uri]),
            content_changes=[T.TextDocumentContentChangeWholeDocument(text=text)],
        )
    )
    return await _diagnostics(client, uri, check)


def _pos(text: str, needle: str, offset: int = 0, occurrence: int = 1) -> T.Position:
    """The position of the `occurrence`-th `needle` in `text` (plus `offset` characters); ASCII lines."""
    at = -1
    for _ in range(occurrence):
        at = text.index(needle, at + 1)
    at += offset
    line = text.count("\n", 0, at)
    return T.Position(line=line, character=at - (text.rfind("\n", 0, at) + 1))


async def _hover(client, uri, text, needle, offset=1, occurrence=1) -> str:
    result = await client.text_document_hover_async(
        T.HoverParams(T.TextDocumentIdentifier(uri), _pos(text, needle, offset, occurrence))
    )
    assert result is not None, f"no hover on {needle!r}"
    return result.contents.value


async def _complete(client, uri, position) -> list[str]:
    result = await client.text_document_completion_async(T.CompletionParams(T.TextDocumentIdentifier(uri), position))
    items = result.items if isinstance(result, T.CompletionList) else result
    return [i.label for i in items]


async def _definition(client, uri, position):
    result = await client.text_document_definition_async(T.DefinitionParams(T.TextDocumentIdentifier(uri), position))
    if isinstance(result, list):
        assert len(result) == 1
        result = result[0]
    return result


# ---------------------------------------------------------------- diagnostics


async def test_clean_spec_has_no_diagnostics(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "mlp.layer")
    assert await _open(client, uri, MLP) == ()


async def test_diagnostics_have_exact_ranges_and_all_errors(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "bad.layer")
    text = textwrap.dedent("""\
        layer Bad(n: int) {
            param weight: [n, n]
            example(n = 3)

            forward(x: [B, n]) -> [B, n] {
                y = x @ wieght
                return relu(y) + sofmax(y, dim = -1)
            }
        }
        """)
    ds = await _open(client, uri, text, lambda ds: len(ds) >= 2)
    by_message = {d.message.splitlines()[0]: d for d in ds}
    unknown = by_message["unknown name 'wieght'"]
    assert unknown.range == T.Range(T.Position(5, 16), T.Position(5, 22))
    assert "did you mean 'weight'?" in unknown.message
    assert unknown.severity == T.DiagnosticSeverity.Error
    assert unknown.source == "layerdsl"
    op = by_message["unknown operation 'sofmax'"]
    assert op.range == T.Range(T.Position(6, 25), T.Position(6, 31))


async def test_syntax_error_range(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "syntax.layer")
    text = "layer S(n: int) {\n    param w: [n] = zeros if\n}\n"
    (d,) = await _open(client, uri, text, lambda ds: len(ds) == 1)
    # the newline after `if` is unexpected: a one-character range at the end of line 2
    assert d.range.start == T.Position(1, 27)
    assert d.range.end == T.Position(1, 28)


async def test_ranges_count_utf16_units(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "wide.layer")
    text = 'layer Wide(n: int) {\n    let s = "😀" + nope\n    example(n = 1)\n    forward(x) {\n        return x\n    }\n}\n'
    ds = await _open(client, uri, text, lambda ds: any("nope" in d.message for d in ds))
    d = next(d for d in ds if "nope" in d.message)
    # the emoji is two UTF-16 code units: `nope` starts at code point 18, that is unit 19
    assert d.range == T.Range(T.Position(1, 19), T.Position(1, 23))


async def test_errors_clear_after_a_fix(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "fixme.layer")
    broken = "layer Fix() {\n    forward(x) {\n        return reluu(x)\n    }\n}\n"
    ds = await _open(client, uri, broken, lambda ds: len(ds) == 1)
    assert "unknown operation 'reluu'" in ds[0].message
    assert await _change(client, uri, broken.replace("reluu", "relu"), lambda ds: len(ds) == 0) == ()


async def test_cross_file_sub_resolves_and_unknown_layer_is_reported(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "mlp.layer")
    await _open(client, uri, MLP)
    assert client.diagnostics[uri] == ()
    ds = await _change(client, uri, MLP.replace("Linear(hidden", "Lineer(hidden"), lambda ds: len(ds) >= 1)
    assert any("unknown layer 'Lineer'" in d.message and "did you mean 'Linear'" in d.message for d in ds)
    await _change(client, uri, MLP, lambda ds: len(ds) == 0)


# ---------------------------------------------------------------- hover


async def test_hover_member_shows_kind_shape_dtype_and_count(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "linear.layer")
    await _open(client, uri, LINEAR)
    text = await _hover(client, uri, LINEAR, "weight, 0")  # its use in forward
    assert "param weight: [out_features, in_features]" in text
    assert "float" in text
    assert "[3, 4]" in text and "12 elements" in text
    decl = await _hover(client, uri, LINEAR, "weight:")
    assert "param weight" in decl


async def test_hover_op_shows_signature_and_doc(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "linear.layer")
    await _open(client, uri, LINEAR)
    text = await _hover(client, uri, LINEAR, "transpose(")
    assert "transpose(input, dim0, dim1)" in text
    assert "swap two dims" in text


async def test_hover_initialiser_shows_its_formula(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "linear.layer")
    await _open(client, uri, LINEAR)
    text = await _hover(client, uri, LINEAR, "xavier_uniform")
    assert "xavier_uniform(gain = 1" in text
    assert "√(6 / (fan\\_in + fan\\_out))" in text  # markdown: `_` escaped outside code


async def test_hover_argument_shows_type_and_default(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "linear.layer")
    await _open(client, uri, LINEAR)
    text = await _hover(client, uri, LINEAR, "bias: bool")
    assert "bias: bool = true" in text
    required = await _hover(client, uri, LINEAR, "in_features: int")
    assert "in_features: int" in required and "required" in required


async def test_hover_cross_file_layer(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "mlp.layer")
    await _open(client, uri, MLP)
    text = await _hover(client, uri, MLP, "Linear(in_features")
    assert "layer Linear(in_features: int, out_features: int, bias: bool = true)" in text
    assert "y = x @ weight.T + bias." in text


# ---------------------------------------------------------------- completion


async def test_completion_in_forward_offers_ops_keywords_and_names(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "linear.layer")
    await _open(client, uri, LINEAR)
    labels = await _complete(client, uri, _pos(LINEAR, "x @ transpose"))
    assert {"softmax", "relu", "transpose", "mean"} <= set(labels)
    assert {"true", "false", "not"} <= set(labels)
    assert {"weight", "bias", "x", "in_features"} <= set(labels)


async def test_completion_of_keywords_at_the_start_of_a_member(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "linear.layer")
    await _open(client, uri, LINEAR)
    labels = await _complete(client, uri, _pos(LINEAR, "param weight"))
    assert {"param", "buffer", "sub", "let", "example", "forward"} <= set(labels)
    assert "softmax" not in labels
    statements = await _complete(client, uri, _pos(LINEAR, "return"))
    assert {"return", "if", "update"} <= set(statements)


async def test_completion_of_nn_layers_and_initialisers(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "typing.layer")
    text = "layer Typing(n: int) {\n    sub conv = nn.\n    param w: [n] = \n}\n"
    await _open(client, uri, text)
    nn_labels = await _complete(client, uri, T.Position(1, len("    sub conv = nn.")))
    assert {"Conv2d", "Linear", "Sequential", "ReLU"} <= set(nn_labels)
    inits = await _complete(client, uri, T.Position(2, len("    param w: [n] = ")))
    assert {"zeros", "xavier_uniform", "kaiming_normal", "trunc_normal"} <= set(inits)


async def test_completion_of_example_names_and_else(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "linear.layer")
    await _open(client, uri, LINEAR)
    labels = await _complete(client, uri, _pos(LINEAR, "in_features = 4"))
    assert {"in_features", "out_features", "bias", "x"} <= set(labels)
    uri = _uri(workspace, "branches.layer")
    text = "layer Br() {\n    forward(x) {\n        if training {\n            y = x\n        } \n    }\n}\n"
    await _open(client, uri, text)
    assert await _complete(client, uri, T.Position(4, len("        } "))) == ["else"]


# ---------------------------------------------------------------- definition


async def test_definition_in_the_same_file(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "linear.layer")
    await _open(client, uri, LINEAR)
    loc = await _definition(client, uri, _pos(LINEAR, "weight, 0, 1", 2))
    assert loc.uri == uri
    assert loc.range == T.Range(T.Position(3, 10), T.Position(3, 16))  # `param weight`
    arg = await _definition(client, uri, _pos(LINEAR, "in_features]", 1, occurrence=1))
    assert arg.range.start == T.Position(1, 13)  # the argument in_features
    uri = _uri(workspace, "mlp.layer")
    await _open(client, uri, MLP)
    local = await _definition(client, uri, _pos(MLP, "second(h)", len("second(")))
    assert local.range == T.Range(T.Position(7, 8), T.Position(7, 9))  # `h = relu(...)`
    dim = await _definition(client, uri, _pos(MLP, "B, in_features]", occurrence=2))
    assert dim.range == T.Range(T.Position(6, 16), T.Position(6, 17))  # B in the input's shape


async def test_definition_across_files(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "mlp.layer")
    await _open(client, uri, MLP)
    loc = await _definition(client, uri, _pos(MLP, "Linear(in_features", 2))
    assert loc.uri == _uri(workspace, "linear.layer")
    assert loc.range == T.Range(T.Position(1, 6), T.Position(1, 12))
    sub = await _definition(client, uri, _pos(MLP, "first(x)", 1))
    assert sub.uri == uri and sub.range.start == T.Position(2, 8)


# ---------------------------------------------------------------- symbols, formatting, generated code


async def test_document_symbols(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "linear.layer")
    await _open(client, uri, LINEAR)
    result = await client.text_document_document_symbol_async(T.DocumentSymbolParams(T.TextDocumentIdentifier(uri)))
    (layer,) = result
    assert layer.name == "Linear" and layer.kind == T.SymbolKind.Class
    assert [c.name for c in layer.children] == ["weight", "bias", "forward"]
    assert layer.selection_range == T.Range(T.Position(1, 6), T.Position(1, 12))
    assert layer.range.start == T.Position(1, 0)


async def test_formatting_returns_the_canonical_layout(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "ugly.layer")
    ugly = "layer  Ugly(n:int){\n  param w:[n]=zeros # keep me\n  example(n=2)\n  forward(x){return x*w}\n}"
    await _open(client, uri, ugly)
    edits = await client.text_document_formatting_async(
        T.DocumentFormattingParams(T.TextDocumentIdentifier(uri), T.FormattingOptions(tab_size=4, insert_spaces=True))
    )
    assert len(edits) == 1
    assert edits[0].new_text == format_source(ugly)
    assert edits[0].range.start == T.Position(0, 0)
    assert "    param w: [n] = zeros  # keep me\n" in edits[0].new_text


async def test_show_generated_returns_python(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "mlp.layer")
    await _open(client, uri, MLP)
    code = await client.workspace_execute_command_async(
        T.ExecuteCommandParams(command="layerdsl.showGenerated", arguments=[uri])
    )
    assert isinstance(code, str)
    assert code.startswith("# Generated by layerdsl from specs/mlp.layer")
    assert "class MLP(nn.Module):" in code
    assert "from .linear import Linear" in code
    compile(code, "mlp.py", "exec")


async def test_show_generated_on_a_broken_spec_says_why(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "fixme.layer")
    broken = "layer Fix() {\n    forward(x) {\n        return reluu(x)\n    }\n}\n"
    await _open(client, uri, broken, lambda ds: len(ds) == 1)
    text = await client.workspace_execute_command_async(
        T.ExecuteCommandParams(command="layerdsl.showGenerated", arguments=[uri])
    )
    assert text.startswith("# layerdsl: no Python generated")
    assert "unknown operation 'reluu'" in text


# ---------------------------------------------------------------- half-typed input


async def test_half_typed_documents_give_diagnostics_not_crashes(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "typing2.layer")
    await _open(client, uri, "")
    # type the Linear spec a few characters at a time; every version gets diagnostics
    step = 23
    for end in list(range(1, len(LINEAR), step)) + [len(LINEAR)]:
        ds = await _change(client, uri, LINEAR[:end].replace("layer Linear", "layer Typed"))
        assert all(d.range.start.line <= LINEAR[:end].count("\n") + 1 for d in ds)
        if end > LINEAR.index("layer Linear") and end < len(LINEAR) - 2:
            assert ds, f"no diagnostics for a prefix of {end} characters"
    assert ds == ()
    # features on a half-typed document answer without failing
    half = LINEAR[: LINEAR.index("return") + 9].replace("layer Linear", "layer Typed")
    await _change(client, uri, half, lambda ds: len(ds) >= 1)
    labels = await _complete(client, uri, T.Position(half.count("\n"), len(half.rsplit("\n", 1)[-1])))
    assert "relu" in labels and "weight" in labels
    await client.text_document_hover_async(T.HoverParams(T.TextDocumentIdentifier(uri), T.Position(3, 12)))
    await client.text_document_definition_async(T.DefinitionParams(T.TextDocumentIdentifier(uri), T.Position(3, 12)))
    await client.text_document_document_symbol_async(T.DocumentSymbolParams(T.TextDocumentIdentifier(uri)))
    edits = await client.text_document_formatting_async(
        T.DocumentFormattingParams(T.TextDocumentIdentifier(uri), T.FormattingOptions(tab_size=4, insert_spaces=True))
    )
    assert not edits  # a spec that does not parse is left alone
    text = await client.workspace_execute_command_async(
        T.ExecuteCommandParams(command="layerdsl.showGenerated", arguments=[uri])
    )
    assert text.startswith("# layerdsl: no Python generated")
    # still alive and correct afterwards
    assert await _change(client, uri, LINEAR.replace("layer Linear", "layer Typed"), lambda ds: len(ds) == 0) == ()


# ---------------------------------------------------------------- in process: a checker crash elsewhere


async def test_a_checker_crash_in_another_file_does_not_hide_this_files_diagnostics(tmp_path: Path, monkeypatch):
    """A bug in the checker that trips on a sibling spec must not take this spec's diagnostics with it."""
    from pygls.workspace import Workspace

    from layerdsl.semantics import checker
    from layerdsl.tools.lsp.documents import LayerServer
    from layerdsl.tools.lsp.show_generated import generated_python

    (tmp_path / "linear.layer").write_text(LINEAR, encoding="utf-8")
    (tmp_path / "boom.layer").write_text(LINEAR.replace("layer Linear", "layer Boom"), encoding="utf-8")
    mlp = MLP.replace("relu(first(x))", "relu(firts(x))")
    (tmp_path / "mlp.layer").write_text(mlp, encoding="utf-8")
    original = checker.LayerChecker.check

    def check(self):
        if self.layer.name == "Boom":
            raise RuntimeError("checker bug")
        return original(self)

    monkeypatch.setattr(checker.LayerChecker, "check", check)
    srv = LayerServer()
    srv.protocol._workspace = Workspace(
        tmp_path.as_uri(), T.TextDocumentSyncKind.Incremental, [T.WorkspaceFolder(tmp_path.as_uri(), "ws")]
    )
    uri = (tmp_path / "mlp.layer").as_uri()
    srv.workspace.put_text_document(T.TextDocumentItem(uri=uri, language_id="layer", version=1, text=mlp))
    analysis = srv.analyze(uri)
    assert [d.message for d in analysis.diagnostics] == ["unknown operation 'firts'"]
    # and a crash in the document itself is a diagnostic, not an exception
    boom = (tmp_path / "boom.layer").as_uri()
    srv.workspace.put_text_document(
        T.TextDocumentItem(uri=boom, language_id="layer", version=1, text=(tmp_path / "boom.layer").read_text())
    )
    (d,) = srv.analyze(boom).diagnostics
    assert d.message == "layerdsl internal error: RuntimeError: checker bug"
    assert d.span.line == 2  # on the layer's name
    # generating a spec checks only what it uses, so the crash elsewhere does not matter either
    code = generated_python(srv, (tmp_path / "linear.layer").as_uri())
    assert code.startswith("# Generated by layerdsl from linear.layer") and "class Linear(nn.Module)" in code
