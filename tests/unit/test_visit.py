"""The generic traversal: children from node fields, pre-order walks, and rebuilding transformers."""

from __future__ import annotations

from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import NOWHERE
from layerdsl.ir.visit import (
    children,
    map_children,
    names_read,
    replace_children,
    statements,
    sub_expressions,
    walk,
)
from layerdsl.syntax.parser import parse_file


def name(i: str) -> N.Name:
    return N.Name(NOWHERE, i)


def num(v: int) -> N.Num:
    return N.Num(NOWHERE, v, str(v))


def call(func: str, args: list[N.Expr], **kwargs: N.Expr) -> N.Call:
    return N.Call(NOWHERE, func, NOWHERE, args, [N.Keyword(k, v, NOWHERE) for k, v in kwargs.items()])


def ids(nodes) -> list:
    return [n.id if isinstance(n, N.Name) else n.value if isinstance(n, N.Num) else type(n).__name__ for n in nodes]


def test_children_include_keyword_values_after_positional_arguments():
    c = call("clamp", [name("x")], min=N.BinOp(NOWHERE, "+", name("a"), name("b")), max=num(1))
    assert ids(children(c)) == ["x", "BinOp", 1]


def test_children_include_slice_bounds_and_skip_the_ellipsis():
    s = N.Subscript(
        NOWHERE, name("x"), [N.EllipsisItem(NOWHERE), N.Slice(NOWHERE, name("lo"), None, num(2)), name("i")]
    )
    assert ids(children(s)) == ["x", "lo", 2, "i"]


def test_walk_is_pre_order_through_statements_and_branches():
    body = [
        N.Assign(NOWHERE, "h", NOWHERE, N.BinOp(NOWHERE, "*", name("x"), name("w"))),
        N.If(NOWHERE, name("c"), [N.Return(NOWHERE, [name("h")])], [N.Return(NOWHERE, [num(0)])]),
    ]
    order = [n for stmt in body for n in walk(stmt)]
    assert ids(order) == ["Assign", "BinOp", "x", "w", "If", "c", "Return", "h", "Return", 0]
    assert [type(s).__name__ for s in statements(body)] == ["Assign", "If", "Return", "Return"]


def test_walk_reaches_every_part_of_a_parsed_layer():
    spec = parse_file(
        "t.layer",
        "layer T(n: int) {\n"
        "    let m = n * 2\n"
        "    param w: [m] = uniform(-1, 1)\n"
        "    example(n = 3)\n"
        "    forward(x: [B, m]) -> [B, m] {\n"
        "        return clamp(x, min = w[0:k])\n"
        "    }\n"
        "}\n",
    )
    seen = names_read(spec)
    assert {"n", "m", "B", "x", "w", "k"} <= seen


def test_map_children_rebuilds_nested_keyword_values_and_leaves_the_original():
    inner = call("clamp", [name("x")], min=name("a"))
    outer = call("f", [inner], scale=N.BinOp(NOWHERE, "*", name("a"), num(2)))

    def rename(e: N.Node) -> N.Node:
        if isinstance(e, N.Name) and e.id == "a":
            return name("b")
        return map_children(e, rename)

    out = rename(outer)
    assert ids(walk(out)) == ["Call", "Call", "x", "b", "BinOp", "b", 2]
    assert ids(walk(outer)) == ["Call", "Call", "x", "a", "BinOp", "a", 2]
    assert out.kwargs[0] is not outer.kwargs[0]


def test_map_children_rewrites_slice_bounds():
    s = N.Subscript(NOWHERE, name("x"), [N.Slice(NOWHERE, name("a"), name("b"), None)])
    out = map_children(s, lambda e: num(7) if isinstance(e, N.Name) and e.id == "a" else e)
    assert ids(children(out)) == ["x", 7, "b"]
    assert ids(children(s)) == ["x", "a", "b"]


def test_replace_children_rewrites_in_place():
    c = call("clamp", [name("x")], min=name("a"))
    kw = c.kwargs[0]
    assert replace_children(c, lambda e: name(e.id.upper())) is c
    assert ids(children(c)) == ["X", "A"]
    assert c.kwargs[0] is kw


def test_annotations_are_not_children():
    n = name("x")
    n.kind, n.ref = N.Kind.TENSOR, N.Ref.INPUT
    assert children(n) == []
    assert N.Kind.TENSOR == "tensor" and f"{N.Kind.INT}" == "int" and N.Ref("param") is N.Ref.PARAM


def test_sub_expressions_reach_through_slices_and_keywords_to_expressions_only():
    sub = N.Subscript(NOWHERE, name("x"), [N.Slice(NOWHERE, num(1), None, num(2)), N.EllipsisItem(NOWHERE), name("i")])
    assert ids(sub_expressions(sub)) == ["x", 1, 2, "i"]
    c = call("clamp", [name("x")], min=num(0))
    assert ids(sub_expressions(c)) == ["x", 0]
    assert all(isinstance(e, N.Expr) for e in sub_expressions(sub) + sub_expressions(c))
