"""The language server's editing features through a real client (pytest-lsp): quick fixes, references,
rename, document highlight, semantic tokens, inlay hints, signature help, folding ranges, workspace
symbols, completion by context, debounced diagnostics and answers from the current text."""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path

import pytest
from lsprotocol import types as T
from pytest_lsp import LanguageClient

from layerdsl.tools.lsp.semantic_tokens import TOKEN_TYPES
from tests.lsp_session import client_fixture
from tests.test_lsp import LINEAR, MLP, _complete, _pos

pytestmark = pytest.mark.asyncio(loop_scope="module")

BAD = textwrap.dedent("""\
    layer Bad(n: int, m: int) {
        param weight: [n, m]

        forward(x: [B, n]) -> [B, m] {
            y = x @ wieght
            if True {
                y = relu(y)
            }
            return y
        }
    }
    """)

SHAPES = textwrap.dedent("""\
    layer Shapes(n: int, m: int) {
        param weight: [n, m]
        param bias: [m]
        example(n = 2, m = 3)

        forward(x: [B, n]) -> [B, m] {
            h = x @ weight
            s = sum(h, dim = -1)
            y = softmax(h + bias, dim = -1)
            return y
        }
    }
    """)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lsp_features")
    (root / "specs").mkdir()
    (root / "specs" / "linear.layer").write_text(LINEAR, encoding="utf-8")
    (root / "specs" / "mlp.layer").write_text(MLP, encoding="utf-8")
    return root


client = client_fixture()


_versions: dict[str, int] = {}


def _uri(workspace: Path, name: str) -> str:
    return (workspace / "specs" / name).as_uri()


async def _published(client: LanguageClient, uri: str, check=lambda ds: True, timeout: float = 15.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        ds = client.diagnostics.get(uri)
        if ds is not None and check(ds):
            return ds
        assert asyncio.get_running_loop().time() < deadline, f"no matching diagnostics for {uri}: {ds}"
        await asyncio.sleep(0.01)


async def _open(client: LanguageClient, uri: str, text: str, check=lambda ds: True):
    client.diagnostics.pop(uri, None)
    _versions[uri] = 1
    client.text_document_did_open(
        T.DidOpenTextDocumentParams(T.TextDocumentItem(uri=uri, language_id="layer", version=1, text=text))
    )
    return await _published(client, uri, check)


def _edit(client: LanguageClient, uri: str, text: str) -> None:
    _versions[uri] += 1
    client.text_document_did_change(
        T.DidChangeTextDocumentParams(
            text_document=T.VersionedTextDocumentIdentifier(uri=uri, version=_versions[uri]),
            content_changes=[T.TextDocumentContentChangeWholeDocument(text=text)],
        )
    )


def _doc(uri: str) -> T.TextDocumentIdentifier:
    return T.TextDocumentIdentifier(uri)


def _apply(text: str, edits: list[T.TextEdit]) -> str:
    """Apply edits (ASCII text) from the last to the first."""
    lines = text.split("\n")
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)
    for e in sorted(edits, key=lambda e: (e.range.start.line, e.range.start.character), reverse=True):
        start = offsets[e.range.start.line] + e.range.start.character
        end = offsets[e.range.end.line] + e.range.end.character
        text = text[:start] + e.new_text + text[end:]
    return text


# ---------------------------------------------------------------- quick fixes


async def test_quick_fixes_replace_misspelt_names_and_true(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "bad.layer")
    ds = await _open(client, uri, BAD, lambda ds: len(ds) >= 2)
    actions = await client.text_document_code_action_async(
        T.CodeActionParams(
            _doc(uri), T.Range(T.Position(0, 0), T.Position(11, 0)), T.CodeActionContext(diagnostics=list(ds))
        )
    )
    by_title = {a.title: a for a in actions}
    assert "Replace with 'weight'" in by_title and "Replace with 'true'" in by_title
    fixed = BAD
    for title in ("Replace with 'weight'", "Replace with 'true'"):
        fixed = _apply(fixed, by_title[title].edit.changes[uri])
    assert "x @ weight" in fixed and "if true" in fixed
    _edit(client, uri, fixed)
    assert await _published(client, uri, lambda ds: len(ds) == 0 or "example" in ds[0].message)


