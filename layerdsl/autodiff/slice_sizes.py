"""`size_at(x[..., a:b], k)` at a dim the slice sizes, for `autodiff.local_sizes`: the slice's length as
torch clamps its bounds, an int expression over the bounds (numbers, arguments, int locals) and the size
of the dim it slices (itself followed back to an input's, as any size of a local is).

A bound `l` of a dim of size `n` is `min(l, n)` where l >= 0 and `max(l + n, 0)` where l < 0 (a number
written in the spec decides which; another is tested as forward runs), and the length is the difference
of the bounds, not below 0: `h[:, a:b]` of `h: [B, d]` at 1 is `max(min(b, d) - min(a, d), 0)` for
arguments a, b >= 0, as Python's `len(range(d)[a:b])`. A slice with a step is not followed.
"""

from __future__ import annotations

from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import clone
from layerdsl.semantics.evaluate import NotConstant, evaluate


def sliced_dim(items: list[N.SubscriptItem], k: int) -> tuple[int, N.Slice] | None:
    """The dim of `x` that dim k (>= 0) of `x[items]` is, and the slice with bounds (no step) that sizes it;
    None where dim k is not such a slice's (or an `...`, a `none` or a tensor index comes before it)."""
    if k < 0:
        return None
    j = 0
    for item in items:
        if isinstance(item, N.Slice):
            if k == 0:
                bounded = item.lower is not None or item.upper is not None
                step = item.step is None or isinstance(item.step, N.NoneLit)
                return (j, item) if bounded and step else None
            k, j = k - 1, j + 1
        elif isinstance(item, N.NoneLit):
            if k == 0:
                return None
            k -= 1
        elif isinstance(item, N.Expr) and item.kind == N.Kind.INT:
            j += 1  # an int drops the dim
        else:
            return None  # an `...`, or a tensor index (or bool mask): its dims are the index's
    return None  # a dim after the items: not sliced


def slice_length(item: N.Slice, size: N.Expr) -> N.Expr:
    """The length `item` (`a:b`) keeps of a dim of size `size`, as torch clamps its bounds."""
    low = _clamped(item.lower, size, B.int_valued(B.num(0)))
    high = _clamped(item.upper, size, clone(size))
    return _call("maximum", _minus(high, low), _int(0))


def _clamped(bound: N.Expr | None, size: N.Expr, default: N.Expr) -> N.Expr:
    if bound is None or isinstance(bound, N.NoneLit):
        return default
    value = _value(bound)
    if value is not None and value >= 0:
        return _call("minimum", clone(bound), clone(size))
    from_end = _call("maximum", _plus(clone(bound), clone(size)), _int(0))
    if value is not None:  # < 0: counted from the end
        return from_end
    below = N.Compare(bound.span, ["<"], [clone(bound), _int(0)])
    below.kind = N.Kind.BOOL
    chosen = N.IfExp(bound.span, below, from_end, _call("minimum", clone(bound), clone(size)))
    return B.int_valued(chosen)


def _value(e: N.Expr) -> int | None:
    try:
        v = evaluate(e, {})
    except (NotConstant, ArithmeticError, TypeError):
        return None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _call(func: str, *args: N.Expr) -> N.Expr:
    return B.int_valued(B.call(func, *args, span=args[0].span))


def _int(v: int) -> N.Expr:
    return B.int_valued(B.num(v))


def _minus(a: N.Expr, b: N.Expr) -> N.Expr:
    return B.int_valued(N.BinOp(a.span, "-", a, b))


def _plus(a: N.Expr, b: N.Expr) -> N.Expr:
    return B.int_valued(N.BinOp(a.span, "+", a, b))
