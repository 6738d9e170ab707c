"""The shape engine: shape rules over symbolic dims, and the shapes of IR expressions."""

from __future__ import annotations

import pytest

from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import NOWHERE
from layerdsl.semantics import shapes as S


@pytest.mark.parametrize(
    "operands, expected",
    [
        ([("B", "n"), ("n",)], ("B", "n")),
        ([("n",), ("B", "n")], ("B", "n")),
        ([("B", "1"), ("1", "n")], ("B", "n")),
        ([(), ("B", "n"), ()], ("B", "n")),  # numbers broadcast with anything
        ([(), ()], ()),
        ([("n",), ("m",)], None),  # different symbols may differ: not provably compatible
        ([("B", "n"), None], None),  # unknown stays unknown
        ([("...", "n"), ("n",)], ("...", "n")),
        ([("...", "n"), ("B", "n")], None),  # `...` may or may not cover B
        ([("...", "n"), ("...", "1")], ("...", "n")),
        ([("<x>",), ()], ("<x>",)),
        ([("<x>",), ("<x>",)], ("<x>",)),
        ([("<x>",), ("n",)], None),  # an input of unknown rank
    ],
)
def test_broadcast(operands, expected):
    assert S.broadcast(operands) == expected


@pytest.mark.parametrize(
    "a, b, expected",
    [
        (("B", "k"), ("k", "m"), ("B", "m")),
        (("k",), ("k",), ()),  # vector · vector
        (("B", "k"), ("k",), ("B",)),  # matrix · vector
        (("k",), ("k", "m"), ("m",)),  # vector · matrix
        (("b", "n", "k"), ("k", "m"), ("b", "n", "m")),
        (("b", "n", "k"), ("1", "k", "m"), ("b", "n", "m")),  # batch dims broadcast
        (("k",), ("b", "k", "m"), ("b", "m")),
        (("...", "n", "k"), ("k", "m"), ("...", "n", "m")),
        (("...", "k"), ("k", "m"), ("...", "m")),  # a vector or a stack of rows: the same either way
        (("B", "k"), ("...", "k"), None),  # a vector or a stack of matrices: not known
        (("b", "n", "k"), ("c", "k", "m"), None),  # batch dims that may not broadcast
        (None, ("k", "m"), None),
        ((), ("k", "m"), None),  # matmul takes no numbers
    ],
)
def test_matmul(a, b, expected):
    assert S.matmul(a, b) == expected


@pytest.mark.parametrize(
    "shape, dims, keepdim, expected",
    [
        (("B", "n"), [-1], False, ("B",)),
        (("B", "n"), [-1], True, ("B", "1")),
        (("B", "c", "h", "w"), [2, 3], True, ("B", "c", "1", "1")),
        (("B", "c", "h", "w"), [-1, 1], False, ("B", "h")),
        (("B", "n"), None, False, ()),
        (("B", "n"), None, True, ("1", "1")),
        (("...", "n"), [-1], False, ("...",)),
        (("...", "n"), [-1], True, ("...", "1")),
        (("...", "n"), [0], False, None),  # dim 0 lies in the `...` group
        (("...", "n"), [-2], False, None),  # so does -2
        (("T", "...", "n"), [0], False, ("...", "n")),  # a dim before the group counts from the start
        (("T", "...", "n"), [-2], False, None),  # -2 lies in the group (or is T, where it is empty)
        (("B", "n"), [2], False, None),  # out of range
        (None, [0], False, None),
    ],
)
def test_reduce(shape, dims, keepdim, expected):
    assert S.reduce(shape, dims, keepdim) == expected


def test_views():
    assert S.transpose(("b", "n", "m"), -1, -2) == ("b", "m", "n")
    assert S.transpose(("...", "n", "m"), -1, -2) == ("...", "m", "n")
    assert S.transpose(("...", "n", "m"), 0, 1) is None
    assert S.permute(("a", "b", "c"), [2, 0, 1]) == ("c", "a", "b")
    assert S.permute(("a", "b", "c"), [0, 0, 1]) is None  # not a permutation
    assert S.align(("c",), [False, True, True]) == ("c", "1", "1")
    assert S.align(("b", "c"), [False, True]) == ("b", "1", "c")
    assert S.einsum("bi,ij->bj", [("B", "n"), ("n", "m")]) == ("B", "m")
    assert S.einsum("bi,ij->bj", [("B", "n"), None]) is None