async def test_quick_fix_adds_the_missing_example(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "noexample.layer")
    text = BAD.replace("wieght", "weight").replace("True", "true").replace("Bad", "NoExample")
    ds = await _open(client, uri, text, lambda ds: len(ds) >= 1)
    (d,) = [d for d in ds if "example value for 'n'" in d.message]
    actions = await client.text_document_code_action_async(
        T.CodeActionParams(_doc(uri), d.range, T.CodeActionContext(diagnostics=[d]))
    )
    (action,) = actions
    fixed = _apply(text, action.edit.changes[uri])
    assert "    example(n = 1)\n" in fixed
    _edit(client, uri, fixed)
    ds = await _published(client, uri, lambda ds: not any("for 'n'" in d.message for d in ds))
    (d,) = [d for d in ds if "example value for 'm'" in d.message]
    actions = await client.text_document_code_action_async(
        T.CodeActionParams(_doc(uri), d.range, T.CodeActionContext(diagnostics=[d]))
    )
    fixed = _apply(fixed, actions[0].edit.changes[uri])
    assert "example(n = 1, m = 1)" in fixed
    _edit(client, uri, fixed)
    assert await _published(client, uri, lambda ds: len(ds) == 0) == ()


async def test_quick_fix_adds_the_missing_value_to_the_first_example(client: LanguageClient, workspace: Path):
    """A later `example(...)` line gives what differs from the first: the first must give every argument."""
    uri = _uri(workspace, "twoexamples.layer")
    text = (
        "layer TwoExamples(n: int, m: int) {\n    example(n = 3)\n    example(m = 2)\n\n"
        "    forward(x: [B, n]) -> [B, n] {\n        return x\n    }\n}\n"
    )
    ds = await _open(client, uri, text, lambda ds: len(ds) >= 1)
    (d,) = [d for d in ds if "example value for 'm'" in d.message]
    actions = await client.text_document_code_action_async(
        T.CodeActionParams(_doc(uri), d.range, T.CodeActionContext(diagnostics=[d]))
    )
    fixed = _apply(text, actions[0].edit.changes[uri])
    assert "    example(n = 3, m = 1)\n    example(m = 2)\n" in fixed


async def test_quick_fix_adds_function_above_the_layer(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "needsfunction.layer")
    text = "layer NeedsFunction() {\n    forward(x) {\n        return x\n    }\n    backward(g) {\n        grad x = g\n    }\n}\n"
    ds = await _open(client, uri, text, lambda ds: len(ds) >= 1)
    (d,) = [d for d in ds if "only allowed in @function" in d.message]
    actions = await client.text_document_code_action_async(
        T.CodeActionParams(_doc(uri), d.range, T.CodeActionContext(diagnostics=[d]))
    )
    fixed = _apply(text, actions[0].edit.changes[uri])
    assert fixed.startswith("@function\nlayer NeedsFunction() {")
    _edit(client, uri, fixed)
    assert await _published(client, uri, lambda ds: len(ds) == 0) == ()


# ---------------------------------------------------------------- references, rename, highlight


async def test_references_of_a_member_and_highlights(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "linear.layer")
    await _open(client, uri, LINEAR)
    refs = await client.text_document_references_async(
        T.ReferenceParams(
            context=T.ReferenceContext(include_declaration=True),
            text_document=_doc(uri),
            position=_pos(LINEAR, "weight:", 1),
        )
    )
    assert sorted((r.range.start.line, r.range.start.character) for r in refs) == [(3, 10), (8, 29)]
    marks = await client.text_document_document_highlight_async(
        T.DocumentHighlightParams(_doc(uri), _pos(LINEAR, "weight, 0", 1))
    )
    kinds = sorted((h.range.start.line, h.kind) for h in marks)
    assert kinds == [(3, T.DocumentHighlightKind.Write), (8, T.DocumentHighlightKind.Read)]


