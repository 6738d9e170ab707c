"""A `@function` layer's forward made ready for the tape: short loops unrolled, `size_at` of declared dims named.

A `for t in range(...)` whose trip count is a number written in the spec, of at most MAX_UNROLLED steps,
is unrolled here: one copy of the body per value of `t`, with `t` written as that number, and an `if`
whose condition then becomes constant (`if t > 0`) replaced by the side it takes. What such a loop
collects (`outputs.append(h)`, then `stack(outputs)`) the tape keeps as a list of vars. Short written
loops are unrolled rather than kept (measured: a 3-step recurrence's unrolled Function runs in 0.75-0.8x
the time of the loop's, which keeps and stacks every step's values). Any other loop (its count an
argument or an input's size, known when forward runs, or longer) is kept, its body made ready alike,
for `autodiff.loops`.

`size_at(x, d)` of an input or parameter whose shape names that dim becomes the dim itself (`B`, `n`), so
a shape-only use keeps no tensor for the backward.
"""

from __future__ import annotations

import dataclasses

from layerdsl.autodiff.tape import NotDerivable
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.ir.visit import clone, map_children, walk
from layerdsl.semantics.evaluate import NotConstant, evaluate

MAX_UNROLLED = 64  # copies of one loop's body: a longer loop would write a forward too long to read

LOOP_HINT = "write a backward block, or drop @function (autograd derives the loop)"


def prepared_forward(layer: N.Layer) -> N.Layer:
    """`layer` with its forward's static loops unrolled and its `size_at`s of declared dims named."""
    assert layer.forward is not None, "the parser reports a layer without forward"
    body = _unrolled(layer.forward.body, {}, layer)
    body = [_named_sizes(s, layer) for s in body]
    return dataclasses.replace(layer, forward=dataclasses.replace(layer.forward, body=body))


def _unrolled(body: list[N.Stmt], known: dict[str, int], layer: N.Layer) -> list[N.Stmt]:
    """`body` with every static loop written out; `known` holds the loop variables' current values."""
    out: list[N.Stmt] = []
    for stmt in body:
        stmt = _with_values(stmt, known) if known else stmt
        if isinstance(stmt, N.For):
            values = _trip_values(stmt, layer)
            if values is None:  # kept as a loop (`autodiff.loops`), its body made ready alike
                out.append(dataclasses.replace(stmt, body=_unrolled(stmt.body, known, layer)))
                continue
            for value in values:
                out += _unrolled(stmt.body, {**known, stmt.var: value}, layer)
        elif isinstance(stmt, N.If):
            taken = _constant(stmt.cond)
            if taken is None:
                out.append(
                    dataclasses.replace(
                        stmt, body=_unrolled(stmt.body, known, layer), orelse=_unrolled(stmt.orelse, known, layer)
                    )
                )
            else:
                out += _unrolled(stmt.body if taken else stmt.orelse, known, layer)
        else:
            out.append(stmt)
    return out


def _trip_values(loop: N.For, layer: N.Layer) -> range | None:
    """The values a `for ... in range(...)` takes, when its bounds are numbers written in the spec and it
    takes at most MAX_UNROLLED steps; None for a loop kept as one."""
    it = loop.iter
    if not (isinstance(it, N.Call) and it.func == "range"):  # a list of subs: the checker refuses subs here
        raise NotDerivable(it.span, "a derived backward cannot go through a loop over sub-layers", LOOP_HINT)
    try:
        values = range(*(int(evaluate(b, {})) for b in it.args))
    except (NotConstant, TypeError, ValueError):
        return None
    return values if len(values) <= MAX_UNROLLED else None


def _constant(cond: N.Expr) -> bool | None:
    """A condition's value when it reads numbers only (`1 > 0` once `t` is written out), else None."""
    if any(isinstance(n, N.Name) for n in walk(cond)):
        return None
    try:
        return bool(evaluate(cond, {}))
    except NotConstant:
        return None


def _with_values(stmt: N.Stmt, known: dict[str, int]) -> N.Stmt:
    """A copy of `stmt` with the loop variables written as their values."""

    def written(e):
        if isinstance(e, N.Name) and e.id in known and e.kind != N.Kind.TENSOR:
            return B.num(known[e.id])
        return map_children(e, written)

    return written(clone(stmt))


def _named_sizes(stmt: N.Stmt, layer: N.Layer) -> N.Stmt:
    """`size_at(x, k)` as the dim x's declared shape names at k (when it names one)."""

    def named(e):
        e = map_children(e, named)
        if isinstance(e, N.Call) and e.func == "size_at" and len(e.args) == 2:
            dim = _declared_dim(e.args[0], e.args[1], layer)
            if dim is not None and all(n.id in layer.symbolic_dims for n in walk(dim) if isinstance(n, N.Name)):
                return dim
            declared = f": the shape declares it as `{spec_text(dim)}`" if dim is not None else ""
            raise NotDerivable(
                e.span,
                f"under @function, size_at() reads a dim an input's shape names (`x: [B, d]`: size_at(x, 0) is B)"
                f"{declared}",
                "write the size by that name" if dim is not None else "name the dim in the input's shape and use it",
            )
        return e

    return named(stmt)


def _declared_dim(of: N.Expr, at: N.Expr, layer: N.Layer) -> N.Expr | None:
    if not isinstance(of, N.Name):
        return None
    assert layer.forward is not None
    shapes = {i.name: i.shape for i in layer.forward.inputs if not i.parts}
    shapes |= {t.name: t.shape for t in layer.tensors}
    shape = shapes.get(of.id) if of.ref in (N.Ref.INPUT, N.Ref.PARAM, N.Ref.BUFFER) else None
    try:
        k = evaluate(at, {})
    except NotConstant:
        return None
    if shape is None or not isinstance(k, int):
        return None
    dims = list(shape.dims)
    ell = next((j for j, d in enumerate(dims) if isinstance(d, N.EllipsisItem)), None)
    if ell is None:
        picked = dims[k] if -len(dims) <= k < len(dims) else None
    elif k >= 0:
        picked = dims[k] if k < ell else None
    else:
        picked = dims[k] if -k <= len(dims) - ell - 1 else None
    if picked is None or isinstance(picked, N.EllipsisItem):
        return None
    dim = clone(picked)
    for n in walk(dim):
        if isinstance(n, N.Name) and n.id in layer.symbolic_dims:
            n.ref = N.Ref.DIM
        if isinstance(n, N.Expr) and n.kind not in N.NUMBERS:
            n.kind = N.Kind.INT
    return dim
