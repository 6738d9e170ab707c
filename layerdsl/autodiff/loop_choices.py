"""`if`s on arguments that a loop's body tests more than once, decided where the loop is taken apart on one.

`loops.unswitched` takes an `if` on arguments (or on whether an optional input is given) out of a loop's
body, the loop written on each side. Its condition is the same at every step, and on the side where it
holds (or not) every other `if` of the body testing it again has one side only: a layer testing
`norm_first` before its attention and again at its return, an inlined sub testing `batch_first` on the way
in and on the way out, a mask's presence tested where it is reshaped and where it is added. Each copy of the
loop keeps the side its choice decides, so a condition multiplies the copies once however often the body
tests it; and an `if` comparing a value with itself (`kdim == embed_dim` of a sub given both as `d`) is
the side it picks. TransformerEncoder's body: 48 copies, not 192 (counting its `if`s on arguments alone).

A condition is decided by what the choice proves: the condition itself (or its `not`), each term of an
`and` that holds, `m == none` where `m != none` is chosen and the reverse. Nothing else is inferred.
"""

from __future__ import annotations

import dataclasses

from layerdsl.ir import nodes as N
from layerdsl.ir.printer import and_terms, spec_text


def chosen_side(body: list[N.Stmt], at: int, holds: bool) -> list[N.Stmt]:
    """A loop's `body` with its `if` at `at` as the side that runs when its condition `holds`, and each
    other `if` of the body whose condition that decides as the side it picks (before the `if` too: the
    condition is the same at every step)."""
    branch = body[at]
    assert isinstance(branch, N.If)
    known = _facts(branch.cond, holds)
    chosen = branch.body if holds else branch.orelse
    return decided(body[:at] + chosen + body[at + 1 :], known)


def self_decided(body: list[N.Stmt]) -> list[N.Stmt]:
    """`body` with each `if` comparing a value with itself (`if d == d`, of a sub given `kdim = d, embed_dim
    = d`) as the side it picks: no copy of the loop for the side that never runs."""
    return decided(body, {})


def decided(body: list[N.Stmt], known: dict[str, bool]) -> list[N.Stmt]:
    """`body` with each `if` whose condition `known` decides as the side it picks (in loops' bodies and
    `if`s' sides too); `known`: conditions' spec text -> whether they hold. `body` itself where none is."""
    out: list[N.Stmt] = []
    for s in body:
        if isinstance(s, N.If) and (holds := _truth(s.cond, known)) is not None:
            out += decided(s.body if holds else s.orelse, known)
            continue
        new = s
        if isinstance(s, N.If):
            then, orelse = decided(s.body, known), decided(s.orelse, known)
            if then is not s.body or orelse is not s.orelse:
                new = dataclasses.replace(s, body=then, orelse=orelse)
        elif isinstance(s, N.For) and (steps := decided(s.body, known)) is not s.body:
            new = dataclasses.replace(s, body=steps)
        out.append(new)
    return body if len(out) == len(body) and all(a is b for a, b in zip(out, body)) else out


def _facts(cond: N.Expr, holds: bool) -> dict[str, bool]:
    """What `cond` holding (or not) proves: itself, its `not`'s operand, an `and`'s terms when it holds,
    and a presence test's opposite."""
    known = {spec_text(cond): holds}
    if isinstance(cond, N.Not):
        known |= _facts(cond.operand, not holds)
    elif holds and isinstance(cond, N.BoolOp) and cond.op == "and":
        for term in and_terms(cond):
            known |= _facts(term, True)
    elif (opposite := _opposite_presence(cond)) is not None:
        known[opposite] = not holds
    return known


def _truth(cond: N.Expr, known: dict[str, bool]) -> bool | None:
    """Whether `cond` holds by `known`; None where that does not decide it."""
    text = spec_text(cond)
    if text in known:
        return known[text]
    if isinstance(cond, N.Not) and (operand := _truth(cond.operand, known)) is not None:
        return not operand
    if (same := _self_comparison(cond)) is not None:
        return same
    if isinstance(cond, N.BoolOp) and cond.op == "and":
        terms = [_truth(t, known) for t in and_terms(cond)]
        if False in terms:
            return False
        return True if all(terms) else None
    return None


def _self_comparison(cond: N.Expr) -> bool | None:
    """Whether a comparison of a value with itself holds (`kdim == embed_dim` of a sub given `kdim = d,
    embed_dim = d`: `d == d`); None for another condition. Of ints, bools and strings: a float may be NaN."""
    if not (isinstance(cond, N.Compare) and len(cond.operands) == 2 and cond.ops[0] in ("==", "!=")):
        return None
    left, right = cond.operands
    if left.kind not in (N.Kind.INT, N.Kind.BOOL, N.Kind.STR) or spec_text(left) != spec_text(right):
        return None
    return cond.ops[0] == "=="


def _opposite_presence(cond: N.Expr) -> str | None:
    """`m == none` of `m != none` (and the reverse), as spec text; None for another condition."""
    if not (isinstance(cond, N.Compare) and len(cond.ops) == 1 and cond.ops[0] in ("!=", "==")):
        return None
    if not any(isinstance(o, N.NoneLit) for o in cond.operands):
        return None
    opposite = dataclasses.replace(cond, ops=["==" if cond.ops[0] == "!=" else "!="])
    return spec_text(opposite)
