"""Transposes that cancel, once folding has put a formula's transpose on a recomputed one.

`x @ transpose(w, 0, 1)`'s gradient for x is `g @ transpose(transpose(w, 0, 1), -1, -2)`: for a 2-D `w`,
that is `g @ w`. And its gradient for w is `transpose(matmul(transpose(X, 0, 1), G), 0, 1)`, computed
as a product and transposed after: for 2-D `X` and `G` (`flatten(., 0, -2)` is always 2-D), that is
`matmul(transpose(G, 0, 1), X)`, one transpose instead of two. Both are views, so neither rewrite moves
memory; each saves an ATen call, which is what a backward costs at small shapes.
"""

from __future__ import annotations

from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.optimize.statements import Facts, Shapes, Stmt, rewritten_children, touches, use_counts


def transposes_cancelled(stmts: list[Stmt], facts: Facts) -> list[Stmt]:
    """`stmts` with transposes of transposes of the same two dims dropped, and a 2-D product transposed
    after (bound to a name read only by the transpose) written as the product of the transposes."""
    shapes = Shapes(facts)
    uses = use_counts(stmts)
    bound: dict[str, Stmt] = {}
    merged: set[int] = set()
    for s in stmts:
        if touches(s.expr, funcs=("transpose",)):  # else cancelling would only copy it
            s.expr = _cancelled(s.expr, shapes)
        src = _transposed_product(s.expr, bound, uses, facts, shapes)
        if src is not None and not s.guard:
            product = src.expr
            assert isinstance(product, N.Call)
            left, right = product.args
            assert isinstance(left, N.Call)
            s.expr = _matmul(_transpose(right), left.args[0], product)
            s.leaves |= src.leaves
            merged.add(id(src))
        shapes.learn(s)
        if not s.guard and not s.recompute:
            bound[s.target] = s
    return [s for s in stmts if id(s) not in merged]


def _dims(e: N.Expr) -> tuple[int, int] | None:
    """The two dims a `transpose` call swaps, when both are literal ints."""
    if not (isinstance(e, N.Call) and e.func == "transpose"):
        return None
    given = {k.name: k.value for k in e.kwargs}
    values = [_int(v) for v in [*e.args[1:], *(given[k] for k in ("dim0", "dim1") if k in given)]]
    if len(e.args) + len(given) != 3 or len(values) != 2:
        return None
    a, b = values
    return None if a is None or b is None else (a, b)


def _pair(dims: tuple[int, int], rank: int | None) -> frozenset[int] | None:
    """The dims as a set, negative ones counted from the end (None when that needs an unknown rank)."""
    if rank is None:
        return frozenset(dims) if all(d >= 0 for d in dims) or all(d < 0 for d in dims) else None
    return frozenset(d % rank for d in dims)


def _rank(e: N.Expr, shapes: Shapes) -> int | None:
    """`e`'s number of dims, when known: from its static shape, or 2 for `flatten(x, 0, -2)`."""
    if isinstance(e, N.Call) and e.func == "flatten" and [_int(a) for a in e.args[1:]] == [0, -2] and not e.kwargs:
        return 2
    shape = shapes.of(e)
    if shape is None or any(d == "..." or d.startswith("<") for d in shape):
        return None
    return len(shape)


def _int(e: N.Expr) -> int | None:
    if isinstance(e, N.Num) and e.value == int(e.value):
        return int(e.value)
    if isinstance(e, N.UnaryOp) and e.op == "-" and (v := _int(e.operand)) is not None:
        return -v
    return None


def _cancelled(e: N.Expr, shapes: Shapes) -> N.Expr:
    e = rewritten_children(e, lambda c: _cancelled(c, shapes))
    outer = _dims(e)
    if outer is None:
        return e
    assert isinstance(e, N.Call)
    inner = _dims(e.args[0])
    if inner is None:
        return e
    assert isinstance(e.args[0], N.Call)
    x = e.args[0].args[0]
    rank = _rank(x, shapes)
    one, other = _pair(inner, rank), _pair(outer, rank)
    return x if one is not None and one == other else e


def _transposed_product(
    e: N.Expr, bound: dict[str, Stmt], uses: dict[str, int], facts: Facts, shapes: Shapes
) -> Stmt | None:
    """The statement binding `t` in `e = transpose(t, 0, 1)`, when it is `matmul(transpose(P, 0, 1), Q)` of
    2-D `P` and `Q` and nothing else reads `t`."""
    dims = _dims(e)
    if dims is None or _pair(dims, 2) != frozenset({0, 1}):
        return None
    assert isinstance(e, N.Call)
    t = e.args[0]
    if not isinstance(t, N.Name) or uses.get(t.id) != 1 or t.id in facts.kept or t.id not in bound:
        return None
    src = bound[t.id]
    product = src.expr
    if not (isinstance(product, N.Call) and product.func == "matmul" and len(product.args) == 2 and not product.kwargs):
        return None
    left, right = product.args
    left_dims = _dims(left)
    if left_dims is None or _pair(left_dims, 2) != frozenset({0, 1}):
        return None
    assert isinstance(left, N.Call)
    return src if _rank(left.args[0], shapes) == 2 and _rank(right, shapes) == 2 else None


def _transpose(x: N.Expr) -> N.Expr:
    out = B.call("transpose", x, B.num(0), B.num(1), span=x.span)
    out.kind = x.kind
    return out


def _matmul(a: N.Expr, b: N.Expr, like: N.Call) -> N.Expr:
    out = B.call("matmul", a, b, span=like.span)
    out.kind = like.kind
    return out
