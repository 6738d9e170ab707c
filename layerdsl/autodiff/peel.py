"""A family whose first member has a shape of its own (`weight_ih_l{k}: [h, input_size if k == 0 else h]`):
the loop over it with its first step written on its own.

A family's members are passed to a Function stacked (`inline.stacked_families`), which needs one shape.
When the shape depends on the index only as `a if k == 0 else b`, the loop `for k in range(n) { body }`
reading it is written as

    if n > 0 { body with k = 0, each family's member 0 as itself (`weight_ih_l0`) }
    for k in range(n - 1) { body with k + 1 for k, each family's members from 1 on stacked (`w_l_rest[k]`) }

so the first step may change the shapes it carries (an RNN's first layer reads the input, the others the
previous layer's output) and the rest is a loop over members of one shape. Every family of the same count
is split so, the module passing `self.w_l0` and the members from 1 on stacked (`codegen.function_members`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import cast

from layerdsl.autodiff.tape import NotDerivable
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.ir.visit import clone, map_children, walk
from layerdsl.language.naming import fresh_name


@dataclass(frozen=True)
class Part:
    """A tensor that is part of a family: its first member (`part == "first"`) or the members from 1 on
    stacked (`part == "rest"`), of `written` (`w_l{k}`) for `var` in range(`count`), built when `cond`."""

    written: str
    var: str
    count: N.Expr
    cond: N.Expr | None
    part: str


def peeled_families(layer: N.Layer) -> tuple[N.Layer, dict[str, Part]]:
    """`layer` with the families whose first member differs split (their loops' first step written on its
    own), and the tensor each part stands for; `layer` itself when no family's first member differs."""
    assert layer.forward is not None
    counts = {spec_text(t.repeat.iter.args[0]) for t in layer.tensors if t.repeat is not None and _first_differs(t)}
    if not counts:
        return layer, {}
    taken = {t.name for t in layer.tensors} | {a.name for a in layer.args} | {l.name for l in layer.lets}
    taken |= {i.name for i in layer.forward.inputs} | {n.id for n in walk(layer.forward) if isinstance(n, N.Name)}
    tensors: list[N.Tensor] = []
    firsts: dict[str, N.Tensor] = {}  # family key -> its first member
    rests: dict[str, N.Tensor] = {}  # family key -> its members from 1 on, stacked
    parts: dict[str, Part] = {}
    for t in layer.tensors:
        if t.repeat is None or spec_text(t.repeat.iter.args[0]) not in counts or len(t.repeat.iter.args) != 1:
            tensors.append(t)
            continue
        var, count = t.repeat.var.id, t.repeat.iter.args[0]
        first, rest = _dims_at(t, var, first=True), _dims_at(t, var, first=False)
        if t.cond is not None and var in _names(t.cond) or first is None or rest is None:
            tensors.append(t)  # refused by `stacked_families`, which names why
            continue
        first_name = fresh_name(t.name.replace("{}", "0"), taken)
        rest_name = fresh_name(t.name.replace("{}", "_rest"), taken)
        taken |= {first_name, rest_name}
        less = B.binop("-", clone(count), B.num(1))
        less.kind = N.Kind.INT
        firsts[t.name] = _tensor(t, first_name, first)
        rests[t.name] = _tensor(t, rest_name, [less, *rest])
        tensors += [firsts[t.name], rests[t.name]]
        parts[first_name] = Part(t.written, var, count, t.cond, "first")
        parts[rest_name] = Part(t.written, var, count, t.cond, "rest")
    if not firsts:
        return layer, {}
    body = _peeled(layer.forward.body, firsts, rests, counts)
    return layer.with_body(body, tensors=tensors), parts


def _first_differs(t: N.Tensor) -> bool:
    """Whether `t` is a family member whose dims read its index only as `a if k == 0 else b`."""
    if t.repeat is None or len(t.repeat.iter.args) != 1:
        return False
    var = t.repeat.var.id
    reads = [d for d in t.shape.dims if isinstance(d, N.Expr) and var in _names(d)]
    return bool(reads) and _dims_at(t, var, first=True) is not None and _dims_at(t, var, first=False) is not None


def _dims_at(t: N.Tensor, var: str, first: bool) -> list[N.Expr | N.EllipsisItem] | None:
    """`t`'s dims for the member at index 0 (`first`) or at an index from 1 on; None if one still reads
    the index."""

    def go(e):
        if isinstance(e, N.IfExp) and (on_first := _tests_first(e.cond, var)) is not None:
            return go(e.then if on_first == first else e.orelse)
        return map_children(e, go) if isinstance(e, N.Expr) else e

    dims = [go(clone(d)) if isinstance(d, N.Expr) else d for d in t.shape.dims]
    if any(isinstance(d, N.Expr) and var in _names(d) for d in dims):
        return None
    return dims


