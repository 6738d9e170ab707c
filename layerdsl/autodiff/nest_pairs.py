"""A loop whose body is one loop holding a loop, all of counts known only when forward runs, as one loop over
the pairs of their steps: a loop holding a loop (`autodiff.nest.Nest`) again.

    for j in range(passes) { for k in range(layers) { body } }

runs `body` for each k of each j in order, so it is written

    for j_k in range(maximum(passes, 0) * maximum(layers, 0)) {
        j = j_k // maximum(layers, 0)
        k = j_k % maximum(layers, 0)
        body
    }

(each count clamped at 0: a range of a negative count has no steps; `j` and `k` bound only where the body
reads them, a range's start added back). The body runs the same steps in the same order, carrying the same
values, so its backward is the nest's. The inner loop's count must not depend on the outer loop's step (it
reads nothing the outer loop binds); a loop of more levels is paired from the inside out (`for a { for b {
for c { for t { ... } } } }`: b with c, then a with the pair). A loop holding a loop whose body holds more
than that loop (a statement run once per outer step) stays as it is: `nest.planned_nest` refuses it.
"""

from __future__ import annotations

import dataclasses

from layerdsl.autodiff.tape import reserved_names
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import clone, names_bound, walk
from layerdsl.language.naming import fresh_name


def paired_loops(body: list[N.Stmt], taken: set[str]) -> list[N.Stmt]:
    """`body` with each loop whose body is one loop holding a loop written as one loop over their pairs of
    steps (`taken`: the names in use, to which the pairs' variables are added)."""
    out = [_paired(s, taken) for s in body]
    return body if all(a is b for a, b in zip(out, body)) else out


def pairable(outer: N.For, inner: N.Stmt) -> bool:
    """Whether `outer`, whose body is `inner` alone, is written as one loop over their pairs of steps."""
    if not (isinstance(inner, N.For) and holds_loop(inner) and _bounds(outer)):
        return False
    bounds = _bounds(inner)
    if bounds is None:
        return False
    read = {n.id for e in bounds for n in walk(e) if isinstance(n, N.Name)}
    return not read & names_bound([outer])


def holds_loop(loop: N.For) -> bool:
    return any(isinstance(s, N.For) for s in walk(loop) if s is not loop)


def _paired(s: N.Stmt, taken: set[str]) -> N.Stmt:
    if isinstance(s, N.If):
        then, orelse = paired_loops(s.body, taken), paired_loops(s.orelse, taken)
        return s if then is s.body and orelse is s.orelse else dataclasses.replace(s, body=then, orelse=orelse)
    if not isinstance(s, N.For):
        return s
    inner_body = paired_loops(s.body, taken)  # from the inside out
    loop = s if inner_body is s.body else dataclasses.replace(s, body=inner_body)
    if len(loop.body) != 1 or not pairable(loop, loop.body[0]):
        return loop
    inner = loop.body[0]
    assert isinstance(inner, N.For)
    return _pair(loop, inner, taken)


def _bounds(loop: N.For) -> tuple[N.Expr, N.Expr] | None:
    """The start (None: 0) and stop of `loop`'s `range(stop)` or `range(start, stop)`; None for another."""
    it = loop.iter
    if not (isinstance(it, N.Call) and it.func == "range" and len(it.args) in (1, 2) and not it.kwargs):
        return None
    zero = B.int_valued(N.Num(it.span, 0, "0"))
    return (it.args[0], it.args[1]) if len(it.args) == 2 else (zero, it.args[0])


def _count(loop: N.For) -> N.Expr:
    """`maximum(stop - start, 0)`: the number of steps of `loop` (none for a negative count)."""
    bounds = _bounds(loop)
    assert bounds is not None
    start, stop = bounds
    span = loop.iter.span
    steps = clone(stop)
    if not (isinstance(start, N.Num) and start.value == 0):
        steps = B.int_valued(N.BinOp(span, "-", steps, clone(start)))
    zero = B.int_valued(N.Num(span, 0, "0"))
    return B.int_valued(N.Call(span, "maximum", span, [steps, zero], []))


def _index(var: str, span) -> N.Name:
    index = N.Name(span, var)
    index.ref, index.kind = N.Ref.LOCAL, N.Kind.INT
    return index


def _pair(outer: N.For, inner: N.For, taken: set[str]) -> N.For:
    span = outer.iter.span
    var = fresh_name(f"{outer.var}_{inner.var}", taken | names_bound([outer]))
    taken.add(var)
    count = B.int_valued(N.BinOp(span, "*", _count(outer), _count(inner)))
    it = outer.iter
    assert isinstance(it, N.Call)
    iter_ = B.int_valued(N.Call(span, "range", it.func_span, [count], []))
    iter_.kind = it.kind
    read = {n.id for n in walk(inner) if isinstance(n, N.Name)}
    body: list[N.Stmt] = []
    for loop, op in ((outer, "//"), (inner, "%")):
        if loop.var not in read:
            continue
        start, _ = _bounds(loop) or (None, None)
        value = B.int_valued(N.BinOp(span, op, _index(var, span), _count(inner)))
        if not (isinstance(start, N.Num) and start.value == 0):
            assert start is not None
            value = B.int_valued(N.BinOp(span, "+", value, clone(start)))
        body.append(N.Assign(loop.span, loop.var, loop.var_span, value))
    kept = tuple(sorted({*outer.shapes_kept, *inner.shapes_kept}))
    return dataclasses.replace(outer, var=var, iter=iter_, body=[*body, *inner.body], shapes_kept=kept)


def with_loops_paired(layer: N.Layer) -> N.Layer:
    """`layer` with its forward's loops over loops holding loops paired (`paired_loops`)."""
    assert layer.forward is not None
    taken = reserved_names(layer) | names_bound(layer.forward.body)
    taken |= {n.id for n in walk(layer.forward) if isinstance(n, N.Name)}
    body = paired_loops(layer.forward.body, taken)
    return layer if body is layer.forward.body else layer.with_body(body)


def unpaired_reason(outer: N.For, inner: N.For) -> tuple[str, str]:
    """Why `outer`, a loop holding `inner` (a loop holding a loop), was not paired with it: the refusal's
    message's end and its hint."""
    if sum(isinstance(t, N.For) and t.span == inner.span for t in outer.body) > 1:  # `loop_split`'s pieces
        return (
            ", and it is split where its `if`s on its variable turn (loops in a row), so the outer loop's body"
            " holds more than one loop (a loop over a loop holding a loop is derived where its body is that loop"
            " alone: not derived yet)",
            "write one of the counts in the spec (up to 64 steps are unrolled), or drop @function",
        )
    if len(outer.body) != 1:
        return (
            ", and the outer loop's body holds more than this loop (a loop over a loop holding a loop is derived"
            " where its body is that loop alone: not derived yet)",
            "write one of the counts in the spec (up to 64 steps are unrolled), or drop @function",
        )
    if _bounds(outer) is None or _bounds(inner) is None:
        return (
            ", and one of the two loops is not over range(stop) or range(start, stop) (not derived yet)",
            "loop over range(n) and compute the index from the loop's variable, or drop @function",
        )
    return (
        f", and this loop's count reads what the outer loop binds (`{outer.var}` or a local of its body), so"
        " the two loops are not one loop over their pairs of steps (not derived yet)",
        "compute this loop's count before the outer loop, or drop @function",
    )
