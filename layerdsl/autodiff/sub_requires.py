"""The `require`s of a `@function` layer's subs, inlined into its Function (autodiff/inline.py).

The Function checks no requirement: the plan leaves the subs' `require`s out (`local_sizes.sub_requires_dropped`),
and the module checks them before `Function.apply`, as it checks its own layer's. Inlining keeps, on each
inlined `require`, the sub's statement as its spec writes it (`SubRequire`), so the module's error names the
sub's layer, its spec line and its text, as the plain module's does.

Checked before `apply`: a `require` whose condition and guard read only the forward's inputs (their shapes,
ranks, dtypes), arguments and lets, held layers' arguments the Function reads, `training` and constants, at the
top of the inlined forward, inside `if`s on those (checked where their conditions hold) or inside loops over
range(n) (checked where n > 0). A `require` on a local the forward computes (a value only the Function has), or
one inside an `if` on a local, is not checked under `@function` (the plain module checks it): a cheap check of
a local's shape could run in the Function's forward, but the plan derives that forward without the subs'
`require`s.
"""

from __future__ import annotations

import copy
from collections.abc import Container, Sequence
from dataclasses import dataclass

from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import walk

_KEPT = "sub_require"  # the attribute of an inlined `require` holding its SubRequire (`clone` copies it)


@dataclass(frozen=True)
class SubRequire:
    """A sub's `require` as its spec writes it: its layer's name and file, and the statement."""

    layer: str
    path: str
    stated: N.Require


def keep_origin(inlined: N.Require, written: N.Require, layer: N.Layer) -> None:
    """Record on `inlined` that it is `written`, of `layer` (a sub's `require` inlined again, into a layer
    using the layer holding that sub, keeps where it was first written)."""
    if origin(inlined) is None:
        setattr(inlined, _KEPT, SubRequire(layer.name, layer.path, written))


def origin(s: N.Require) -> SubRequire | None:
    """The sub's `require` that `s` is, inlined; None for the layer's own."""
    kept = getattr(s, _KEPT, None)
    return kept if isinstance(kept, SubRequire) else None


def checked_before_apply(body: list[N.Stmt], readable: Container[str]) -> list[N.Require]:
    """The subs' `require`s of the inlined forward `body` that the module can check before `Function.apply`:
        each name they read an input, `training`, a constant, or an argument or let in `readable` (what the module
        can spell). One inside `if`s whose conditions read only those is checked where they hold (guarded by them);
        one inside a loop over range(n) once, where n > 0 (what it reads, the loop does not change: it reads no local);
    one inside an `if` on a local, or another loop, is not."""
    out: list[N.Require] = []
    _collect(body, [], readable, out)
    return out


def _collect(body: list[N.Stmt], held: list[N.Expr], readable: Container[str], out: list[N.Require]) -> None:
    """`out` given the checkable `require`s of `body`, run where every condition in `held` holds."""
    for s in body:
        if isinstance(s, N.Require) and origin(s) is not None and _reads_only([s.cond, s.guard], readable):
            out.append(_guarded(s, held))
        elif isinstance(s, N.If) and isinstance(s.cond, N.Expr) and _reads_only([s.cond], readable):
            _collect(s.body, [*held, s.cond], readable, out)
            negated = N.Not(s.cond.span, s.cond)
            negated.kind = N.Kind.BOOL
            _collect(s.orelse, [*held, negated], readable, out)
        elif isinstance(s, N.For) and (runs := _runs(s, readable)) is not None:  # checked once, if it runs
            _collect(s.body, [*held, runs], readable, out)


def _runs(loop: N.For, readable: Container[str]) -> N.Expr | None:
    """`n > 0` of a loop over range(n), n readable: whether the loop runs (None for another loop)."""
    it = loop.iter
    if not (isinstance(it, N.Call) and it.func == "range" and len(it.args) == 1 and _reads_only(it.args, readable)):
        return None
    runs = N.Compare(it.span, [">"], [it.args[0], B.num(0)])
    runs.kind = N.Kind.BOOL
    return runs


def _guarded(s: N.Require, held: list[N.Expr]) -> N.Require:
    """`s`, checked only where the conditions `held` hold (its own guard last)."""
    if not held:
        return s
    guard = held[0]
    for cond in [*held[1:], *([s.guard] if s.guard is not None else [])]:
        guard = N.BoolOp(cond.span, "and", guard, cond)
        guard.kind = N.Kind.BOOL
    guarded = copy.copy(s)  # its SubRequire kept
    guarded.guard = guard
    return guarded


def _reads_only(parts: Sequence[N.Expr | None], readable: Container[str]) -> bool:
    names = [n for part in parts if part is not None for n in walk(part) if isinstance(n, N.Name)]
    return all(_readable(n, readable) for n in names)


def _readable(n: N.Name, readable: Container[str]) -> bool:
    if n.ref in (N.Ref.INPUT, N.Ref.TRAINING, N.Ref.CONST):
        return True
    return n.ref in (N.Ref.ARG, N.Ref.LET) and n.id in readable
