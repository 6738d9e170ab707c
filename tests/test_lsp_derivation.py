"""The language server's derivation diagnostics (pytest-lsp): a `@function` layer whose backward cannot be
derived is reported as `layerdsl gen` reports it, located and with its hint, once the checker is clean,
from a worker (`layerdsl/tools/lsp/derivation.py`); a newer version supersedes an older one's result; the
"Move @function to Block" quick fix follows the hint of a refusal inside a sub whose layer derives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from lsprotocol import types as T
from pytest_lsp import LanguageClient

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file
from tests.lsp_session import client_fixture
from tests.test_lsp_features import _apply, _doc, _edit, _open, _published
from tests.test_sub_function_hint import _block, _stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

REFUSED = _block(False) + _stack(True)  # six `if`s on arguments, one nested, in a loop over copies: refused in Stack
PLAIN = _block(False) + _stack(False)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lsp_derivation")


client = client_fixture()


def _uri(workspace: Path, name: str) -> str:
    """A document of its own folder (the layers of one folder's specs clash)."""
    (workspace / name).mkdir(exist_ok=True)
    return (workspace / name / "stack.layer").as_uri()


def _refusal_lines(text: str) -> list[int]:
    """The 0-based lines of `plan_backwards`' refusals in `text` (as `gen` reports them)."""
    spec = parse_file("stack.layer", text)
    check_program([spec])
    return sorted(p.span.line - 1 for p in plan_backwards([spec])[1])


def _derivation(ds) -> list[T.Diagnostic]:
    return [d for d in ds if "cannot derive" in d.message]


def _recorded(client: LanguageClient) -> tuple[list[T.PublishDiagnosticsParams], object]:
    """Every publishDiagnostics the client receives from now on (in order), and how to stop recording."""
    features = client.protocol.fm.features
    handler = features[T.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS]
    seen: list[T.PublishDiagnosticsParams] = []

    def record(params: T.PublishDiagnosticsParams):
        seen.append(params)
        return handler(params)

    features[T.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS] = record
    return seen, lambda: features.__setitem__(T.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS, handler)


async def test_a_refused_derivation_is_published_with_its_hint_and_a_clean_edit_clears_it(
    client: LanguageClient, workspace: Path
):
    uri = _uri(workspace, "refused")
    ds = await _open(client, uri, REFUSED, lambda ds: bool(_derivation(ds)))
    (d,) = _derivation(ds)
    assert d.range.start.line in _refusal_lines(REFUSED)
    assert "inlined into 'Stack'" in d.message
    assert d.data["hint"].startswith("put @function on Block instead of Stack: ")
    assert d.severity == T.DiagnosticSeverity.Error
    _edit(client, uri, PLAIN)
    assert await _published(client, uri, lambda ds: len(ds) == 0) == ()


async def test_move_function_to_block_quick_fix(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "move")
    text = REFUSED.replace("@function\nlayer Stack", '@function(save = "inputs")\nlayer Stack')
    ds = await _open(client, uri, text, lambda ds: bool(_derivation(ds)))
    (d,) = _derivation(ds)
    actions = await client.text_document_code_action_async(
        T.CodeActionParams(_doc(uri), d.range, T.CodeActionContext(diagnostics=[d]))
    )
    (action,) = [a for a in actions if a.title == "Move @function to Block"]
    fixed = _apply(text, action.edit.changes[uri])
    assert '@function(save = "inputs")\nlayer Block(' in fixed
    assert "\nlayer Stack(" in fixed and fixed.count("@function") == 1
    assert not _refusal_lines(fixed)  # what gen plans derives
    _edit(client, uri, fixed)
    assert await _published(client, uri, lambda ds: len(ds) == 0) == ()


async def test_the_quick_fix_on_the_hint_tests_text(client: LanguageClient, workspace: Path):
    """`_block(False) + _stack(True)`: the fixed document publishes no diagnostics, planned or checked."""
    uri = _uri(workspace, "hint")
    ds = await _open(client, uri, REFUSED, lambda ds: bool(_derivation(ds)))
    (d,) = _derivation(ds)
    actions = await client.text_document_code_action_async(
        T.CodeActionParams(_doc(uri), d.range, T.CodeActionContext(diagnostics=[d]))
    )
    (action,) = [a for a in actions if a.title == "Move @function to Block"]
    fixed = _apply(REFUSED, action.edit.changes[uri])
    assert re.sub("\n+", "\n", fixed) == re.sub("\n+", "\n", _block(True) + _stack(False))
    _edit(client, uri, fixed)
    assert await _published(client, uri, lambda ds: len(ds) == 0) == ()


async def test_an_older_versions_result_is_not_published_over_a_newer_one(client: LanguageClient, workspace: Path):
    uri = _uri(workspace, "stale")
    await _open(client, uri, REFUSED, lambda ds: bool(_derivation(ds)))
    seen, stop = _recorded(client)
    try:
        # version 2 plans longer (more layers refused), so that version 3 is checked meanwhile
        more = "".join(_stack(True).replace("Stack", f"Stack{i}") for i in range(30))
        v2, v3 = "\n" + REFUSED + more, "\n" * 5 + REFUSED  # refused at other lines
        _edit(client, uri, v2)
        await _published(client, uri, lambda ds: any(p.version == 2 for p in seen))
        _edit(client, uri, v3)  # while version 2 is planned
        await _published(client, uri, lambda ds: any(p.version == 3 and _derivation(p.diagnostics) for p in seen))
    finally:
        stop()
    ours = [p for p in seen if p.uri == uri]
    versions = [p.version for p in ours]
    assert versions == sorted(versions), f"an older version published after a newer one: {versions}"
    lines = {2: _refusal_lines(v2), 3: _refusal_lines(v3)}
    for p in ours:
        for d in _derivation(p.diagnostics):
            assert d.range.start.line in lines[p.version], (p.version, d.range.start.line)
    assert [d.range.start.line for d in _derivation(ours[-1].diagnostics)] == lines[3]


async def test_a_crash_in_planning_is_the_internal_error_diagnostic(monkeypatch):
    from layerdsl.autodiff import plan
    from layerdsl.tools.lsp.derivation import derivation_problems
    from layerdsl.tools.lsp.documents import Analysis

    spec = parse_file("/ws/stack.layer", REFUSED)
    program = check_program([spec])
    a = Analysis("file:///ws/stack.layer", 1, "/ws/stack.layer", REFUSED, spec, [], checked=True, program=program)
    assert [d.span.line - 1 for d in derivation_problems(a)] == _refusal_lines(REFUSED)

    def crash(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(plan, "plan_backwards", crash)
    (d,) = derivation_problems(a)
    assert d.message == "layerdsl internal error: RuntimeError: boom"
    assert d.span == spec.layers[1].span  # Stack, the `@function` layer


# ---------------------------------------------------------------- cached plans: no blinking on edits

OTHER = """
layer Other(d: int) {
    example(d = 3)
    forward(x: [..., d]) -> [..., d] {
        return relu(x)
    }
}
"""


async def _versions_published(
    client: LanguageClient, uri: str, edits: list[str], want: list[list[int]] | None = None
) -> list[T.PublishDiagnosticsParams]:
    """Make each edit in turn, waiting until the version's refusals are at the lines `want` says (by default,
    where planning that text puts them); every publish of the document meanwhile, in order."""
    seen, stop = _recorded(client)
    try:
        for i, text in enumerate(edits):
            _edit(client, uri, text)
            version = _current_version(uri)
            lines = want[i] if want is not None else _refusal_lines(text)

            def planned(ds, version=version, lines=lines):
                ours = [p for p in seen if p.uri == uri and p.version == version]
                return ours and sorted(d.range.start.line for d in _derivation(ours[-1].diagnostics)) == lines

            await _published(client, uri, planned)
    finally:
        stop()
    return [p for p in seen if p.uri == uri]


def _current_version(uri: str) -> int:
    from tests.test_lsp_features import _versions

    return _versions[uri]


async def test_an_edit_elsewhere_republishes_the_cached_refusals_at_once_at_their_new_lines(
    client: LanguageClient, workspace: Path
):
    uri = _uri(workspace, "elsewhere")
    await _open(client, uri, REFUSED, lambda ds: bool(_derivation(ds)))
    comment = "# a comment above\n\n" + REFUSED  # every line moves down two
    between = comment.replace("\n@function\nlayer Stack", OTHER + "\n@function\nlayer Stack")
    broken = between + OTHER.replace("Other", "Broken").replace("relu(x)", "relu(wieght)")
    half = broken + "\nlayer Half(d: int) {\n    forward(x: [d]) -> [d] {\n        return x +\n"
    texts = [comment, between, broken, half]
    published = await _versions_published(client, uri, texts, want=[_refusal_lines(between)] * 4)
    for p in published:  # every publish, the checker's first among them, has the refusal where it is now
        text = texts[p.version - 2]
        assert [d.range.start.line for d in _derivation(p.diagnostics)] == _refusal_lines(between), p.version
        assert text.split("\n")[_derivation(p.diagnostics)[0].range.start.line].strip() == "k = k + 1"
    assert {p.version for p in published} == {2, 3, 4, 5}
    checked = [p for p in published if p.version == 4][-1].diagnostics
    assert any("wieght" in d.message for d in checked), "the checker's error of another layer, with the refusal"
    parsed = [p for p in published if p.version == 5][-1].diagnostics
    assert len(parsed) == 2, "a syntax error at the end, with the refusal shown before (it stays till it parses)"


async def test_a_changed_layers_refusal_stays_on_its_unchanged_line_until_planned_again(
    client: LanguageClient, workspace: Path
):
    uri = _uri(workspace, "changed")
    await _open(client, uri, REFUSED, lambda ds: bool(_derivation(ds)))
    # Stack changes (it is planned again), with a line added above the refusal, in Block: the refusal moves
    changed = "\n" + REFUSED.replace("        h = x\n", "        h = x\n        h = h * 1.0\n")
    published = await _versions_published(client, uri, [changed])
    assert published, "the checker's publish (the plan's, when it finds the same, is not sent again)"
    for p in published:
        at = changed.split("\n").index("        k = k + 1")  # (Block's number bound after its `if`s: refused)
        assert [d.range.start.line for d in _derivation(p.diagnostics)] == _refusal_lines(changed) == [at]


async def test_a_refusal_on_an_edited_line_goes_until_its_layer_is_planned_again_the_others_stay(
    client: LanguageClient, workspace: Path
):
    uri = _uri(workspace, "edited")
    two = REFUSED + REFUSED.replace("Block", "Block2").replace("Stack", "Stack2")
    await _open(client, uri, two, lambda ds: len(_derivation(ds)) == 2)
    edited = two.replace("        k = k + 1", "        k = k + 2", 1)  # in Block, reached by Stack only
    published = await _versions_published(client, uri, [edited])
    assert [p.version for p in published] == [2, 2]
    both = _refusal_lines(edited)
    assert both == [edited.split("\n").index("        k = k + 2"), both[1]] and len(both) == 2
    # the checker's publish: Stack's refusal, on the edited line, is gone; Stack2's, unchanged, stays
    assert [d.range.start.line for d in _derivation(published[0].diagnostics)] == both[1:]
    assert [d.range.start.line for d in _derivation(published[1].diagnostics)] == both


async def test_a_carried_refusal_moves_with_its_lines_and_goes_when_one_of_them_is_edited():
    from layerdsl.diagnostics import Diagnostic, Span
    from layerdsl.tools.lsp.derivation import _carried
    from layerdsl.tools.lsp.documents import Analysis

    before = "a\nif x {\n    y\n}\nb"
    refusal = Diagnostic("/ws/s.layer", Span(2, 1, 4, 2), "cannot derive through this `if` yet")

    def carried(text: str, layers=frozenset({"Stack"})) -> list[Span]:
        a = Analysis("file:///ws/s.layer", 2, "/ws/s.layer", text, None, [])
        return [d.span for _, d in _carried((before, [("Stack", refusal)]), a, set(layers))]

    assert carried("new\n\n" + before) == [Span(4, 1, 6, 2)]
    assert carried(before.replace("a\n", "")) == [Span(1, 1, 3, 2)]
    assert carried(before.replace("    y", "    y + 1")) == [], "a line inside it edited"
    assert carried(before.replace("    y", "    y\n    z")) == [], "a line added inside it"
    assert carried(before.replace("}\nb", "}\nc")) == [Span(2, 1, 4, 2)]
    assert carried("new\n" + before, layers={"Other"}) == [], "of a layer that is not being planned again"
