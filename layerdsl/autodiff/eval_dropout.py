"""A kept loop whose body calls `dropout`, written `if training { the loop } else { the loop, each
`dropout(x, p)` as x }`: torch's dropout is the identity in eval, where the loop then draws no mask, keeps
none per step, and its backward reads a dropped value back as its input (a carried value's row), as
autograd keeps it (`plan.plan_backward`, before the forward branches on its `if`s; tried where the forward as
written derives)."""

from __future__ import annotations

import dataclasses

from layerdsl.diagnostics import Span
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import map_children, walk
from layerdsl.language.ops import OPS
from layerdsl.semantics.shapes import call_args


def split_on_training(body: list[N.Stmt]) -> list[N.Stmt]:
    """`body` with each loop (outside another) whose body calls `dropout` written on each side of an
    `if training` (the one in eval without its dropouts); `body` itself where it has none."""
    out: list[N.Stmt] = []
    changed = False
    for stmt in body:
        new = stmt
        if isinstance(stmt, N.For) and _drops(stmt):
            eval_loop = _without_dropout(stmt)
            assert isinstance(eval_loop, N.For)
            new = N.If(stmt.span, training(stmt.span), [stmt], [eval_loop])
        elif isinstance(stmt, N.If):
            then, orelse = split_on_training(stmt.body), split_on_training(stmt.orelse)
            if then is not stmt.body or orelse is not stmt.orelse:
                new = dataclasses.replace(stmt, body=then, orelse=orelse)
        changed |= new is not stmt
        out.append(new)
    return out if changed else body


def calls_dropout_in_a_loop(body: list[N.Stmt]) -> bool:
    """Whether a loop of `body` (or of its `if`s) calls `dropout`."""
    return any(isinstance(s, N.For) and _drops(s) for stmt in body for s in walk(stmt))


def _drops(loop: N.For) -> bool:
    return any(_is_dropout(n) for n in walk(loop))


def _is_dropout(node: N.Node) -> bool:
    return isinstance(node, N.Call) and node.func == "dropout" and not node.sub


def training(span: Span) -> N.Name:
    """The condition `training`."""
    cond = N.Name(span, "training")
    cond.ref, cond.kind = N.Ref.TRAINING, N.Kind.BOOL
    return cond


def _without_dropout(node: N.Node) -> N.Node:
    """A copy of `node` with each `dropout(x, p)` as its input `x` (what it computes in eval)."""
    if _is_dropout(node):
        assert isinstance(node, N.Call)
        return _without_dropout(call_args(OPS["dropout"], node)["input"])
    return map_children(node, _without_dropout)