def _tests_first(cond: N.Expr, var: str) -> bool | None:
    """True for `k == 0`, False for `k != 0`, `k > 0`, `k >= 1` (and `0 == k`, `0 < k`); None otherwise."""
    if not (isinstance(cond, N.Compare) and len(cond.ops) == 1):
        return None
    left, right = cond.operands
    op = cond.ops[0]
    if isinstance(left, N.Num) and isinstance(right, N.Name):
        left, right, op = right, left, {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(op, op)
    if not (isinstance(left, N.Name) and left.id == var and isinstance(right, N.Num) and right.kind == N.Kind.INT):
        return None
    return {("==", 0): True, ("!=", 0): False, (">", 0): False, (">=", 1): False}.get((op, int(right.value)))


def _tensor(t: N.Tensor, name: str, dims: list[N.Expr | N.EllipsisItem]) -> N.Tensor:
    return dataclasses.replace(t, name=name, shape=dataclasses.replace(t.shape, dims=dims), repeat=None, written="")


def _peeled(
    body: list[N.Stmt], firsts: dict[str, N.Tensor], rests: dict[str, N.Tensor], counts: set[str]
) -> list[N.Stmt]:
    out: list[N.Stmt] = []
    for stmt in body:
        if isinstance(stmt, N.For) and _reads_family_at(stmt.body, set(firsts), stmt.var):
            out += _split_loop(stmt, firsts, rests, counts)
        elif isinstance(stmt, N.If):
            then, orelse = _peeled(stmt.body, firsts, rests, counts), _peeled(stmt.orelse, firsts, rests, counts)
            out.append(dataclasses.replace(stmt, body=then, orelse=orelse))
        else:
            _refuse_other_reads(stmt, firsts)
            out.append(stmt)
    return out


def _reads_family_at(body: list[N.Stmt], families: set[str], var: str) -> bool:
    return any(
        isinstance(n, N.FamilyName) and n.id in families and n.index is not None and n.index.id == var
        for s in body
        for n in walk(s)
    )


def _split_loop(loop: N.For, firsts: dict[str, N.Tensor], rests: dict[str, N.Tensor], counts: set[str]) -> list[N.Stmt]:
    """`for k in range(n) { body }` as its first step (under `if n > 0`) and a loop over the rest."""
    it = loop.iter
    assert isinstance(it, N.Call)
    if it.func != "range" or len(it.args) != 1 or spec_text(it.args[0]) not in counts:
        raise NotDerivable(
            it.span,
            "cannot derive through this loop under @function: it reads a family whose first member has a shape"
            " of its own, over another range than the family's",
            "loop over the family's own range(n), or drop @function",
        )
    count = it.args[0]
    var = loop.var

    def member(e, at_first: bool):
        if isinstance(e, N.FamilyName) and e.id in firsts and e.index is not None and e.index.id == var:
            if at_first:
                return B.name(firsts[e.id].name, e.span, e.ref)
            stacked = B.name(rests[e.id].name, e.span, e.ref)
            item = N.Subscript(e.span, stacked, [clone(e.index)])
            item.kind = N.Kind.TENSOR
            return item
        if isinstance(e, N.FamilyName) and e.id in firsts:
            _refuse(e)
        if isinstance(e, N.Name) and e.id == var and not isinstance(e, N.FamilyName):
            return B.num(0) if at_first else _plus_one(e)
        return map_children(e, lambda c: member(c, at_first)) if isinstance(e, (N.Expr, N.Stmt)) else e

    first = [cast(N.Stmt, member(clone(s), True)) for s in loop.body]
    rest = [cast(N.Stmt, member(clone(s), False)) for s in loop.body]
    positive = N.Compare(it.span, [">"], [clone(count), B.num(0)])
    positive.kind = N.Kind.BOOL
    less = N.BinOp(count.span, "-", clone(count), B.num(1))
    less.kind = N.Kind.INT
    rest_iter = N.Call(it.span, it.func, it.func_span, [less], [])
    rest_iter.kind = it.kind
    return [N.If(loop.span, positive, first, []), dataclasses.replace(loop, iter=rest_iter, body=rest)]


def _plus_one(index: N.Name) -> N.Expr:
    e = N.BinOp(index.span, "+", index, B.num(1))
    e.kind = N.Kind.INT
    return e


def _refuse_other_reads(stmt: N.Stmt, firsts: dict[str, N.Tensor]) -> None:
    for n in walk(stmt):
        if isinstance(n, N.FamilyName) and n.id in firsts:
            _refuse(n)


def _refuse(e: N.FamilyName) -> None:
    raise NotDerivable(
        e.span,
        f"cannot derive through this read of '{e.written}' under @function: a family whose first member has a"
        " shape of its own is read only in a loop over its range, at the loop's index",
        "read it in `for k in range(n) { ... }` as written in its declaration, or drop @function",
    )


def _names(e: N.Expr) -> set[str]:
    return {n.id for n in walk(e) if isinstance(n, N.Name)}


def rest_under_first(body: list[N.Stmt]) -> list[N.Stmt]:
    """`body` with each loop over the rest of a family moved into the `if n > 0` of its first step before it
    (`_split_loop`): `if n > 0 { first step; for k in range(n - 1) { ... } }`, which runs as the two did
    (the loop over the rest runs no step where `n > 0` fails). A forward whose `if`s are segments of their
    own branches on `n > 0` then with the loops on one side only, not a copy of the loop over the rest on each."""
    out: list[N.Stmt] = []
    for stmt in body:
        if isinstance(stmt, N.For):
            stmt = dataclasses.replace(stmt, body=rest_under_first(stmt.body))
        elif isinstance(stmt, N.If):
            stmt = dataclasses.replace(stmt, body=rest_under_first(stmt.body), orelse=rest_under_first(stmt.orelse))
        first = out[-1] if out else None
        if isinstance(first, N.If) and not first.orelse and _rest_of(first.cond, stmt):
            out[-1] = dataclasses.replace(first, body=[*first.body, stmt])
        else:
            out.append(stmt)
    return out


def _rest_of(cond: N.Expr, stmt: N.Stmt) -> bool:
    """Whether `stmt` is `for k in range(n - 1)` of `cond` `n > 0`."""
    if not (isinstance(cond, N.Compare) and cond.ops == [">"] and spec_text(cond.operands[1]) == "0"):
        return False
    it = stmt.iter if isinstance(stmt, N.For) else None
    return (
        isinstance(it, N.Call)
        and it.func == "range"
        and len(it.args) == 1
        and spec_text(it.args[0]) == spec_text(B.binop("-", clone(cond.operands[0]), B.num(1)))
    )
