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


@functools.cache
def _parsed(text: str) -> N.Expr:
    return parse_expr(text, TABLE)


def parse_default(text: str) -> N.Expr:
    """An op-table parameter default (`1`, `None`, `-1`) as IR."""
    return parse_expr(text, TABLE)
