"""How many parts `a, b = chunk(x, 2, dim = d)` and `a, b = split(x, size, dim = d)` give, checked where only
forward knows the size of the dim.

The tape cuts such a call into one slice per name (`tape._part_slices`), the last one to the end of the dim, so
a size that gives torch's call another number of parts than names would give the Function parts of its own
where the plain module's unpacking raises (`split(x, 2, dim = 0)` of 6 rows: three tensors, two names). The
checker refuses what the static shapes decide; what they do not (an argument's size, a cat of a run-time
loop's items, a slice by arguments) is a `PartsCheck` on the tape, which the Function tests once the value is
computed (`codegen.function_checks`), raising a ValueError naming the layer, the call and its spec line.
"""

from __future__ import annotations

from dataclasses import dataclass

from layerdsl.ir import build as B
from layerdsl.ir import nodes as N


@dataclass(eq=False)
class PartsCheck(N.Require):
    """`cond` (on `size`, the size of dim `dim`): torch's `call` gives `names` parts; `source` is the value cut
    into `cut` (chunk's count, split's size)."""

    call: N.Call
    names: int
    source: N.Expr
    cut: N.Expr
    dim: int
    size: N.Expr


def parts_check(call: N.Call, source: N.Expr, dim: int, cut: N.Expr, names: int) -> PartsCheck | None:
    """The check that `call` (`chunk(x, cut, dim)` or `split(x, cut, dim)` of `source`, unpacked into `names`)
    gives as many parts as names; None where the checker proved it from the static shapes, for sizes given as
    a list (the checker proves they add up) and for a chunk into one part."""
    if (
        call.parts_proven
        or isinstance(cut, N.ListExpr)
        or (call.func == "chunk" and isinstance(cut, N.Num) and cut.value == 1)
    ):
        return None
    size = B.int_valued(N.Call(N.NOWHERE, "size_at", N.NOWHERE, [source, B.num(dim)], []))
    cond, guard = _chunk_cond(size, cut, names) if call.func == "chunk" else (_split_cond(size, cut, names), None)
    return PartsCheck(call.span, cond, guard, None, call, names, source, cut, dim, size)


def _split_cond(size: N.Expr, each: N.Expr, names: int) -> N.Expr:
    """torch.split's parts of `each` rows: one for a size up to `each` (none included), else ceil(size / each)."""
    if names == 1:
        return _compare(["<="], [size, each])
    low, high = (_times(B.num(k), each) for k in (names - 1, names))
    return _compare(["<", "<="], [low, size, high])


def _chunk_cond(size: N.Expr, count: N.Expr, names: int) -> tuple[N.Expr, N.Expr | None]:
    """torch.chunk's parts: `count` for an empty dim, else ceil(size / each) of ceil(size / count) rows each,
    which is `count` where the first count - 1 parts leave rows for the last."""
    each = B.int_valued(N.BinOp(N.NOWHERE, "//", _plus(size, _minus_one(count)), count))
    if isinstance(count, N.Num) and count.value == names:  # an empty dim gives as many parts as names
        first = _times(B.num(names - 1), each)
        return _compare(["<"], [first, size]), _compare([">"], [size, B.num(0)])
    parts = N.IfExp(N.NOWHERE, _compare([">"], [size, B.num(0)]), _ceil(size, each), count)
    return _compare(["=="], [B.int_valued(parts), B.num(names)]), None


def _ceil(a: N.Expr, b: N.Expr) -> N.Expr:
    return B.int_valued(N.BinOp(N.NOWHERE, "//", _plus(a, B.int_valued(N.BinOp(N.NOWHERE, "-", b, B.num(1)))), b))


def _minus_one(e: N.Expr) -> N.Expr:
    return B.num(e.value - 1) if isinstance(e, N.Num) else B.int_valued(N.BinOp(N.NOWHERE, "-", e, B.num(1)))


def _plus(a: N.Expr, b: N.Expr) -> N.Expr:
    return a if isinstance(b, N.Num) and b.value == 0 else B.int_valued(N.BinOp(N.NOWHERE, "+", a, b))


def _times(k: N.Num, e: N.Expr) -> N.Expr:
    if isinstance(e, N.Num):
        return B.num(k.value * e.value)
    return e if k.value == 1 else B.int_valued(N.BinOp(N.NOWHERE, "*", k, e))


def _compare(ops: list[str], operands: list[N.Expr]) -> N.Expr:
    e = N.Compare(N.NOWHERE, ops, operands)
    e.kind = N.Kind.BOOL
    return e