async def test_rename_a_layer_across_files(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "linear.layer")
    await _open(client, uri, LINEAR)
    edit = await client.text_document_rename_async(T.RenameParams(_doc(uri), _pos(LINEAR, "Linear(", 1), "Dense"))
    mlp = _uri(workspace, "mlp.layer")
    assert set(edit.changes) == {uri, mlp}
    assert "layer Dense(" in _apply(LINEAR, edit.changes[uri])
    renamed = _apply(MLP, edit.changes[mlp])
    assert renamed.count("Dense(") == 2 and "Linear" not in renamed


async def test_rename_an_argument_renames_keywords_in_other_files(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "linear.layer")
    user = _uri(workspace, "user.layer")
    text = MLP.replace("MLP", "User").replace(
        "Linear(in_features, hidden)", "Linear(in_features = in_features, out_features = hidden)"
    )
    await _open(client, user, text)
    await _open(client, uri, LINEAR)
    edit = await client.text_document_rename_async(
        T.RenameParams(_doc(uri), _pos(LINEAR, "out_features: int", 1), "outputs")
    )
    assert "outputs = hidden" in _apply(text, edit.changes[user])
    mine = _apply(LINEAR, edit.changes[uri])
    assert mine.count("outputs") == 5 and "out_features" not in mine


async def test_rename_a_local_stays_in_its_layer_and_refuses_a_bad_name(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "mlp.layer")
    await _open(client, uri, MLP)
    edit = await client.text_document_rename_async(T.RenameParams(_doc(uri), _pos(MLP, "h = relu"), "hidden_x"))
    assert _apply(MLP, edit.changes[uri]).count("hidden_x") == 2
    with pytest.raises(Exception, match="cannot be a name"):
        await client.text_document_rename_async(T.RenameParams(_doc(uri), _pos(MLP, "h = relu"), "2x"))


async def test_prepare_rename_refuses_a_builtins_name_saying_why(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "linear.layer")
    await _open(client, uri, LINEAR)
    builtins = {
        "transpose(": "'transpose' is a builtin operation",
        "xavier_uniform(": "'xavier_uniform' is a builtin initialiser",
        "gain = 1": "'gain' is a parameter of the builtin initialiser 'xavier_uniform'",
    }
    for needle, why in builtins.items():
        with pytest.raises(Exception, match=why):
            await client.text_document_prepare_rename_async(T.PrepareRenameParams(_doc(uri), _pos(LINEAR, needle, 1)))
        with pytest.raises(Exception, match=why):
            await client.text_document_rename_async(T.RenameParams(_doc(uri), _pos(LINEAR, needle, 1), "mine"))
    # the spec's own names are still renamable, and a place naming nothing is still no error
    found = await client.text_document_prepare_rename_async(T.PrepareRenameParams(_doc(uri), _pos(LINEAR, "weight,")))
    assert isinstance(found, T.PrepareRenamePlaceholder) and found.placeholder == "weight"
    blank = await client.text_document_prepare_rename_async(T.PrepareRenameParams(_doc(uri), T.Position(6, 0)))
    assert blank is None


async def test_init_of_a_sub_member_is_renamed_with_the_sub_and_with_the_member(
    client: LanguageClient, workspace: Path
):
    uri = _uri(workspace, "linear.layer")
    zeroed = _uri(workspace, "zeroed.layer")
    text = MLP.replace("MLP", "Zeroed").replace("    example(", "    init second.bias = zeros\n    example(")
    await _open(client, zeroed, text)
    await _open(client, uri, LINEAR)
    # The sub: its declaration, its call in forward and the `init` line.
    edit = await client.text_document_rename_async(T.RenameParams(_doc(zeroed), _pos(text, "second.bias"), "last"))
    renamed = _apply(text, edit.changes[zeroed])
    assert "init last.bias = zeros" in renamed and "sub last = " in renamed and "return last(h)" in renamed
    # The member, from its declaration in another file: the `init` line names it.
    edit = await client.text_document_rename_async(T.RenameParams(_doc(uri), _pos(LINEAR, "bias: [", 0), "offset"))
    assert "init second.offset = zeros" in _apply(text, edit.changes[zeroed])
    assert "param offset: [out_features]" in _apply(LINEAR, edit.changes[uri])
    # Go to definition from the member and from the initialiser's name.
    found = await client.text_document_definition_async(
        T.DefinitionParams(_doc(zeroed), _pos(text, "second.bias", len("second.")))
    )
    assert (
        isinstance(found, T.Location)
        and found.uri == uri
        and found.range.start.line == LINEAR.count("\n", 0, LINEAR.index("param bias"))
    )


