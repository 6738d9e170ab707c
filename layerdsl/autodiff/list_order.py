"""A list made in reverse order of another (a bidirectional RNN's `in_order`), as a flip of its stack.

A reverse direction collects its states from the last step to the first and puts them back in order:

    backwards = []
    for s in range(T) { h = step(x[..., T - 1 - s, :], h); backwards.append(h) }
    in_order = []
    for t in range(T) { in_order.append(backwards[T - 1 - t]) }
    y = stack(in_order, dim = -2)

The second loop only reorders: under `@function` it is written as `y = flip(stack(backwards, dim = -2),
[-2])`, whose backward is a flip of the gradient, and the list is not made. The loop must append one item
per step, `L[n - 1 - t]` of a list `L` that a loop of the same block over the same `range(n)` appends to
once per step (and nothing else does), and its list must be read only as `stack(L2, dim = d)` after it in
the same block; any other loop is left as it is (and refused, where it is, as before).
"""

from __future__ import annotations

import copy
import dataclasses

from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.ir.visit import map_children, statements, walk


def reversed_lists(layer: N.Layer) -> N.Layer:
    """`layer` with each loop that puts a list back in order written as a flip of the list's stack."""
    if layer.forward is None:
        return layer
    appends = _append_counts(layer.forward.body)
    body = _block(layer.forward.body, appends)
    if body is layer.forward.body:
        return layer
    return layer.with_body(body)


def _append_counts(body: list[N.Stmt]) -> dict[str, int]:
    """How many appends to each list the forward writes (in loops' and `if`s' bodies too)."""
    counts: dict[str, int] = {}
    for s in statements(body):
        if isinstance(s, N.Append):
            counts[s.target] = counts.get(s.target, 0) + 1
    return counts


def _block(body: list[N.Stmt], appends: dict[str, int]) -> list[N.Stmt]:
    out = [_inner(s, appends) for s in body]
    changed = any(a is not b for a, b in zip(out, body))
    for at, stmt in enumerate(out):
        reordered = _reordered(stmt, out[:at], appends)
        if reordered is None:
            continue
        target, source = reordered
        after = out[at + 1 :]
        if not _read_only_stacked(after, target):
            continue
        made = next(s for s in out[:at] if _makes(s, target))
        rest = [_flipped(s, target, source) for s in after]
        return _block([s for s in out[:at] if s is not made] + rest, appends)
    return out if changed else body


def _inner(stmt: N.Stmt, appends: dict[str, int]) -> N.Stmt:
    if isinstance(stmt, N.For):
        body = _block(stmt.body, appends)
        return stmt if body is stmt.body else dataclasses.replace(stmt, body=body)
    if isinstance(stmt, N.If):
        then, orelse = _block(stmt.body, appends), _block(stmt.orelse, appends)
        if then is stmt.body and orelse is stmt.orelse:
            return stmt
        return dataclasses.replace(stmt, body=then, orelse=orelse)
    return stmt


def _reordered(stmt: N.Stmt, before: list[N.Stmt], appends: dict[str, int]) -> tuple[str, str] | None:
    """`(L2, L)` for `for t in range(n) { L2.append(L[n - 1 - t]) }` whose L2 is made empty before it in
    the block and appended nowhere else, and whose L a loop before it over `range(n)` appends to, once
    per step and nowhere else; None for another statement."""
    count = _count(stmt)
    if count is None or not isinstance(stmt, N.For) or len(stmt.body) != 1:
        return None
    append = stmt.body[0]
    if not (isinstance(append, N.Append) and appends.get(append.target) == 1):
        return None
    item = append.value
    if not (isinstance(item, N.Subscript) and isinstance(item.value, N.Name) and len(item.items) == 1):
        return None
    source, at = item.value.id, item.items[0]
    if not isinstance(at, N.Expr) or spec_text(at) != f"{count} - 1 - {stmt.var}" or appends.get(source) != 1:
        return None
    if not any(_makes(s, append.target) for s in before) or not any(_makes(s, source) for s in before):
        return None
    filling = [s for s in before if isinstance(s, N.For) and _count(s) == count]
    if not any(isinstance(s, N.Append) and s.target == source for loop in filling for s in loop.body):
        return None
    return append.target, source


def _count(stmt: N.Stmt) -> str | None:
    """`n` of `for t in range(n)`."""
    if not isinstance(stmt, N.For):
        return None
    it = stmt.iter
    if isinstance(it, N.Call) and it.func == "range" and len(it.args) == 1 and not it.kwargs:
        return spec_text(it.args[0])
    return None


def _makes(stmt: N.Stmt, name: str) -> bool:
    return isinstance(stmt, N.Assign) and stmt.target == name and isinstance(stmt.value, N.ListExpr)


def _read_only_stacked(body: list[N.Stmt], name: str) -> bool:
    """Whether `body` reads the list `name` only as `stack(name, dim = d)` (and rebinds it nowhere)."""
    stacked: set[int] = set()
    for s in statements(body):
        if isinstance(s, (N.Assign, N.Append)) and s.target == name:
            return False
        for n in walk(s):
            if isinstance(n, N.Call) and n.func == "stack" and n.args and _is(n.args[0], name):
                stacked.add(id(n.args[0]))
    return all(id(n) in stacked for s in statements(body) for n in walk(s) if _is(n, name))


def _is(e, name: str) -> bool:
    return isinstance(e, N.Name) and e.id == name


def _flipped(stmt: N.Stmt, target: str, source: str):
    """`stmt` with `stack(target, dim = d)` as `flip(stack(source, dim = d), [d])`."""

    def go(e):
        e = map_children(e, go) if isinstance(e, (N.Expr, N.Stmt)) else e
        if isinstance(e, N.Call) and e.func == "stack" and e.args and _is(e.args[0], target):
            dim = e.args[1] if len(e.args) > 1 else next((k.value for k in e.kwargs if k.name == "dim"), B.num(0))
            listed = copy.copy(e.args[0])
            assert isinstance(listed, N.Name)
            listed.id = source
            stacked = copy.copy(e)
            stacked.args = [listed, *e.args[1:]]
            dims = N.ListExpr(e.span, [dim])
            dims.kind = N.Kind.LIST
            return B.call("flip", stacked, dims, span=e.span)
        return e

    return go(stmt)
