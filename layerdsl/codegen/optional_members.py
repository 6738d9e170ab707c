"""Rewrites of checked forward bodies before emission.

Optional members: `a + bias`, where `bias` may be absent, becomes a statement `t = a` followed by
`if bias is not None: t = t + bias`, so the operation is skipped when the member is absent (its identity).
An optional input (`mask: [B, T]? = none`) is lowered the same way.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from layerdsl.ir import nodes as N
from layerdsl.ir.printer import members_present, members_present_otherwise
from layerdsl.ir.visit import names_read, replace_children


@dataclass(eq=False)
class IsPresent(N.Expr):
    """`NAME is not None`: the guard of an optional member."""

    name: N.Name


def hoist_optionals(
    body: list[N.Stmt], optional: set[str], taken: set[str], tensors: list[N.Tensor] | None = None
) -> list[N.Stmt]:
    """Return `body` with every use of an optional member turned into a guarded statement, except inside
    an `if` whose condition proves the member present (`tensors`: the members, with their conditions)."""
    if not optional:
        return body
    fresh = _fresh_names(taken)
    out: list[N.Stmt] = []
    for stmt in body:
        out.extend(_lower_stmt(stmt, optional, fresh, tensors or []))
    return out


def _fresh_names(taken: set[str]):
    for n in itertools.count():
        name = "h" if n == 0 else f"h{n}"
        if name not in taken:
            taken.add(name)
            yield name


def _lower_stmt(stmt: N.Stmt, optional: set[str], fresh, tensors: list[N.Tensor]) -> list[N.Stmt]:
    if isinstance(stmt, N.If):
        present, absent = set(), set()
        if not isinstance(stmt.cond, IsPresent):
            present = members_present(stmt.cond, tensors) | inputs_checked(stmt.cond, "!=")
            absent = inputs_checked(stmt.cond, "==") | members_present_otherwise(stmt.cond, tensors)
        stmt.body = [s for b in stmt.body for s in _lower_stmt(b, optional - present, fresh, tensors)]
        stmt.orelse = [s for b in stmt.orelse for s in _lower_stmt(b, optional - absent, fresh, tensors)]
        return [stmt]
    if isinstance(stmt, N.For):  # each step guards its own uses
        stmt.body = [s for b in stmt.body for s in _lower_stmt(b, optional, fresh, tensors)]
        return [stmt]
    pre: list[N.Stmt] = []

    def visit(e: N.Node) -> N.Node:
        replace_children(e, visit)
        if not isinstance(e, N.BinOp):
            return e
        member = _optional_member(e, optional)
        if member is None:
            return e
        if isinstance(stmt, N.Assign) and e is stmt.value and stmt.target not in names_read(e):
            return _guard(e, member, stmt.target, pre)  # computed straight into the statement's target
        return _guard(e, member, next(fresh), pre)

    replace_children(stmt, visit)
    if pre and isinstance(stmt, N.Assign) and isinstance(stmt.value, N.Name) and stmt.value.id == stmt.target:
        return pre  # `y = y` after hoisting into y itself
    return pre + [stmt]


def _guard(e: N.BinOp, member: N.Name, temp: str, pre: list[N.Stmt]) -> N.Name:
    """Append to `pre` the statements computing `e` into `temp` when its optional member is present,
    and its identity when absent; returns the name `temp`."""
    op = e.op
    side = "left" if member is e.left else "right"
    other = e.right if side == "left" else e.left
    tname = N.Name(e.span, temp)
    tname.ref, tname.kind = N.Ref.LOCAL, N.Kind.TENSOR
    if side == "left" and op in ("-", "/"):
        # `b - x` without b is `-x`, `b / x` is `1 / x`: two branches, not an update of t.
        absent = N.UnaryOp(e.span, "-", other) if op == "-" else N.BinOp(e.span, "/", N.Num(e.span, 1, "1"), other)
        present = N.BinOp(e.span, op, member, other)
        absent.kind = present.kind = N.Kind.TENSOR
        pre.append(
            N.If(
                e.span,
                IsPresent(e.span, member),
                [N.Assign(e.span, temp, e.span, present)],
                [N.Assign(e.span, temp, e.span, absent)],
            )
        )
        return tname
    pre.append(N.Assign(e.span, temp, e.span, other))
    present = N.BinOp(e.span, op, member, tname) if side == "left" else N.BinOp(e.span, op, tname, member)
    present.kind = N.Kind.TENSOR
    pre.append(N.If(e.span, IsPresent(e.span, member), [N.Assign(e.span, temp, e.span, present)], []))
    return tname


def inputs_checked(cond: N.Expr, op: str) -> set[str]:
    """The optional inputs a condition proves present: `x != none` or an `and` term of it (op "!="); for
    the else branch, `x == none` (op "==")."""
    if op == "!=" and isinstance(cond, N.BoolOp) and cond.op == "and":
        return inputs_checked(cond.left, op) | inputs_checked(cond.right, op)
    if isinstance(cond, N.Compare) and cond.ops == [op] and any(isinstance(o, N.NoneLit) for o in cond.operands):
        return {o.id for o in cond.operands if isinstance(o, N.Name) and o.ref == N.Ref.INPUT}
    return set()


def _optional_member(e: N.BinOp, optional: set[str]) -> N.Name | None:
    """The optional member that is an operand of `e` (the left one first), if `e` can skip it."""
    if e.op not in ("+", "-", "*", "/"):
        return None
    for operand in (e.left, e.right):
        if isinstance(operand, N.Name) and operand.id in optional and operand.ref in (*N.MEMBERS, N.Ref.INPUT):
            return operand
    return None