# ---------------------------------------------------------------- semantic tokens, inlay hints, signatures


def _decode(text: str, data: list[int]) -> dict[tuple[int, str], str]:
    """(line, token text) -> token type, from the relative encoding (ASCII text)."""
    lines = text.split("\n")
    out = {}
    line = char = 0
    for i in range(0, len(data), 5):
        dl, dc, length, kind, _ = data[i : i + 5]
        line += dl
        char = dc if dl else char + dc
        out[(line, lines[line][char : char + length])] = TOKEN_TYPES[kind]
    return out


async def test_semantic_tokens_classify_by_meaning(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "linear.layer")
    await _open(client, uri, LINEAR)
    tokens = await client.text_document_semantic_tokens_full_async(T.SemanticTokensParams(_doc(uri)))
    got = _decode(LINEAR, tokens.data)
    assert got[(1, "layer")] == "keyword"
    assert got[(1, "Linear")] == "class"
    assert got[(1, "in_features")] == "parameter"
    assert got[(3, "weight")] == "property"
    assert got[(3, "xavier_uniform")] == "function"
    assert got[(0, "# A linear layer laid out like torch.nn.Linear.")] == "comment"
    assert got[(8, "transpose")] == "function"
    assert got[(8, "x")] == "parameter"
    assert got[(8, "0")] == "number"


async def test_inlay_hints_show_inferred_shapes(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "shapes.layer")
    await _open(client, uri, SHAPES, lambda ds: len(ds) == 0)
    hints = await client.text_document_inlay_hint_async(
        T.InlayHintParams(_doc(uri), T.Range(T.Position(0, 0), T.Position(12, 0)))
    )
    by_line = {h.position.line: h.label for h in hints}
    assert by_line == {6: ": [B, m]", 7: ": [B]", 8: ": [B, m]", 9: "-> [B, m]"}  # the shape pass's, as `show --shapes`
    assert next(h for h in hints if h.position.line == 6).position.character == len("        h")
    assert next(h for h in hints if h.position.line == 9).position.character == len("        return y")


async def test_inlay_hints_while_the_spec_has_an_error(client: LanguageClient, workspace: Path):
    """No clean check, no shape pass: the hints come from the declared shapes, and there are still some."""
    uri = _uri(workspace, "shapes_broken.layer")
    text = SHAPES.replace("return y", "return y + missing").replace("layer Shapes(", "layer BrokenShapes(")
    await _open(client, uri, text, lambda ds: len(ds) == 1)
    hints = await client.text_document_inlay_hint_async(
        T.InlayHintParams(_doc(uri), T.Range(T.Position(0, 0), T.Position(12, 0)))
    )
    assert {h.position.line: h.label for h in hints} == {6: ": [B, m]", 7: ": [B]", 8: ": [B, m]"}


