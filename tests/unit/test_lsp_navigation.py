"""Go to definition and hover agree with the checker: every name resolves to a declaration of the kind
the checker gave it (`Name.ref`), by the shared scoping rules (`semantics.scopes`), and hover shows the
example values computed by the shared evaluator (`semantics.evaluate`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lsprotocol import types as T
from pygls.workspace import Workspace

from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import Ref
from layerdsl.ir.visit import statements, walk
from layerdsl.tools.lsp.documents import Analysis, LayerServer
from layerdsl.tools.lsp.hover import hover_at
from layerdsl.tools.lsp.navigation import definition_at

SPEC = """\
layer Inner(n: int) {
    param w: [n, n]
    example(n = 2)

    forward(x: [B, n]) -> [B, n] {
        return x @ w
    }
}

layer Outer(n: int, with_bias: bool = true) {
    let m = n * 2
    param w: [n, m] = uniform(-1, 1)
    param bias: [m] = zeros if with_bias
    buffer total: [m]
    sub inner = Inner(n)
    example(n = 3)

    forward(x: [B, n]) -> [B, m] {
        h = inner(x) @ w
        if training {
            h = h * pi
        }
        y[b, j] = sum[i](x[b, i] * w[i, j]) + h[b, j]
        update total = total + mean(y, dim = 0)
        return y + bias
    }
}

