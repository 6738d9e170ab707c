"""The operation table's derivative formulas and parameter defaults, parsed once into IR."""

from __future__ import annotations

import functools

from layerdsl.ir import nodes as N
from layerdsl.language.ops import OPS, RankCase
from layerdsl.syntax import parse_expr

TABLE = "<ops.py>"  # where a broken formula is reported: the operation table, not a spec


def formula(op_name: str, param: str, case: RankCase | None = None) -> N.Expr:
    """The op table's derivative formula for one operand, as IR (cached; copy before use): the row's own,
    or that of one of its rank cases (`rank_case`)."""
    text = case.grads[param] if case is not None else OPS[op_name].grads[param]
    if text is None:
        raise ValueError(f"{op_name}() has no derivative with respect to {param}")
    return _parsed(text)


def rank_case(op_name: str, param: str, shapes: dict[str, tuple | None]) -> RankCase | None:
    """The first of the row's rank cases (`Op.rank_grads`) that gives `param` a formula and fits the
    operands' static shapes (parameter -> dims, None where not known); None: the row's own formula."""
    return next((c for c in OPS[op_name].rank_grads if param in c.grads and c.applies(shapes)), None)


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


@functools.cache
def _parsed(text: str) -> N.Expr:
    return parse_expr(text, TABLE)


def parse_default(text: str) -> N.Expr:
    """An op-table parameter default (`1`, `None`, `-1`) as IR."""
    return parse_expr(text, TABLE)
