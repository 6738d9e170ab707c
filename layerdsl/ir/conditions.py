"""Conditions as truth functions: an `if`'s condition is `and`/`or`/`not` over atoms (each other test,
`training`, `bias`, `B > 0`, keyed by its spec text), evaluated under chosen truth values of the atoms."""

from __future__ import annotations

from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text


def atoms(cond: N.Expr, into: dict[str, N.Expr]) -> None:
    """Adds the atoms of `cond` to `into`, by their spec text, in the order they are read."""
    if isinstance(cond, N.BoolOp):
        atoms(cond.left, into)
        atoms(cond.right, into)
    elif isinstance(cond, N.Not):
        atoms(cond.operand, into)
    elif not isinstance(cond, N.Bool):
        into.setdefault(spec_text(cond), cond)


def holds(cond: N.Expr, truth: dict[str, bool]) -> bool:
    """`cond` under `truth` (atom text -> value); KeyError for an atom `truth` does not give."""
    if isinstance(cond, N.BoolOp):
        left, right = holds(cond.left, truth), holds(cond.right, truth)
        return left and right if cond.op == "and" else left or right
    if isinstance(cond, N.Not):
        return not holds(cond.operand, truth)
    if isinstance(cond, N.Bool):
        return bool(cond.value)
    return truth[spec_text(cond)]
