"""Gradients one kernel gives together, written as one call: `grad_x, grad_weight, _ = kernel(..., mask)`.

ATen's backward kernels of layer norm and the convolutions (`native_layer_norm_backward`,
`convolution_backward`) return every operand's gradient from one pass, each computed only where
`output_mask` asks for it. Their op-table rows (`Op.results` > 1) take a last `which`: the result a
formula reads, so that derivation stays one statement per gradient. Once the statements are scheduled,
those calling one such row on the same operands, differing only in `which`, become one call at the
first one's place, its mask asking for the gradients the Function is asked for (`ctx.needs_input_grad`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import walk
from layerdsl.language.ops import OPS
from layerdsl.optimize.joint import joinable, joint_key, which_result
from layerdsl.optimize.statements import Stmt


def joint_calls(stmts: list[Stmt], needs: Callable[[set[str]], str | None]) -> list[Stmt]:
    """`stmts` with each group of statements that take results of one kernel call made one statement.
    `needs(leaves)`: the condition under which the leaves' gradients are needed (None: always)."""
    groups: dict[str, list[int]] = {}
    for k, s in enumerate(stmts):
        key = joint_key(s.expr) if joinable(s) else None
        if key is not None:
            groups.setdefault(key, []).append(k)
    joint: dict[int, Stmt | None] = {}  # the first member's place: the one call; None for the others
    for members in groups.values():
        by_result = {which_result(stmts[k].expr): k for k in members}
        if len(members) < 2 or len(by_result) != len(members) or _touched_between(stmts, members):
            continue
        first = stmts[members[0]]
        assert isinstance(first.expr, N.Call), "a joint row is called"
        results = OPS[first.expr.func].results
        mask = [_needed(needs, stmts[by_result[r]].leaves) if r in by_result else _false() for r in range(results)]
        call = B.call(first.expr.func, *first.expr.args[:-1], N.TupleExpr(first.expr.span, mask), span=first.expr.span)
        targets = ", ".join(stmts[by_result[r]].target if r in by_result else "_" for r in range(results))
        leaves = set().union(*(stmts[k].leaves for k in members))
        joint[members[0]] = Stmt(targets, call, leaves, span=first.span)
        joint.update({k: None for k in members[1:]})
    out: list[Stmt] = []
    for k, s in enumerate(stmts):
        if k not in joint:
            out.append(s)
        elif (merged := joint[k]) is not None:
            merged.dels = list(s.dels)
            out.append(merged)
        else:  # what died after a member dies after the statement before it
            out[-1] = dataclasses.replace(out[-1], dels=[*out[-1].dels, *s.dels])
    return out


def _touched_between(stmts: list[Stmt], members: list[int]) -> bool:
    """Whether a statement between the first member and a later one reads or assigns that one's target (it
    cannot then be computed at the first one's place)."""
    for k in members[1:]:
        target = stmts[k].target
        for s in stmts[members[0] + 1 : k]:
            if s.target == target or any(isinstance(n, N.Name) and n.id == target for n in walk(s.expr)):
                return True
    return False


def _needed(needs: Callable[[set[str]], str | None], leaves: set[str]) -> N.Expr:
    """Whether a result is needed, as the guard's text (`ctx.needs_input_grad[1]`), or True."""
    cond = needs(leaves)
    if cond is None:
        flag = N.Bool(N.NOWHERE, True)
        flag.kind = N.Kind.BOOL
        return flag
    text = N.Name(N.NOWHERE, cond)  # written as it reads
    text.kind = N.Kind.BOOL
    return text


def _false() -> N.Expr:
    flag = N.Bool(N.NOWHERE, False)
    flag.kind = N.Kind.BOOL
    return flag
