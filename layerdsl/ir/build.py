"""Building IR nodes that the compiler makes (not from a spec): numbers, names, operators, calls.

Every pass that writes new expressions uses these, so a made node always carries the kind the checker
would have given it.
"""

from __future__ import annotations

from layerdsl.diagnostics import Span
from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import NOWHERE
from layerdsl.ir.printer import spec_text


def num(v: int | float) -> N.Num:
    """A number literal; a float with an integer value becomes an int (`2.0` → `2`)."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        v = int(v)
    n = N.Num(NOWHERE, v, repr(v))
    n.kind = N.Kind.FLOAT if isinstance(v, float) else N.Kind.INT
    return n


def name(var: str, span: Span = NOWHERE, ref: N.Ref = N.Ref.LOCAL) -> N.Name:
    """A tensor-valued name."""
    n = N.Name(span, var)
    n.ref, n.kind = ref, N.Kind.TENSOR
    return n


def binop(op: str, left: N.Expr, right: N.Expr) -> N.Expr:
    """`left op right`: a tensor if either side is one, else a float."""
    e = N.BinOp(NOWHERE, op, left, right)
    e.kind = N.Kind.TENSOR if N.Kind.TENSOR in (left.kind, right.kind) else N.Kind.FLOAT
    return e


def call(func: str, *args: N.Expr, span: Span = NOWHERE) -> N.Call:
    """`func(*args)`, tensor-valued."""
    c = N.Call(span, func, span, list(args), [])
    c.kind = N.Kind.TENSOR
    return c


def key(e: N.Expr) -> str:
    """A structural key: equal for expressions of the same structure, different otherwise (their spec text)."""
    return spec_text(e)


def int_valued(e: N.Expr) -> N.Expr:
    """`e`, a made expression over sizes and counts, marked as the int it computes."""
    e.kind = N.Kind.INT
    return e
