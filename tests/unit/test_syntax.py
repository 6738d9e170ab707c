"""Unit tests of the syntax stage: its entries (`parse_file`, `parse_partial`, `parse_expr`), located
syntax errors, the one text normalisation shared by the CLI and the language server, and the grammar
loaded into Lark once per configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from lsprotocol import types as T
from pygls.workspace import Workspace

from layerdsl.diagnostics import Span, SpecError
from layerdsl.driver.cli import main
from layerdsl.ir import nodes as N
from layerdsl.language.ops import OPS
from layerdsl.language.tables import RESERVED
from layerdsl.syntax import grammar, normalize_source, parse_expr, parse_file, parse_partial
from layerdsl.tools.fmt.formatter import format_source
from layerdsl.tools.lsp.documents import LayerServer

SPEC = "layer A(n: int) {\n    example(n = 2)\n\n    forward(x) {\n        return x * n\n    }\n}\n"


# ---------------------------------------------------------------- parse_expr


def test_parse_expr_builds_ir_with_python_precedence():
    expr = parse_expr("a + b * -2 ** c")
    assert isinstance(expr, N.BinOp) and expr.op == "+"
    assert isinstance(expr.left, N.Name) and expr.left.id == "a"
    product = expr.right
    assert isinstance(product, N.BinOp) and product.op == "*"
    assert isinstance(product.right, N.UnaryOp) and product.right.op == "-"
    power = product.right.operand
    assert isinstance(power, N.BinOp) and power.op == "**"
    assert (power.left.value, power.right.id) == (2, "c")


def test_parse_expr_folds_a_negative_number_and_keeps_keywords():
    assert parse_expr("-1.5").value == -1.5
    call = parse_expr("where(x > 0, grad, 0 * x, dim = -1)")
    assert isinstance(call, N.Call) and call.func == "where"
    assert len(call.args) == 3 and [k.name for k in call.kwargs] == ["dim"]
    assert call.kwargs[0].value.value == -1


def test_parse_expr_reads_every_formula_and_default_of_the_operation_table():
    count = 0
    for op in OPS.values():
        texts = [t for t in op.grads.values() if t] + [p.default for p in op.params if p.default is not None]
        for text in texts:
            assert isinstance(parse_expr(text), N.Expr), (op.name, text)
            count += 1
    assert count > 50


def test_parse_expr_reports_a_syntax_error_located():
    with pytest.raises(SpecError) as info:
        parse_expr("a + * b", path="<formula>")
    (d,) = info.value.diagnostics
    assert (d.path, d.span.line, d.span.col) == ("<formula>", 1, 5)


def test_parse_expr_reports_a_builder_error():
    with pytest.raises(SpecError, match="attribute access is not part of the language"):
        parse_expr("x.shape")


# ---------------------------------------------------------------- parse_file and parse_partial


def test_parse_file_locates_a_syntax_error_and_keeps_the_other_layers():
    text = "layer Bad() {\n    forward(x) { return x + }\n}\n\n" + SPEC
    parsed = parse_file("two.layer", text)
    (d,) = parsed.problems
    assert d.path == "two.layer" and (d.span.line, d.span.col) == (2, 29)
    assert d.message == "unexpected '}'; expected an expression"
    assert [layer.name for layer in parsed.layers] == ["A"]
    assert parsed.broken == {"Bad"}


def test_parse_file_strict_raises_the_located_error():
    with pytest.raises(SpecError) as info:
        parse_file("a.layer", "layer A() {\n    param w: [3] = 'x'\n}\n", strict=True)
    (d,) = info.value.diagnostics
    assert d.span == Span.point(2, 20) and d.message == "strings use double quotes"


def test_a_reserved_word_as_a_name_gets_the_hint():
    with pytest.raises(SpecError) as info:
        parse_file(
            "a.layer", "layer A() {\n    forward(x) {\n        if = x\n        return x\n    }\n}\n", strict=True
        )
    assert info.value.diagnostics[0].hint == "'if' is a reserved word and cannot be a name"
    assert "if" in RESERVED


def test_parse_partial_keeps_the_tree_and_gives_no_ir_on_a_syntax_error():
    good = parse_partial("a.layer", SPEC)
    assert good.diagnostics == [] and [layer.name for layer in good.spec.layers] == ["A"]
    assert good.tree is not None and good.tree.children[0].data == "layer"
    bad = parse_partial("a.layer", SPEC.replace("x * n", "x *"))
    assert bad.spec is None and bad.tree is None
    (d,) = bad.diagnostics
    assert (d.span.line, d.message) == (5, "unexpected end of line; expected an expression")


def test_too_deep_nesting_is_the_same_error_for_both_entries():
    text = SPEC.replace("x * n", "relu(" * 120 + "x" + ")" * 120)
    cli = parse_file("a.layer", text).problems
    server = parse_partial("a.layer", text).diagnostics
    assert [d.message for d in cli] == [d.message for d in server] == ["this expression is nested too deeply"]
    assert cli[0].span == server[0].span


# ---------------------------------------------------------------- one normalisation: the byte-order mark


def test_a_byte_order_mark_reads_as_a_space():
    assert normalize_source("\ufefflayer") == " layer"
    assert normalize_source("layer\ufeff") == "layer\ufeff"  # only at the start


def _server_diagnostics(tmp_path: Path, name: str, text: str) -> list[T.Diagnostic]:
    """What the language server publishes for a document with this text."""
    from layerdsl.tools.lsp.diagnostics import publish

    server = LayerServer()
    server.protocol._workspace = Workspace(
        tmp_path.as_uri(), T.TextDocumentSyncKind.Incremental, [T.WorkspaceFolder(tmp_path.as_uri(), "ws")]
    )
    published: list[T.PublishDiagnosticsParams] = []
    server.text_document_publish_diagnostics = published.append
    uri = (tmp_path / name).as_uri()
    server.workspace.put_text_document(T.TextDocumentItem(uri=uri, language_id="layer", version=1, text=text))
    publish(server, uri)
    (params,) = published
    return params.diagnostics


def test_cli_and_server_agree_on_a_file_with_a_byte_order_mark(tmp_path: Path, capsys):
    text = "\ufeff" + SPEC
    (tmp_path / "bom.layer").write_text(text, encoding="utf-8")
    assert main(["check", str(tmp_path / "bom.layer")]) == 0
    assert "no errors" in capsys.readouterr().out
    assert _server_diagnostics(tmp_path, "bom.layer", text) == []
    assert parse_partial("bom.layer", text).spec is not None


def test_cli_and_server_put_an_error_after_a_byte_order_mark_at_the_same_place(tmp_path: Path):
    text = "\ufefflayer A() {\n    forward(x) { return y }\n}\n"
    (tmp_path / "bom.layer").write_text(text, encoding="utf-8")
    assert main(["check", str(tmp_path / "bom.layer")]) == 1
    (d,) = _server_diagnostics(tmp_path, "bom.layer", text)
    assert d.message.startswith("unknown name 'y'")
    assert (d.range.start.line, d.range.start.character) == (1, 24)  # 2:25 in the CLI's 1-based terms
    syntax = "\ufefflayer A( {\n}\n"
    with pytest.raises(SpecError) as cli:
        parse_file("bom.layer", syntax, strict=True)
    with pytest.raises(SpecError) as fmt:
        format_source(syntax, "bom.layer")
    (server,) = parse_partial("bom.layer", syntax).diagnostics
    assert cli.value.diagnostics[0].span == fmt.value.diagnostics[0].span == server.span


def test_the_formatter_drops_the_byte_order_mark():
    assert format_source("\ufeff" + SPEC) == SPEC


# ---------------------------------------------------------------- the grammar, loaded once


def test_each_parser_configuration_is_built_once():
    assert grammar.file_parser() is grammar.file_parser()
    assert grammar.expression_parser() is grammar.expression_parser()
    assert grammar.file_parser() is not grammar.expression_parser()
    assert grammar.grammar_text() is grammar.grammar_text()


def test_the_entries_use_the_cached_parsers(monkeypatch):
    built = []
    original = grammar.Lark

    def counting_lark(*args, **kwargs):
        built.append(kwargs.get("start", "start"))
        return original(*args, **kwargs)

    for cached in (grammar.file_parser, grammar.expression_parser):
        cached.cache_clear()
    monkeypatch.setattr(grammar, "Lark", counting_lark)
    for _ in range(3):
        parse_file("a.layer", SPEC)
        parse_partial("a.layer", SPEC)
        parse_expr("x + 1")
    assert sorted(built) == ["expr", "start"]


def test_keeping_tokens_returns_the_comments_newlines():
    tree, whitespace = grammar.parse_keeping_tokens("# head\nlayer A() {  # trailing\n    forward(x) { return x }\n}\n")
    assert tree.data == "start"
    assert any("# head" in t for t in whitespace) and any("# trailing" in t for t in whitespace)


def test_too_many_nested_blocks_are_named_as_blocks_not_as_an_expression():
    ifs = 60
    body = "".join(f"if n > {k} {{\n" for k in range(ifs)) + "y = y * 2\n" + "}\n" * ifs
    text = f"layer D(n: int) {{\n forward(x: [n]) -> [n] {{\n y = x\n{body} return y\n }}\n}}\n"
    (problem,) = parse_file("a.layer", text).problems
    assert problem.message == "the blocks are nested too deeply here"
    assert problem.hint.startswith("move the inner blocks into a layer of their own")
    assert 4 <= problem.span.line < 4 + ifs  # at one of the ifs, not at the innermost statement