@function
layer Scaled(s: float) {
    example(s = 2.0)

    forward(x: [B]) -> [B] {
        t = x * s
        return t
    }

    backward(grad_y) {
        grad x = grad_y * s + t * 0
    }
}
"""

LINES = SPEC.split("\n")

# the first line of the hover of a name, by what the checker resolved it to
HOVER_HEAD = {
    Ref.ARG: "(argument) {}:",
    Ref.LET: "let {} =",
    Ref.PARAM: "param {}:",
    Ref.BUFFER: "buffer {}:",
    Ref.INPUT: "(input) {}:",
    Ref.DIM: "(dim) {}: int",
    Ref.INDEX: "(index) {}",
    Ref.CONST: "(constant) {}",
    Ref.TRAINING: "training: bool",
}


def serve(root: Path, text: str) -> tuple[LayerServer, str]:
    """A server whose workspace is `root`, with `text` open as its only spec."""
    path = root / "nav.layer"
    path.write_text(text, encoding="utf-8")
    server = LayerServer()
    server.protocol._workspace = Workspace(
        root.as_uri(), T.TextDocumentSyncKind.Incremental, [T.WorkspaceFolder(root.as_uri(), "ws")]
    )
    uri = path.as_uri()
    server.workspace.put_text_document(T.TextDocumentItem(uri=uri, language_id="layer", version=1, text=text))
    return server, uri


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[LayerServer, str, Analysis]:
    server, uri = serve(tmp_path_factory.mktemp("nav"), SPEC)
    analysis = server.analyze(uri)
    assert analysis.diagnostics == []
    return server, uri, analysis


def position(line: int, col: int) -> T.Position:
    return T.Position(line=line - 1, character=col - 1)


def find(needle: str, nth: int = 0, offset: int = 0) -> T.Position:
    """The position of the `nth` occurrence of `needle` in SPEC (plus `offset` characters)."""
    at = -1
    for _ in range(nth + 1):
        at = SPEC.index(needle, at + 1)
    at += offset
    line = SPEC.count("\n", 0, at)
    return T.Position(line=line, character=at - (SPEC.rfind("\n", 0, at) + 1))


def text_at(r: T.Range) -> str:
    assert r.start.line == r.end.line
    return LINES[r.start.line][r.start.character : r.end.character]


def declarations(layer: N.Layer) -> dict[tuple[int, int], str]:
    """Where each declaration of `layer` starts, with the kind of what it declares."""
    decls: dict[tuple[int, int], str] = {}
    for a in layer.args:
        decls[(a.span.line, a.span.col)] = Ref.ARG
    for let in layer.lets:
        decls[(let.span.line, let.span.col)] = Ref.LET
    for t in layer.tensors:
        decls[(t.span.line, t.span.col)] = t.kind
    assert layer.forward is not None
    for inp in layer.forward.inputs:
        decls[(inp.span.line, inp.span.col)] = Ref.INPUT
        for d in inp.shape.dims if inp.shape is not None else []:
            if isinstance(d, N.Name):
                decls.setdefault((d.span.line, d.span.col), Ref.DIM)
    bodies = layer.forward.body + (layer.backward.body if layer.backward else [])
    for stmt in statements(bodies):
        if isinstance(stmt, (N.Assign, N.IndexAssign)):
            decls.setdefault((stmt.target_span.line, stmt.target_span.col), Ref.LOCAL)
        for node in walk(stmt):
            for i in node.indices if isinstance(node, (N.IndexAssign, N.Reduce)) else []:
                decls.setdefault((i.span.line, i.span.col), Ref.INDEX)
    for _, span in layer.backward.grads if layer.backward else []:
        decls[(span.line, span.col)] = Ref.LOCAL
    return decls


def names_of(layer: N.Layer) -> list[N.Name]:
    """Every `Name` node of `layer`: uses, and the dims and indices that declare themselves."""
    return [n for n in walk(layer) if isinstance(n, N.Name)]


def test_every_name_goes_to_a_declaration_of_the_kind_the_checker_resolved(served):
    server, uri, analysis = served
    assert analysis.spec is not None
    seen = set()
    for layer in analysis.spec.layers:
        decls = declarations(layer)
        for name in names_of(layer):
            assert name.ref != Ref.UNKNOWN
            if name.ref == Ref.UNRESOLVED:  # a declaration's own name (a dim's, an index's)
                continue
            seen.add(name.ref)
            loc = definition_at(server, uri, position(name.span.line, name.span.col))
            where = f"{layer.name}: '{name.id}' at {name.span.line}:{name.span.col}"
            if name.ref in (Ref.TRAINING, Ref.CONST):
                assert loc is None, where
                continue
            assert loc is not None, where
            assert loc.uri == uri
            assert text_at(loc.range) == name.id, where
            start = (loc.range.start.line + 1, loc.range.start.character + 1)
            assert decls.get(start) == name.ref, where
    assert seen >= {Ref.ARG, Ref.LET, Ref.PARAM, Ref.BUFFER, Ref.INPUT, Ref.DIM, Ref.LOCAL, Ref.INDEX}
    assert seen >= {Ref.TRAINING, Ref.CONST}


def test_every_name_hovers_as_what_the_checker_resolved(served):
    server, uri, analysis = served
    assert analysis.spec is not None
    for layer in analysis.spec.layers:
        for name in names_of(layer):
            if name.ref == Ref.UNRESOLVED:
                continue
            hover = hover_at(server, uri, position(name.span.line, name.span.col))
            assert hover is not None and isinstance(hover.contents, T.MarkupContent)
            head = hover.contents.value.split("\n")[1]  # after the opening ```layer
            if name.ref == Ref.LOCAL:
                expected = ("(gradient) " if name.id.startswith("grad_") else "(local) ") + name.id
                assert head == expected or head.startswith(expected + ": ["), head  # with its shape when known
            else:
                assert head.startswith(HOVER_HEAD[name.ref].format(name.id)), (name.id, head)


def test_a_local_goes_to_its_first_binding_even_when_rebound_in_a_branch(served):
    server, uri, _ = served
    loc = definition_at(server, uri, find("h * pi"))
    assert loc is not None and loc.range.start == find("h = inner")
    target = definition_at(server, uri, find("h = h * pi"))  # the rebinding's target: the first binding too
    assert target is not None and target.range.start == find("h = inner")
    first = definition_at(server, uri, find("t = x * s"))  # a first binding is its own definition
    assert first is not None and first.range.start == find("t = x * s")


def test_index_variables_go_to_the_left_side_or_their_reduction(served):
    server, uri, _ = served
    j = definition_at(server, uri, find("w[i, j]", offset=5))
    assert j is not None and j.range.start == find("y[b, j]", offset=5)
    i = definition_at(server, uri, find("x[b, i]", offset=5))
    assert i is not None and i.range.start == find("sum[i]", offset=4)


def test_a_gradient_goes_to_the_backward_header_and_an_input_from_backward_to_forward(served):
    server, uri, _ = served
    grad = definition_at(server, uri, find("grad_y * s"))
    assert grad is not None and grad.range.start == find("grad_y)")
    x = definition_at(server, uri, find("grad x", offset=5))
    assert x is not None and x.range.start == find("x: [B])")
    t = definition_at(server, uri, find("t * 0"))  # a forward local seen from backward
    assert t is not None and t.range.start == find("t = x * s")


def test_calls_go_to_the_sub_in_forward_and_to_the_layer_in_the_sub(served):
    server, uri, _ = served
    sub = definition_at(server, uri, find("inner(x)"))
    assert sub is not None and sub.range.start == find("inner = Inner")
    layer = definition_at(server, uri, find("Inner(n)"))
    assert layer is not None and layer.range.start == find("Inner(n: int)")
    update = definition_at(server, uri, find("update total", offset=7))
    assert update is not None and update.range.start == find("total: [m]")


def test_construction_names_see_only_arguments_and_lets(served):
    server, uri, _ = served
    n = definition_at(server, uri, find("n * 2"))
    assert n is not None and n.range.start == find("n: int, with_bias")
    cond = definition_at(server, uri, find("if with_bias", offset=3))
    assert cond is not None and cond.range.start == find("with_bias: bool")


def test_a_condition_named_like_its_member_goes_to_the_argument(tmp_path: Path):
    text = "layer Opt(n: int, bias: bool = true) {\n    param bias: [n] = zeros if bias\n    example(n = 2)\n}\n"
    server, uri = serve(tmp_path, text)
    cond = definition_at(server, uri, T.Position(line=1, character=text.split("\n")[1].index("if bias") + 3))
    assert cond is not None and cond.range.start == T.Position(line=0, character=text.index("bias: bool"))


def hover_text(server: LayerServer, uri: str, at: T.Position) -> str:
    hover = hover_at(server, uri, at)
    assert hover is not None and isinstance(hover.contents, T.MarkupContent)
    return hover.contents.value


def test_hover_computes_shapes_and_lets_with_the_example_values(served):
    server, uri, _ = served
    w = hover_text(server, uri, find("inner(x) @ w", offset=11))
    assert "param w: [n, m] = uniform(-1, 1)" in w
    assert "- shape with the example values: [3, 6], 18 elements" in w
    assert "- with the example values: 6" in hover_text(server, uri, find("m = n * 2"))
    assert "- shape with the example values: [6], 6 elements" in hover_text(server, uri, find("total + mean"))


def test_an_input_shape_with_a_dim_has_no_example_shape(served):
    server, uri, _ = served
    text = hover_text(server, uri, find("x: [B, n]) -> [B, m]"))
    assert "(input) x: [B, n]" in text
    assert "example values" not in text  # B has no example value