def tensor(name: str) -> N.Name:
    return B.name(name)


def keyword(name: str, value: N.Expr) -> N.Keyword:
    return N.Keyword(name, value, NOWHERE)


def boolean(value: bool) -> N.Bool:
    b = N.Bool(NOWHERE, value)
    b.kind = "bool"
    return b


ENV = {"x": ("B", "n"), "w": ("n", "m"), "b": ("n",), "v": ("n",)}


def test_expr_shape_of_names_numbers_and_operators():
    assert S.expr_shape(tensor("x"), ENV) == ("B", "n")
    assert S.expr_shape(tensor("unknown"), ENV) is None
    assert S.expr_shape(B.num(2), ENV) == ()
    assert S.expr_shape(B.binop("*", B.num(2), B.binop("+", tensor("x"), tensor("b"))), ENV) == ("B", "n")
    assert S.expr_shape(B.binop("@", tensor("x"), tensor("w")), ENV) == ("B", "m")
    assert S.expr_shape(B.binop("@", tensor("v"), tensor("b")), ENV) == ()
    assert S.expr_shape(B.binop("+", tensor("x"), tensor("w")), ENV) is None


def test_expr_shape_of_calls():
    assert S.expr_shape(B.call("sqrt", tensor("x")), ENV) == ("B", "n")
    assert S.expr_shape(B.call("matmul", tensor("x"), tensor("w")), ENV) == ("B", "m")
    assert S.expr_shape(B.call("sum", tensor("x")), ENV) == ()  # over every dim by default
    keep = B.call("sum", tensor("x"))
    keep.kwargs = [keyword("dim", B.num(-1)), keyword("keepdim", boolean(True))]
    assert S.expr_shape(keep, ENV) == ("B", "1")
    positional = B.call("mean", tensor("x"), B.num(0))
    assert S.expr_shape(positional, ENV) == ("n",)
    variable = B.call("sum", tensor("x"), B.name("d", ref="arg"))
    variable.args[1].kind = "int"
    assert S.expr_shape(variable, ENV) is None  # a dim known only at run time
    assert S.expr_shape(B.call("transpose", tensor("x"), B.num(0), B.num(1)), ENV) == ("n", "B")
    assert S.expr_shape(B.call("sum_to", tensor("x"), tensor("b")), ENV) == ("n",)
    reduced = B.call("reduced_view", tensor("g"), tensor("x"), B.num(-1), boolean(False))
    assert S.expr_shape(reduced, ENV) == ("B", "1")
    whole = B.call("reduced_view", tensor("s"), tensor("x"), N.NoneLit(NOWHERE), boolean(False))
    assert S.expr_shape(whole, {**ENV, "s": ()}) == ()  # over every dim: the gradient itself
    assert S.expr_shape(B.call("reshape", tensor("x"), tensor("w")), ENV) is None  # no rule: unknown


def test_declared_dims_are_canonical_spec_text():
    n = B.name("n", ref="dim")
    n.kind = "int"
    shape = N.Shape(NOWHERE, [N.EllipsisItem(NOWHERE), B.binop("*", B.num(2), n), B.num(1)])
    assert S.declared_shape(shape, "x") == ("...", "2 * n", "1")
    assert S.declared_shape(None, "x") == ("<x>",)


@pytest.mark.parametrize(
    "shape, sizes, expanded, problem",
    [
        (("1", "n"), ["4", "B", "-1"], ("4", "B", "n"), None),  # a new leading dim, a 1 grown, -1 kept
        (("B", "n"), ["B", "n"], ("B", "n"), None),
        (("...", "n"), ["B", "T", "-1"], None, None),  # the group may cover B and T: left to run time
        (("B", "n"), ["B", "m"], ("B", "m"), "size m at dim 1"),
        (("B", "n"), ["n"], ("n",), "1 size for 2 dims"),
        (("1", "n"), ["-1", "B", "n"], None, "-1 at a new leading dim"),
    ],
)
def test_expand_follows_torchs_rule(shape, sizes, expanded, problem):
    assert S.expand(shape, sizes) == expanded
    found = S.expand_problem(shape, sizes)
    assert (found is None) if problem is None else (found is not None and problem in found)
