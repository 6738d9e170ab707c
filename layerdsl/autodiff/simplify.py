"""Simplification of derived expressions: constant folding and the identities of one and zero."""

from __future__ import annotations

import copy
import math
import operator

from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import NOWHERE
from layerdsl.ir.visit import clone


def _is(e, v) -> bool:
    return isinstance(e, N.Num) and e.value == v


def simplify(e: N.Expr) -> N.Expr:
    """Constant folding and the identities x*1, x+0, x-0, x/1, --x, x**1."""
    match e:
        case N.BinOp(op=op, left=l, right=r):
            l, r = simplify(l), simplify(r)
            if isinstance(l, N.Num) and isinstance(r, N.Num) and op in ("+", "-", "*", "/", "**"):
                folded = _folded(op, l.value, r.value)
                if folded is not None:
                    return B.num(folded)
            if op == "*" and _is(l, 1) or op in ("+",) and _is(l, 0):
                return r
            if op in ("*", "/") and _is(r, 1) or op in ("+", "-") and _is(r, 0) or op == "**" and _is(r, 1):
                return l
            if op == "*" and _is(l, -1):
                return simplify(_neg(r))
            if op == "-" and _is(l, 0):
                return simplify(_neg(r))
            if op == "**" and _is(r, 2) and isinstance(l, N.Name):
                return B.binop("*", l, clone(l))
            out = N.BinOp(e.span, op, l, r)
            out.kind = e.kind
            return out
        case N.UnaryOp(op="-", operand=o):
            o = simplify(o)
            if isinstance(o, N.Num):
                return B.num(-o.value)
            if isinstance(o, N.UnaryOp) and o.op == "-":
                return o.operand
            return _neg(o)
        case N.Call():
            c = copy.copy(e)
            c.args = [simplify(a) for a in e.args]
            c.kwargs = [N.Keyword(k.name, simplify(k.value), k.span) for k in e.kwargs]
            return c
    return e


_OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "**": operator.pow}


def _folded(op: str, left, right):
    """`left op right` where Python's value is torch's; None where Python raises (`1.0 / 0`, `10.0 ** 400`) or
    gives a complex number (`(-8.0) ** 0.5`) or inf (`1e200 * 1e200`): the generated code then writes the operation by its number form,
    torch's inf or nan (`language/number_forms.py`), as the forward writes it."""
    try:
        value = _OPERATORS[op](left, right)
    except (ZeroDivisionError, OverflowError):
        return None
    return value if isinstance(value, int) or isinstance(value, float) and math.isfinite(value) else None


def _neg(o: N.Expr) -> N.Expr:
    u = N.UnaryOp(NOWHERE, "-", o)
    u.kind = o.kind
    return u
