"""The `require`s of a `@function` layer's subs, inlined into its Function (autodiff/inline.py).

The module checks them before `Function.apply`, as it checks its own layer's, where it can; the Function checks
those on values only it computes. Inlining keeps, on each inlined `require`, the sub's statement as its spec
writes it (`SubRequire`), so either error names the sub's layer, its spec line and its text, as the plain
module's does.

Checked before `apply`: a `require` whose condition and guard read only the forward's inputs (their shapes,
ranks, dtypes), arguments and lets, held layers' arguments the Function reads, `training` and constants, at the
top of the inlined forward, inside `if`s on those (checked where their conditions hold) or inside loops over
range(n) (checked where n > 0).

Checked in the Function's forward: a `require` on a value the forward computes (a local: only the Function has
it), reading of it only its rank, sizes or dtype (`h.ndim`, `size_at(h, 0)`, `is_floating_point(h)`), and
otherwise inputs, `training`, constants and the inlined layer's arguments and lets (a held layer's among them).
The plan keeps such a `require` (`unchecked_origins`; the others it leaves out,
`local_sizes.sub_requires_dropped`), reading a local's size as the input's it follows it back to (`x_ndim` for
`h.ndim`); the tape holds it on the values it reads (`Tape.checks`), decided where the static shapes decide it
(`decided_checks`: always true, no check; never, a refusal), and the Function checks the rest once those values
are computed (`codegen.function_checks`). Where the plan cannot follow back a size such a `require` reads, the
layer is planned without them (`plan.plan_inlined`). One inside an `if` on a local is not checked under
`@function` (the plain module checks it).
"""

from __future__ import annotations

import copy
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass

from layerdsl.diagnostics import Span
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.ir.visit import map_children, statements, walk
from layerdsl.semantics.evaluate import NotConstant, evaluate
from layerdsl.semantics.shapes import GROUP, Shape, opaque

_KEPT = "sub_require"  # the attribute of an inlined `require` holding its SubRequire (`clone` copies it)
_IN_FUNCTION = "checked_in_function"  # the attribute of one the Function checks (`unchecked_origins`)


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


# what a check in the Function reads of a computed value: its rank (`N.Rank`), a size or whether it is a float
_SHAPE_READS = ("size_at", "is_floating_point")


def checked_in_function(s: N.Stmt, layer: N.Layer) -> bool:
    """Whether the Function checks `s`: a sub's `require` on a value the inlined forward of `layer` computes
    (it reads a local's rank, size or dtype, and nothing else of a local), reading otherwise only inputs,
    `training`, constants and `layer`'s own arguments and lets (a held layer's among them: the Function takes
    them)."""
    if not (isinstance(s, N.Require) and origin(s) is not None):
        return False
    parts = [part for part in (s.cond, s.guard) if part is not None]
    names = [n for part in parts for n in walk(part) if isinstance(n, N.Name)]
    measured = {id(n) for part in parts for n in _shape_operands(part)}
    if any(n.ref == N.Ref.LOCAL and id(n) not in measured for n in names):
        return False
    own = {a.name for a in layer.args} | {let.name for let in layer.lets}
    kept = (N.Ref.INPUT, N.Ref.TRAINING, N.Ref.CONST, N.Ref.LOCAL)
    if not all(n.ref in kept or (n.ref in (N.Ref.ARG, N.Ref.LET) and n.id in own) for n in names):
        return False
    return any(n.ref == N.Ref.LOCAL for n in names)


def _shape_operands(e: N.Expr) -> list[N.Name]:
    """The names of which `e` reads only the rank, a size or the dtype (`h` of `h.ndim`, `size_at(h, 0)`)."""
    out: list[N.Name] = []
    for n in walk(e):
        if isinstance(n, N.Rank):
            out.append(n.value)
        elif isinstance(n, N.Call) and n.func in _SHAPE_READS and n.args and isinstance(n.args[0], N.Name):
            out.append(n.args[0])
    return out


def unchecked_origins(layer: N.Layer, origins: Container[Span]) -> set[Span]:
    """The spans of `origins` (the inlined statements') less those of the `require`s the Function checks,
    each marked so (`as_check`): the plan leaves the other `require`s out (`local_sizes.sub_requires_dropped`).
    """
    assert layer.forward is not None
    body = list(statements(layer.forward.body))
    kept = [s for s in body if checked_in_function(s, layer)]
    for s in kept:
        setattr(s, _IN_FUNCTION, True)
    return {s.span for s in body if s.span in origins} - {s.span for s in kept}