async def test_signature_help_for_ops_initialisers_and_layers(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "sig.layer")
    text = "layer Sig(n: int) {\n    param w: [n] = normal(0, \n    sub s = Linear(n, \n    forward(x) {\n        return transpose(x, 0, \n    }\n}\n"
    await _open(client, uri, text)

    async def at(line: int, char: int) -> T.SignatureHelp:
        return await client.text_document_signature_help_async(T.SignatureHelpParams(_doc(uri), T.Position(line, char)))

    init = await at(1, len("    param w: [n] = normal(0, "))
    assert init.signatures[0].label == "normal(mean = 0, std = 1)" and init.active_parameter == 1
    layer = await at(2, len("    sub s = Linear(n, "))
    assert layer.signatures[0].label.startswith("Linear(in_features: int, out_features: int")
    assert layer.active_parameter == 1
    op = await at(4, len("        return transpose(x, 0, "))
    assert op.signatures[0].label == "transpose(input, dim0, dim1)" and op.active_parameter == 2


async def test_folding_ranges_cover_blocks_and_docstrings(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "linear.layer")
    await _open(client, uri, LINEAR)
    ranges = await client.text_document_folding_range_async(T.FoldingRangeParams(_doc(uri)))
    spans = {(r.start_line, r.end_line) for r in ranges}
    assert (1, 9) in spans  # the layer, to the line before its `}`
    assert (7, 8) in spans  # forward


async def test_workspace_symbols_find_layers_and_members_in_every_file(client: LanguageClient, workspace: Path):
    found = await client.workspace_symbol_async(T.WorkspaceSymbolParams(query="lnr"))
    assert "Linear" in {s.name for s in found}
    members = await client.workspace_symbol_async(T.WorkspaceSymbolParams(query="second"))
    (second,) = [s for s in members if s.name == "second" and s.container_name == "MLP"]
    assert second.location.uri.endswith("mlp.layer")


# ---------------------------------------------------------------- completion by context


async def test_completion_by_context(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "ctx.layer")
    text = textwrap.dedent("""\
        layer Other(k: int) {
            param secret: [k]
            example(k = 1)
            forward(q) {
                return q
            }
        }

        layer Ctx(n: int, m: int = 2) {
            let half = n / 2
            param w: [n, m] = xavier_uniform()
            sub inner = Other(k = n)
            example(n = 4)

            forward(x: [B, n]) {
                a = x @ w
                b = softmax(a, )
                return b
            }
        }
        """)
    await _open(client, uri, text)
    after_a = set(await _complete(client, uri, _pos(text, "a, )", 0)))
    assert {"x", "w", "a", "inner", "n", "half", "B", "softmax"} <= after_a
    assert "b" not in after_a  # bound after the cursor
    assert "secret" not in after_a and "q" not in after_a  # another layer's names
    assert "fan_in" not in after_a and "else" not in after_a
    keywords = await _complete(client, uri, _pos(text, ", )", 2))
    assert keywords[:2] == ["input", "dim"] or {"dim", "dtype"} & set(keywords)
    init_keywords = set(await _complete(client, uri, _pos(text, "xavier_uniform()", len("xavier_uniform("))))
    assert {"gain", "fan_in", "fan_out"} <= init_keywords
    sub_keywords = set(await _complete(client, uri, _pos(text, "Other(k", len("Other("))))
    assert "k" in sub_keywords
    dims = set(await _complete(client, uri, _pos(text, "[n, m]", 1)))
    assert {"n", "m", "half"} <= dims and "softmax" not in dims and "w" not in dims
    statement = set(await _complete(client, uri, _pos(text, "return b", 0)))
    assert {"return", "if", "a"} <= statement and "else" not in statement


# ---------------------------------------------------------------- editing


async def test_a_burst_of_edits_publishes_only_the_final_diagnostics(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "burst.layer")
    text = SHAPES.replace("Shapes", "Burst")
    await _open(client, uri, text, lambda ds: len(ds) == 0)
    seen = []
    for i in range(10):  # nine edits with an unknown name, then the fix, 20 ms apart
        _edit(client, uri, text if i == 9 else text.replace("return y", "return y" + "q" * (i + 1)))
        await asyncio.sleep(0.02)
        seen.append(client.diagnostics.get(uri))
    t0 = time.monotonic()
    await asyncio.sleep(0.5)
    assert await _published(client, uri, lambda ds: len(ds) == 0, timeout=5) == ()
    assert time.monotonic() - t0 < 2
    # the first edit after a pause is checked at once; the rest of the burst only after its last edit
    messages = [d.message for ds in seen if ds for d in ds]
    assert not any("yqq" in m for m in messages), messages


