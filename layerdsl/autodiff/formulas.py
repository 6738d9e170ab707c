"""The operation table's derivative formulas and parameter defaults, parsed once into IR."""

from __future__ import annotations

import functools

from layerdsl.ir import nodes as N
from layerdsl.language.ops import OPS
from layerdsl.syntax import parse_expr

TABLE = "<ops.py>"  # where a broken formula is reported: the operation table, not a spec


@functools.cache
def formula(op_name: str, param: str) -> N.Expr:
    """The op table's derivative formula for one operand, as IR (cached; copy before use)."""
    text = OPS[op_name].grads[param]
    if text is None:
        raise ValueError(f"{op_name}() has no derivative with respect to {param}")
    return parse_expr(text, TABLE)


def parse_default(text: str) -> N.Expr:
    """An op-table parameter default (`1`, `None`, `-1`) as IR."""
    return parse_expr(text, TABLE)