def reads_unfollowed(layer: N.Layer, refused: list[Span]) -> bool:
    """Whether a refusal of `layer`'s plan, at `refused`, is at what a `require` the Function checks reads
    (`unchecked_origins` marked it): a size the plan cannot follow back, planned then without the checks
    (a check the static shapes break is refused at the `require` itself, `decided_checks`)."""
    assert layer.forward is not None
    checks = [s for s in statements(layer.forward.body) if isinstance(s, N.Require) and getattr(s, _IN_FUNCTION, False)]
    read = {
        n.span
        for s in checks
        for part in (s.cond, s.guard)
        if part is not None
        for n in walk(part)
        if isinstance(n, N.Expr)
    }
    return any(span in read for span in refused)


def as_check(s: N.Require, env: dict[str, str]) -> N.Require | None:
    """`s` on the values it reads, each local as the var `env` says holds it now (`Linearizer`): a check for
    the Function; None for a `require` the Function does not check (its own layer's, one the module checks).
    (The plan reads a local's size that it follows back to an input's as that size: `x_ndim` for `h.ndim`.)"""
    if origin(s) is None or not getattr(s, _IN_FUNCTION, False):
        return None

    def renamed(e):
        if isinstance(e, N.Name) and e.ref == N.Ref.LOCAL and e.id in env:
            return B.name(env[e.id], e.span)
        return map_children(e, renamed)

    check = copy.copy(s)  # its SubRequire kept
    check.cond = renamed(s.cond)
    check.guard = renamed(s.guard) if s.guard is not None else None
    return check


def decided(check: N.Require, shapes: Mapping[str, Shape]) -> bool | None:
    """Whether `check` holds, where the static shapes `shapes` (by var) decide it: its ranks and sizes known
    numbers (its guard too); None where it is known only when forward runs."""
    try:
        if check.guard is not None and not evaluate(_known(check.guard, shapes), {}):
            return True
        return bool(evaluate(_known(check.cond, shapes), {}))
    except NotConstant:
        return None


def _known(e: N.Expr, shapes: Mapping[str, Shape]) -> N.Expr:
    """`e`, each rank and size that the static `shapes` give a number written as that number."""
    if isinstance(e, N.Rank) and (shape := shapes.get(e.value.id)) is not None and _ranked(shape):
        return B.num(len(shape))
    if isinstance(e, N.Call) and e.func == "size_at" and len(e.args) == 2 and isinstance(e.args[0], N.Name):
        shape, at = shapes.get(e.args[0].id), e.args[1]
        if shape is not None and _ranked(shape) and isinstance(at, N.Num) and isinstance(at.value, int):
            if -len(shape) <= at.value < len(shape) and (dim := shape[at.value]).isdigit():
                return B.num(int(dim))
    return map_children(e, lambda child: _known(child, shapes) if isinstance(child, N.Expr) else child)


def _ranked(shape: tuple) -> bool:
    """Whether a static shape has a known rank (no `...` group, not an input's declared without a shape)."""
    return not any(d == GROUP or opaque([d]) for d in shape)


def decided_checks(checks: list[N.Require], shapes: Mapping[str, Shape]) -> list[N.Require]:
    """The `checks` (a tape's) the static `shapes` do not decide: one they prove holds is dropped, and one
    they prove fails is refused, where the sub's `require` is inlined (NotDerivable)."""
    from layerdsl.autodiff.tape import NotDerivable  # the tape holds the checks (`as_check`)

    for check in checks:
        if decided(check, shapes) is False:
            raise NotDerivable(check.span, _never_holds(check, shapes), "pass the sub a value of the shape it requires")
    return [check for check in checks if decided(check, shapes) is None]


def _never_holds(check: N.Require, shapes: Mapping[str, Shape]) -> str:
    """The refusal's message of a `check` the static shapes prove false: the sizes it compares, known."""
    written = origin(check)
    assert written is not None and isinstance(check.cond, N.Compare) and isinstance(written.stated.cond, N.Compare)
    values = []
    for stated, operand in zip(written.stated.cond.operands, check.cond.operands):
        try:
            value = evaluate(_known(operand, shapes), {})
        except NotConstant:
            continue
        if not isinstance(stated, N.Num):
            values.append(f"`{spec_text(stated)}` is {value}")
    said = f" ({', '.join(values)} here)" if values else ""
    return (
        f"{written.layer}'s `require {spec_text(written.stated.cond)}` never holds for the value this forward"
        f" passes it{said}: the shapes it is computed with break it"
    )
