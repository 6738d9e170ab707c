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
for c { for t { ... } } } }`: b with c, then a with the pair).

A loop whose body is one loop holding no loop whose `if`s pick a side at each step (a choice per step,
`step_choices`, planned as a `nest.Nest` of its own) is paired with it the same way (`choice_pairable`): the
pair's loop is a choice per step again, its `if`s reading `j` and `k` as computed from `j_k`. One that
`loop_split` splits where its `if`s turn is left to be split (loops in a row in the outer loop's body).

A loop whose body holds more than such a loop (a statement run once per outer step) is not paired with it;
where that loop's body is one loop holding none (after ints computed from its variable alone, a pair's
`j = j_k // K`, computed again at each inner step), those two are paired instead (`flattenable`):

    for j in range(passes) { h = h * 0.5; for k in range(layers) { for t in range(T) { body } } }

is `for j in range(passes) { h = h * 0.5; for k_t in range(...) { k = ...; t = ...; body } }`, a loop
holding a loop (`nest.Nest`) whose body is a straight run and a loop. The same steps run in the same order,
so the backward is the same. Where the pair's count changes from one outer step to the next (`for j { for k
in range(j) { for t { ... } } }`: `j * T` steps), its per-step values are joined over the outer steps
(`codegen.ragged_steps`); `nest.planned_nest` refuses a count not known as the outer step starts. A loop holding a loop
whose body holds more than that loop, inside a loop whose body holds more than it, stays as it is:
`nest.planned_nest` refuses it (a Nest inside a Nest).
"""

from __future__ import annotations

import dataclasses

from layerdsl.autodiff.loop_split import split_loop
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


def choice_pairable(outer: N.For, inner: N.Stmt, taken: set[str]) -> bool:
    """Whether `outer`, whose body is `inner` alone, a loop holding no loop whose `if`s pick a side at each
    step (a choice per step, `step_choices`: a `Nest` of its own, which a `Nest` does not hold), is written as
    one loop over their pairs of steps: a choice per step again, its `if`s reading the inner variable computed
    from the pair's. A loop `loop_split` splits where its `if`s turn stays as it is (loops in a row: a nest)."""
    if not (isinstance(inner, N.For) and not holds_loop(inner) and _bounds(outer) and _bounds(inner)):
        return False
    if not any(isinstance(s, N.If) for s in inner.body) or split_loop(inner, set(taken), stepped=True) != [inner]:
        return False
    read = {n.id for e in _bounds(inner) or () for n in walk(e) if isinstance(n, N.Name)}
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
    if len(loop.body) != 1 or not (pairable(loop, loop.body[0]) or choice_pairable(loop, loop.body[0], taken)):
        return _flattened_in(loop, taken)
    inner = loop.body[0]
    assert isinstance(inner, N.For)
    return _pair(loop, inner, taken)


def flattenable(loop: N.For) -> bool:
    """Whether `loop`, a loop holding a loop in the body of a loop it is not paired with, is written as one
    loop over the pairs of its steps and its body's: its body is one loop holding no loop (after ints it
    computes from its variable alone, a pair's `j = j_k // n`: computed again at each inner step), both over
    ranges, the inner one's count reading nothing `loop` binds."""
    split = _head_and_loop(loop)
    if split is None:
        return False
    inner = split[1]
    if holds_loop(inner) or _bounds(loop) is None or _bounds(inner) is None:
        return False
    read = {n.id for e in _bounds(inner) or () for n in walk(e) if isinstance(n, N.Name)}
    return not read & names_bound([loop])


def _head_and_loop(loop: N.For) -> tuple[list[N.Stmt], N.For] | None:
    """`loop`'s body as ints computed from its variable (and the ints before them) and one loop after them."""
    if not loop.body or not isinstance(loop.body[-1], N.For):
        return None
    *head, inner = loop.body
    assert isinstance(inner, N.For)
    bound = names_bound(loop.body)
    known = {loop.var}
    for s in head:
        if not (isinstance(s, N.Assign) and s.value.kind == N.Kind.INT):
            return None
        read = {n.id for n in walk(s.value) if isinstance(n, N.Name)}
        if read & bound - known or s.target in known or s.target in names_bound([inner]):
            return None
        known.add(s.target)
    return head, inner


def _flattened_in(loop: N.For, taken: set[str]) -> N.For:
    """`loop` with each loop of its body holding one loop alone (`flattenable`) written as one loop over the
    pairs of their steps: a loop holding no loop, so that `loop` is a loop holding loops (`nest.Nest`)."""
    body = [_flattened(s, taken) if isinstance(s, N.For) and flattenable(s) else s for s in loop.body]
    if all(a is b for a, b in zip(body, loop.body)):
        return loop
    return dataclasses.replace(loop, body=body)


def _flattened(loop: N.For, taken: set[str]) -> N.For:
    split = _head_and_loop(loop)
    assert split is not None
    head, inner = split
    return _pair(loop, inner, taken, head)


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


def _pair(outer: N.For, inner: N.For, taken: set[str], head: list[N.Stmt] | None = None) -> N.For:
    """`outer` over `inner` (its body, after `head`: ints computed from its variable) as one loop over the pairs
    of their steps."""
    span = outer.iter.span
    var = fresh_name(f"{outer.var}_{inner.var}", taken | names_bound([outer]))
    taken.add(var)
    count = B.int_valued(N.BinOp(span, "*", _count(outer), _count(inner)))
    it = outer.iter
    assert isinstance(it, N.Call)
    iter_ = B.int_valued(N.Call(span, "range", it.func_span, [count], []))
    iter_.kind = it.kind
    head = head or []
    read = {n.id for s in [*head, inner] for n in walk(s) if isinstance(n, N.Name)}
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
    return dataclasses.replace(outer, var=var, iter=iter_, body=[*body, *head, *inner.body], shapes_kept=kept)


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
            ", and the outer loop's body holds more than this loop, nor is this loop's body one loop holding none"
            " (a loop over a loop holding a loop is derived where its body is that loop alone, or where that"
            " loop's body is one loop holding none: not derived yet)",
            "write one of the counts in the spec (up to 64 steps are unrolled), or drop @function",
        )
    if _bounds(outer) is None or _bounds(inner) is None:
        return (
            ", and one of the two loops is not over range(stop) or range(start, stop) (not derived yet)",
            "loop over range(n) and compute the index from the loop's variable, or drop @function",
        )
    return (
        f", and this loop's count reads what the outer loop binds (`{outer.var}` or a local of its body), so"
        " the two loops are not one loop over their pairs of steps, nor is this loop's body one loop holding"
        " none (not derived yet)",
        "compute this loop's count before the outer loop, or drop @function",
    )
