"""The operation table's derivative formulas and parameter defaults, parsed once into IR, and the values of
the table's folded helpers (`Op.folded`): the rows that a formula calls on what is known where it is
instantiated (an einsum's equation, a list operand's tensors), computed there, never emitted."""

from __future__ import annotations

import functools
from collections.abc import Callable

from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import clone, map_children
from layerdsl.language.ops import OPS, RankCase
from layerdsl.syntax import parse_expr

TABLE = "<ops.py>"  # where a broken formula is reported: the operation table, not a spec


def formula(op_name: str, param: str, case: RankCase | None = None) -> N.Expr:
    """The op table's derivative formula for one operand, as IR (cached; copy before use): the row's own,
    or that of one of its rank cases (`rank_branches`)."""
    text = case.grads[param] if case is not None else OPS[op_name].grads[param]
    if text is None:
        raise ValueError(f"{op_name}() has no derivative with respect to {param}")
    return _parsed(text)


def rank_branches(
    op_name: str, param: str, shapes: dict[str, tuple | None]
) -> list[tuple[dict[str, str], RankCase | None]]:
    """The formulas that `param`'s gradient chooses between at run time, in order, each with the operands'
    rank patterns it needs (`{"other": "1"}`: other a vector), tested on their `ndim`: the rank cases that
    the declared shapes allow without settling (an operand declared `[..., n]`), up to the first that they
    settle, or the row's own (None) last. One entry with no tests: the formula is chosen here."""
    branches: list[tuple[dict[str, str], RankCase | None]] = []
    for case in OPS[op_name].rank_grads:
        if param not in case.grads:
            continue
        tests = case.run_time_tests(shapes)
        if tests == {}:
            return [*branches, ({}, case)]
        if tests is not None:
            branches.append((tests, case))
    return [*branches, ({}, None)]


class Underivable(ValueError):
    """A folded helper's arguments admit no formula (an einsum operand summed over an index only it has)."""


def fold(e: N.Expr) -> N.Expr:
    """`e` (an instantiated formula) with each call of a folded helper (`Op.folded`) replaced by its value,
    innermost first. Raises Underivable where the arguments admit none."""
    e = map_children(e, fold)
    if isinstance(e, N.Call) and e.func in FOLDS:
        return FOLDS[e.func](*e.args)
    return e


def einsum_grad_equation(equation: str, index: int) -> str:
    """The equation of `einsum(equation, operands)`'s gradient with respect to its `index`-th operand: the
    result's subscripts, then the other operands', give that operand's (`"bi,ik->bk"`, 0: `"bk,ik->bi"`).
    An index of the operand that neither the result nor another operand has (summed over in that operand
    alone) has no such equation, nor has an index written twice in it (torch's einsum writes no diagonal)."""
    inputs, out = equation.split("->")
    subscripts = inputs.split(",")
    own, others = subscripts[index], subscripts[:index] + subscripts[index + 1 :]
    if not set(own) <= set(out).union(*others):
        raise Underivable(
            "a derived backward cannot go through a sum over an index only one tensor has; write a backward block"
        )
    if len(set(own)) < len(own):
        raise Underivable("a derived backward cannot write a diagonal (an index twice in one tensor)")
    return ",".join([out, *others]) + "->" + own


def _einsum_grad_equation(equation: N.Expr, index: N.Expr) -> N.Expr:
    assert isinstance(equation, N.Str) and isinstance(index, N.Num), "an einsum's equation is a literal"
    out = N.Str(N.NOWHERE, einsum_grad_equation(equation.value, int(index.value)))
    out.kind = N.Kind.STR
    return out


def _einsum_grad_operands(grad: N.Expr, operands: N.Expr, index: N.Expr) -> N.Expr:
    """`[grad, *operands without the index-th]`: what `einsum_grad_equation`'s equation reads."""
    assert isinstance(operands, N.ListExpr) and isinstance(index, N.Num)
    k = int(index.value)
    out = N.ListExpr(N.NOWHERE, [clone(grad)] + [clone(o) for j, o in enumerate(operands.items) if j != k])
    out.kind = N.Kind.LIST
    return out


def _cat_offset(tensors: N.Expr, dim: N.Expr, index: N.Expr) -> N.Expr:
    """Where cat's `index`-th tensor starts along `dim`: the sizes of those before it, summed (0 for the
    first)."""
    assert isinstance(tensors, N.ListExpr) and isinstance(index, N.Num)
    offset: N.Expr = B.num(0)
    for k, item in enumerate(tensors.items[: int(index.value)]):
        size = B.call("reduced_numel", clone(item), clone(dim))
        size.kind = N.Kind.INT
        offset = size if k == 0 else B.binop("+", offset, size)
        offset.kind = N.Kind.INT
    return offset


# The folded helpers' values, by row (tests/test_op_table_list_grads.py checks they match `Op.folded`).
FOLDS: dict[str, Callable[..., N.Expr]] = {
    "einsum_grad_equation": _einsum_grad_equation,
    "einsum_grad_operands": _einsum_grad_operands,
    "cat_offset": _cat_offset,
}


@functools.cache
def _parsed(text: str) -> N.Expr:
    return parse_expr(text, TABLE)


def parse_default(text: str) -> N.Expr:
    """An op-table parameter default (`1`, `None`, `-1`) as IR."""
    return parse_expr(text, TABLE)
