"""Optional members added in a forward whose `if`s are segments of their own: read through a local.

A forward with loops reading a member built when arguments say (`param b: [d] if bias`) is planned once
with the member built and once without (`loops.member_choice`): a copy of every loop on each side. Where
the forward's `if`s on arguments are segments of their own (`plan._fewest_ways`), a member added to a value
(`h @ w + b`, the only read that drops out when it is not built) is read instead through a local bound just
before the outermost statement that can read it (its index, a loop's variable, bound there):

    if b != none { b_ = b } else { b_ = new_zeros(w, [d]) }

The `if` is a segment of its own (`loops.Choice`) and every loop is planned once: where the member is not
built, zeros of its shape are added (of the dtype and device of a member always built). An RNN's per-step
`+ bias_hh_l{k}` is hoisted before its loop over the steps, into the loop over its layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.ir.visit import children, clone, map_children, statements, walk
from layerdsl.language.naming import fresh_name


def members_as_locals(layer: N.Layer, optional: set[str], on_arguments: Callable[[N.Expr], bool]) -> N.Layer:
    """`layer` with each member of `optional` built when arguments say (`on_arguments(cond)`) that its
    forward adds to a value read through a local bound by an `if` on the member's condition; `layer` itself
    when it adds none, or no member is always built (the zeros' dtype and device)."""
    assert layer.forward is not None
    members = {t.name: t for t in layer.tensors if t.name in optional and t.cond is not None and on_arguments(t.cond)}
    like = next((t.name for t in layer.tensors if t.cond is None), None)
    if not members or like is None:
        return layer
    taken = {n.id for n in walk(layer.forward) if isinstance(n, N.Name)} | {t.name for t in layer.tensors}
    taken |= {a.name for a in layer.args} | {l.name for l in layer.lets} | {i.name for i in layer.forward.inputs}
    rewriter = _Rewriter(members, like, taken)
    body = rewriter.block(layer.forward.body, frozenset())
    return layer if not rewriter.changed else layer.with_body(body)


class _Rewriter:
    def __init__(self, members: dict[str, N.Tensor], like: str, taken: set[str]):
        self.members, self.like, self.taken = members, like, taken
        self.changed = False

    def block(self, body: list[N.Stmt], proven: frozenset[str]) -> list[N.Stmt]:
        """`body` with the added reads each statement holds, whose index its block binds, read through a
        local bound before it; `proven`: the members the `if`s around prove built (read as they are)."""
        out: list[N.Stmt] = []
        for stmt in body:
            reads = [r for r in self.added_reads(stmt, proven) if not _names(r) & _binds(stmt)]
            replaced: dict[str, str] = {}
            for read in reads:
                k = spec_text(read)
                if k in replaced:
                    continue
                local = fresh_name(f"{_member(read)}_or_zeros", self.taken)
                self.taken.add(local)
                replaced[k] = local
                out.append(self.binding(read, local))
            if replaced:
                self.changed = True
                stmt = _replaced(stmt, replaced)
            out.append(self.inner(stmt, proven))
        return out

    def inner(self, stmt: N.Stmt, proven: frozenset[str]) -> N.Stmt:
        if isinstance(stmt, N.For):
            return dataclasses.replace(stmt, body=self.block(stmt.body, proven))
        if isinstance(stmt, N.If):
            then = self.block(stmt.body, proven | self.proved(stmt.cond))
            return dataclasses.replace(stmt, body=then, orelse=self.block(stmt.orelse, proven))
        return stmt

    def proved(self, cond: N.Expr) -> frozenset[str]:
        """The members `if cond` proves built: those of the same condition (or of one of its `and` terms)."""
        terms = {spec_text(t) for t in _and_terms(cond)} | {spec_text(cond)}
        return frozenset(m for m, t in self.members.items() if t.cond is not None and spec_text(t.cond) in terms)

    def added_reads(self, stmt: N.Stmt, proven: frozenset[str]) -> list[N.Expr]:
        """The reads of a member that `stmt` adds to a value (`a + b`, `b + a`), outside the `if`s that prove it."""
        found: list[N.Expr] = []

        def visit(node, proven: frozenset[str]) -> None:
            if isinstance(node, N.If):
                visit(node.cond, proven)
                for s in node.body:
                    visit(s, proven | self.proved(node.cond))
                for s in node.orelse:
                    visit(s, proven)
                return
            if isinstance(node, N.BinOp) and node.op == "+":
                found.extend(o for o in (node.left, node.right) if self.is_read(o, proven))
            for child in _children(node):
                visit(child, proven)

        visit(stmt, proven)
        return found

    def is_read(self, e: N.Expr, proven: frozenset[str]) -> bool:
        """`m` or `m[i]` (a family's members from 1 on, stacked) of a member not proven built."""
        if isinstance(e, N.Subscript) and len(e.items) == 1 and isinstance(e.items[0], N.Expr):
            e = e.value
        return isinstance(e, N.Name) and e.id in self.members and e.id not in proven

    def binding(self, read: N.Expr, local: str) -> N.If:
        """`if m != none { local = read } else { local = new_zeros(like, dims) }` (the module passes None for a
        member not built)."""
        member = self.members[_member(read)]
        assert member.cond is not None
        dims = [clone(d) for d in member.shape.dims if isinstance(d, N.Expr)]
        dims = dims[1:] if isinstance(read, N.Subscript) else dims
        shape = N.ListExpr(read.span, dims)
        shape.kind = N.Kind.LIST
        zeros = B.call("new_zeros", B.name(self.like, read.span, N.Ref.PARAM), shape, span=read.span)
        then = N.Assign(read.span, local, read.span, clone(read))
        orelse = N.Assign(read.span, local, read.span, zeros)
        none = N.NoneLit(read.span)
        none.kind = N.Kind.NONE
        built = N.Compare(read.span, ["!="], [B.name(member.name, read.span, N.Ref.PARAM), none])  # None: not built
        built.kind = N.Kind.BOOL
        return N.If(read.span, built, [then], [orelse])


def _member(read: N.Expr) -> str:
    name = read.value if isinstance(read, N.Subscript) else read
    assert isinstance(name, N.Name)
    return name.id


def _names(e: N.Expr) -> set[str]:
    return {n.id for n in walk(e) if isinstance(n, N.Name)}


def _binds(stmt: N.Stmt) -> set[str]:
    """The locals and loop variables `stmt` binds (in the statements it holds too)."""
    return {s.var if isinstance(s, N.For) else s.target for s in statements([stmt]) if isinstance(s, N.For | N.Assign)}


def _and_terms(cond: N.Expr) -> list[N.Expr]:
    if isinstance(cond, N.BoolOp) and cond.op == "and":
        return _and_terms(cond.left) + _and_terms(cond.right)
    return [cond]


def _children(node) -> list:
    return list(children(node))


def _replaced(stmt: N.Stmt, replaced: dict[str, str]) -> N.Stmt:
    def go(e):
        if isinstance(e, N.Expr) and spec_text(e) in replaced and _is_member_read(e):
            name = B.name(replaced[spec_text(e)], e.span)
            return name
        return map_children(e, go) if isinstance(e, (N.Expr, N.Stmt)) else e

    return go(stmt)


def _is_member_read(e: N.Expr) -> bool:
    return isinstance(e, N.Name) or isinstance(e, N.Subscript) and isinstance(e.value, N.Name)