async def test_hover_after_a_syntax_error_above_answers_at_the_current_positions(
    client: LanguageClient, workspace: Path
):
    uri = _uri(workspace, "moving.layer")
    text = SHAPES.replace("Shapes", "Moving")
    await _open(client, uri, text, lambda ds: len(ds) == 0)
    broken = text.replace("    param bias: [m]\n", "    param bias: [m]\n    let oops = (\n\n\n")
    _edit(client, uri, broken)
    await _published(client, uri, lambda ds: len(ds) == 1)
    hover = await client.text_document_hover_async(T.HoverParams(_doc(uri), _pos(broken, "x @ weight", 5)))
    assert hover is not None and "param weight" in hover.contents.value
    assert hover.range.start.line == _pos(broken, "x @ weight").line
    symbols = await client.text_document_document_symbol_async(T.DocumentSymbolParams(_doc(uri)))
    assert symbols[0].children[0].name == "weight"


async def test_hover_markdown_escapes_underscores_outside_code(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "documented.layer")
    text = textwrap.dedent('''\
        layer Documented(n_in: int) {
            """Scales by n_in, see `n_in`."""
            example(n_in = 2)
            forward(x) {
                return x * n_in
            }
        }

        layer UsesDocumented() {
            sub inner = Documented(2)
            forward(x) {
                return inner(x)
            }
        }
        ''')
    await _open(client, uri, text, lambda ds: len(ds) == 0)
    hover = await client.text_document_hover_async(T.HoverParams(_doc(uri), _pos(text, "Documented(2)", 1)))
    assert "Scales by n\\_in, see `n_in`." in hover.contents.value


async def test_rename_a_dim_renames_its_uses_in_shapes(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "dims.layer")
    text = SHAPES.replace("Shapes", "Dims")
    await _open(client, uri, text, lambda ds: len(ds) == 0)
    edit = await client.text_document_rename_async(T.RenameParams(_doc(uri), _pos(text, "B, n]"), "batch"))
    renamed = _apply(text, edit.changes[uri])
    assert "forward(x: [batch, n]) -> [batch, m]" in renamed and "B" not in renamed.replace("Dims", "")


async def test_hover_on_a_local_shows_its_inferred_shape(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "shapes_hover.layer")
    text = SHAPES.replace("layer Shapes(", "layer HoverShapes(")
    await _open(client, uri, text, lambda ds: len(ds) == 0)
    line = text.split("\n").index("        y = softmax(h + bias, dim = -1)")
    hover = await client.text_document_hover_async(
        T.HoverParams(_doc(uri), T.Position(line, len("        y = softmax(h")))
    )
    assert hover is not None and "(local) h: [B, m]" in hover.contents.value


LOOPS = textwrap.dedent("""\
    layer Stacked(n: int, d: int) {
        for k in range(n) {
            param weight_l{k}: [d, d if k == 0 else d]
        }
        example(n = 2, d = 3)
        forward(x: [B, d]) -> [B, d] {
            h = x
            outputs = []
            for k in range(n) {
                h = tanh(h @ weight_l{k})
                outputs.append(h)
            }
            return h
        }
    }
    """)


async def test_loops_and_families_are_analysed(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "loops.layer")
    await _open(client, uri, LOOPS, lambda ds: len(ds) == 0)
    tokens = await client.text_document_semantic_tokens_full_async(T.SemanticTokensParams(_doc(uri)))
    got = _decode(LOOPS, tokens.data)
    assert got[(1, "for")] == "keyword" and got[(1, "in")] == "keyword"
    assert got[(9, "tanh")] == "function"
    hints = await client.text_document_inlay_hint_async(
        T.InlayHintParams(_doc(uri), T.Range(T.Position(0, 0), T.Position(15, 0)))
    )
    assert {h.position.line: h.label for h in hints}[6] == ": [B, d]"
