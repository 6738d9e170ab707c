"""An `if` in the body of a loop of a run-time count whose side may change from step to step (`if t % 2 == 1`,
`if t > n` of an int `n` the loop carries, `if t == 0` in a loop over `range(0, T, 2)`): a choice per step.

`loop_split` splits a loop at `t == 0` / `t < k` where it can (that stays the path where it applies), and
`loops.unswitched` takes an `if` on arguments out of the loop. A loop whose body still holds an `if` at its
top level, on ints only (the loop's variable, ints it carries, arguments, sizes), each side holding no loop,
append, `return` or `if` (`loops.choice_alone`), is planned as a `nest.Nest` of no inner loop (`steps_choose`):
its body as segments, each such `if` a `loops.Choice` whose condition the Function evaluates at every step, in
forward, and again in backward's loop (the ints a step reads are those backward's prelude runs again,
`loop_ints`), running the derived backward of the side taken.

Before planning (`with_sides_flattened`, from `loops.plan_loops`), a side's numbers are computed before its
`if`, each choosing its value per step (`n = n + 1 if took else n`, `took` the condition bound first where the
`if` binds what it reads), and an `if` nested in a side is written at the top of the body testing both
conditions (`nested_ifs.flattened`): the sides left bind tensors only. A number a statement of its side before
it reads (or binds what it reads) stays in place, refused located (`loop_ints`). In a loop holding a loop, its
body's `if`s taken on their own have their numbers computed before them the same way.

What it keeps is what autograd keeps:

- the statements after a lone `if` are written on each side (`tail_joined`: `if c { a } ; r` is `if c { a; r }
  else { r }`; an append among them, `hs.append(h * y)`, its item bound on each side to a local of its own and
  appended after the `if`), so no value the `if` merges (a side's or the value before it) is read after it: a
  step keeps only its side's values and the carried values' updates;
- a value a side leaves in a merged local takes the merged local's name on that side (`merged_as_own`): every
  step binds it, which backward reads back as the carried value's value (the update) too, kept lazily
  (`codegen.step_rows`: only the steps' updates a side or the next step reads);
- a value only one side binds and backward reads is kept in rows for the steps that took that side only
  (`codegen.function_nest`: appended where not None, read in backward at a counter of that side's rows).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING

from layerdsl.autodiff import loops
from layerdsl.autodiff.tape import Tape, reserved_names
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import map_children, walk
from layerdsl.language.naming import fresh_name

if TYPE_CHECKING:
    from layerdsl.autodiff.loops import Choice


def steps_choose(loop: N.For) -> bool:
    """Whether `loop` (holding no loop) is planned as a choice per step: its body holds `if`s at its top level
    only (one on arguments is left there when taking them out would make too many copies of the loop), each
    taking sides of straight tensor statements (`loops.choice_alone`, no number bound), on ints only (no
    tensor is tested)."""
    return _refused(loop) is None


def refusal(loop: N.For) -> tuple[str, str] | None:
    """Why an `if` of `loop`'s body is not a choice per step (after "cannot derive through this `if` yet: it is
    in the body of a loop whose count is known only when forward runs"), and the hint; None when it is."""
    return _refused(loop)


_HINT = "compute both sides and choose with where(cond, a, b), or drop @function (autograd derives the loop)"


def _refused(loop: N.For) -> tuple[str, str] | None:
    if any(isinstance(s, N.For) for s in walk(loop) if s is not loop):
        return ", and the loop holds a loop", _HINT
    ifs = [s for s in loops.walk_stmts(loop.body) if isinstance(s, N.If)]
    if not ifs:
        return ", and its body holds no `if`", _HINT
    for s in ifs:
        if s not in loop.body or any(isinstance(n, N.If) for n in loops.walk_stmts(s.body + s.orelse)):
            return (
                ": an `if` inside a side of another `if` is not a choice per step yet",
                "test both conditions in one `if` (`if a and b { ... }`), or " + _HINT,
            )
        if not loops.choice_alone(s):
            return ": a side holding a loop, an append or a `return` is not a choice per step yet", _HINT
        if not _on_ints(s.cond):
            return ": a condition that reads a tensor or tests an optional input is not a choice per step", _HINT
    for s in ifs:  # (where another `if` is refused, `with_sides_flattened` leaves the loop as written)
        if _binds_number(s):
            return (
                ": a side that binds a number is not a choice per step yet",
                "compute the number outside the `if` by arithmetic on ints (`n = n + t % 2`), or " + _HINT,
            )
    return None


def _on_ints(cond: N.Expr) -> bool:
    """Whether `cond` reads no tensor's values (a size of one is an int)."""
    for n in walk(cond):
        if isinstance(n, N.Name) and n.kind == N.Kind.TENSOR:
            return False
    return True


def _binds_number(stmt: N.If) -> bool:
    """Whether a side of `stmt` binds a number (not derived yet: a side's tape holds tensors only)."""
    return any(isinstance(s, N.Assign) and s.value.kind in N.NUMBERS for s in stmt.body + stmt.orelse)


def tail_joined(loop: N.For, around: N.Node | None = None) -> N.For:
    """`loop` whose body holds one `if` (not on arguments) followed by plain tensor statements, with those
    statements written at the end of each side: no value merged by the `if` is read after it. An append after
    it (`hs.append(h * y)`) is an item bound on each side (a local no statement of `around` reads or binds),
    appended after the `if`."""
    ifs = [k for k, s in enumerate(loop.body) if isinstance(s, N.If)]
    if len(ifs) != 1:
        return loop
    at = ifs[0]
    branch, rest = loop.body[at], loop.body[at + 1 :]
    assert isinstance(branch, N.If)
    if not rest or not all(_binds_tensor(s) or _appends_tensor(s) for s in rest):
        return loop
    appends: list[N.Stmt] = []
    if any(isinstance(s, N.Append) for s in rest):
        if _rebound_after(rest):
            return loop
        rest, appends = _items_bound(rest, around if around is not None else loop)
    joined = dataclasses.replace(branch, body=[*branch.body, *rest], orelse=[*branch.orelse, *rest])
    return dataclasses.replace(loop, body=[*loop.body[:at], joined, *appends])


def _appends_tensor(s: N.Stmt) -> bool:
    return isinstance(s, N.Append) and s.value.kind == N.Kind.TENSOR


def _rebound_after(rest: list[N.Stmt]) -> bool:
    """Whether a statement of `rest` binds a name an append before it appends (`outs.append(h)`, then `h = ...`)."""
    for k, s in enumerate(rest):
        if isinstance(s, N.Append) and isinstance(s.value, N.Name):
            if s.value.id in {t for later in rest[k + 1 :] for t in _targets(later)}:
                return True
    return False


def _targets(s: N.Stmt) -> list[str]:
    return [t for t, _ in s.targets] if isinstance(s, N.Unpack) else [s.target] if isinstance(s, N.Assign) else []


def _items_bound(rest: list[N.Stmt], around: N.Node) -> tuple[list[N.Stmt], list[N.Stmt]]:
    """`rest` with each append's item bound to a local of its own (`hs.append(h * y)`: `hs_appended = h * y`; a
    name appended as it is), and the appends of those locals."""
    taken = {n.id for n in walk(around) if isinstance(n, N.Name)}
    taken |= {s.target for s in walk(around) if isinstance(s, N.Assign | N.Append)}
    taken |= {t for s in walk(around) if isinstance(s, N.Unpack) for t, _ in s.targets}
    bound: list[N.Stmt] = []
    appends: list[N.Stmt] = []
    for s in rest:
        if isinstance(s, N.Append) and isinstance(s.value, N.Name):  # read as it is after the `if` (not rebound)
            appends.append(s)
            continue
        if not isinstance(s, N.Append):
            bound.append(s)
            continue
        local = next(n for k in range(len(taken) + 1) if (n := f"{s.target}_appended{k or ''}") not in taken)
        taken.add(local)
        bound.append(N.Assign(s.span, local, s.target_span, s.value))
        item = N.Name(s.value.span, local)
        item.kind, item.ref = N.Kind.TENSOR, N.Ref.LOCAL
        appends.append(dataclasses.replace(s, value=item))
    return bound, appends


def _binds_tensor(s: N.Stmt) -> bool:
    return isinstance(s, N.Unpack) or isinstance(s, N.Assign) and s.value.kind == N.Kind.TENSOR


def merged_as_own(choice: Choice) -> Choice:
    """`choice` with each value a side computes and leaves in a merged local renamed to the merged local's name
    on that side: one value per step, whichever side ran (the Function keeps one row of it per step)."""
    tapes = list(choice.sides())
    merged = dict(choice.merged)
    for k, tape in enumerate(tapes):
        own = {s.var for s in tape.steps}
        names = {}
        for name, values in choice.merged.items():
            if values[k] in own and values[k] not in names and name not in own:
                names[values[k]] = name
        if not names:
            continue
        tapes[k] = _renamed_tape(tape, names)
        for name, values in merged.items():
            if values[k] in names:
                merged[name] = (name, values[1]) if k == 0 else (values[0], name)
    return dataclasses.replace(choice, then=tapes[0], orelse=tapes[1], merged=merged, per_step=True)


def _renamed_tape(tape: Tape, names: dict[str, str]) -> Tape:
    """`tape` with each step var of `names` (and each read of it) under its new name."""

    def go(e):
        e = map_children(e, go)
        if isinstance(e, N.Name) and e.id in names:
            e = copy.copy(e)
            e.id = names[e.id]
        return e

    steps = [
        dataclasses.replace(
            s,
            var=names.get(s.var, s.var),
            args={p: go(a) for p, a in s.args.items()},
            expr=go(s.expr),
            guard=names.get(s.guard, s.guard) if s.guard is not None else None,
            base=names.get(s.base, s.base) if s.base is not None else None,
        )
        for s in tape.steps
    ]
    return dataclasses.replace(
        tape,
        steps=steps,
        outputs=[go(o) for o in tape.outputs],
        env={local: names.get(v, v) for local, v in tape.env.items()},
        shapes={names.get(v, v): shape for v, shape in tape.shapes.items()},
    )


def with_sides_flattened(layer: N.Layer) -> N.Layer:
    """`layer` with each loop of its forward's top holding no loop, whose `if`s are not choices per step only
    for a side binding a number or nesting an `if`, written with its `if`s flattened (`sides_flattened`)."""
    assert layer.forward is not None
    body = layer.forward.body
    if not any(isinstance(s, N.For) and (_flattens(s) or _hoists(s)) for s in body):
        return layer
    taken = reserved_names(layer) | {n.id for s in body for n in walk(s) if isinstance(n, N.Name)}
    taken |= {s.target for s in loops.walk_stmts(body) if isinstance(s, N.Assign)}
    out: list[N.Stmt] = []
    for stmt in body:
        bound = frozenset(_bound_on_every_path(out))
        maybe = {s.target for s in loops.walk_stmts(out) if isinstance(s, N.Assign) and s.value.kind in N.NUMBERS}
        maybe -= bound
        if isinstance(stmt, N.For) and maybe & _side_numbers(stmt):
            pass  # a number bound before the loop on some paths only: left as written (refused)
        elif isinstance(stmt, N.For) and _flattens(stmt):
            flat = sides_flattened(stmt, bound, taken)
            stmt = flat if flat is not None else stmt
        elif isinstance(stmt, N.For) and _hoists(stmt):  # a loop holding a loop: its `if`s taken on their own
            stmt = dataclasses.replace(stmt, body=_numbers_hoisted(_conditions_bound(stmt.body, taken), bound))
        out.append(stmt)
    return layer.with_body(out)


def _bound_on_every_path(stmts: list[N.Stmt]) -> set[str]:
    """The number locals `stmts` bind on every path through them (not in a loop, which may run no step)."""
    out: set[str] = set()
    for s in stmts:
        if isinstance(s, N.Assign) and s.value.kind in N.NUMBERS:
            out.add(s.target)
        elif isinstance(s, N.If):
            out |= _bound_on_every_path(s.body) & _bound_on_every_path(s.orelse)
    return out


def _side_numbers(loop: N.For) -> set[str]:
    """The numbers the sides of the `if`s of `loop`'s body bind."""
    ifs = [s for s in loop.body if isinstance(s, N.If)]
    sides = [a for i in ifs for a in loops.walk_stmts(i.body + i.orelse)]
    return {a.target for a in sides if isinstance(a, N.Assign) and a.value.kind in N.NUMBERS}


def _flattens(loop: N.For) -> bool:
    """Whether `loop` holds no loop and an `if` of its body is refused as a choice per step only for a side
    that binds a number or nests an `if`."""
    if any(isinstance(s, N.For) for s in walk(loop) if s is not loop):
        return False
    ifs = [s for s in loop.body if isinstance(s, N.If)]
    return any(_binds_number(s) or _nests_if(s) for s in ifs) and not any(
        isinstance(s, N.For | N.Append | N.Return) for i in ifs for s in loops.walk_stmts(i.body + i.orelse)
    )


def _hoists(loop: N.For) -> bool:
    """Whether `loop` holds a loop and an `if` at the top of its body binds a number on a side holding no loop,
    append or `return` (a `Choice` of the `Nest`, whose sides' tapes hold tensors only)."""
    if not any(isinstance(s, N.For) for s in walk(loop) if s is not loop):
        return False
    return any(isinstance(s, N.If) and _plain_sides(s) and _binds_number_within(s) for s in loop.body)


def _plain_sides(stmt: N.If) -> bool:
    return not any(isinstance(s, N.For | N.Append | N.Return) for s in loops.walk_stmts(stmt.body + stmt.orelse))


def _binds_number_within(stmt: N.If) -> bool:
    return any(isinstance(s, N.Assign) and s.value.kind in N.NUMBERS for s in loops.walk_stmts(stmt.body + stmt.orelse))


def _nests_if(stmt: N.If) -> bool:
    return any(isinstance(s, N.If) for s in loops.walk_stmts(stmt.body + stmt.orelse))


def sides_flattened(loop: N.For, bound: frozenset[str], taken: set[str]) -> N.For | None:
    """`loop` with each `if` of its body that nests an `if` or binds a number on a side written as `if`s at
    the top of the body nesting none, and each number a side binds a statement of its own choosing its value
    per step (`nested_ifs.flattened`: `if c { s = 2.0 } else { s = 0.5 }` is `s = 2.0 if c else None; s = 0.5
    if not c else s`), where that makes each a choice per step (or leaves none); None where it does not.
    `bound`: the number locals bound before the loop (a side's number is theirs where the `if` does not bind
    it). A condition reading a number the `if` binds is a number of its own first (`took = t > n`), so every
    statement the `if` becomes reads the value it had before the `if`, as the plain module tests it once."""
    from layerdsl.autodiff.nested_ifs import flattened

    body = flattened(_numbers_hoisted(_conditions_bound(loop.body, taken), bound), bound)
    flat = dataclasses.replace(loop, body=body)
    if any(isinstance(s, N.If) for s in body) and _refused(flat) is not None:
        return None
    return flat


def _conditions_bound(stmts: list[N.Stmt], taken: set[str], outer: frozenset[str] = frozenset()) -> list[N.Stmt]:
    """`stmts` with the condition of each `if` reading a number that the `if` (or one it is in, `outer`) binds
    bound first to a local, where it is tested: the numbers may be computed before the `if`
    (`_numbers_hoisted`)."""
    out: list[N.Stmt] = []
    for s in stmts:
        if isinstance(s, N.If) and _plain_sides(s):
            binds = outer | {a.target for a in loops.walk_stmts(s.body + s.orelse) if isinstance(a, N.Assign)}
            body, orelse = _conditions_bound(s.body, taken, binds), _conditions_bound(s.orelse, taken, binds)
            cond = s.cond
            if binds & {n.id for n in walk(cond) if isinstance(n, N.Name)}:
                name = fresh_name("took", taken)
                taken.add(name)
                out.append(N.Assign(s.span, name, cond.span, cond))
                cond = B.name(name, cond.span)
                cond.ref, cond.kind = N.Ref.LOCAL, N.Kind.BOOL
            s = dataclasses.replace(s, cond=cond, body=body, orelse=orelse)
        out.append(s)
    return out


def _numbers_hoisted(body: list[N.Stmt], bound: frozenset[str]) -> list[N.Stmt]:
    """`body` with the numbers each `if` of it binds on its sides (in `if`s nested in them too) computed before
    it, in order, each choosing its value by the conditions that lead to it (`m = t + 1 if c else m`; None
    where no value was `bound` before), where none reads a value the `if` binds by a tensor's statement: the
    sides then bind tensors only, and the `if` stays one choice per step."""
    out: list[N.Stmt] = []
    known = set(bound)
    for s in body:
        if isinstance(s, N.If) and _plain_sides(s):
            numbers: list[tuple[N.Assign, N.Expr]] = []
            rest = _pulled(s, None, numbers, set(), set())
            if numbers and rest is not None:
                for stmt, cond in numbers:
                    kept: N.Expr = N.NoneLit(stmt.span)
                    kept.kind = N.Kind.NONE
                    if stmt.target in known:
                        kept = B.name(stmt.target, stmt.target_span)
                        kept.kind = stmt.value.kind
                    chosen = N.IfExp(stmt.value.span, cond, stmt.value, kept)
                    chosen.kind = stmt.value.kind
                    out.append(dataclasses.replace(stmt, value=chosen))
                    known.add(stmt.target)
                if not (rest.body or rest.orelse):  # it bound numbers only
                    continue
                s = rest
        elif isinstance(s, N.Assign) and s.value.kind in N.NUMBERS:
            known.add(s.target)
        out.append(s)
    return out


def _pulled(
    stmt: N.If, outer: N.Expr | None, numbers: list[tuple[N.Assign, N.Expr]], tensors: set[str], read: set[str]
) -> N.If | None:
    """`stmt` (taken where `outer` holds, None: always) without the numbers its sides bind, added to `numbers`
    with the condition leading to each; `tensors` and `read`: what the statements before bind and read, other
    than numbers. None where a number reads one of those or is read by them (it stays where it is)."""
    from layerdsl.autodiff.nested_ifs import _both, _negated

    then = stmt.cond if outer is None else _both(outer, stmt.cond)
    orelse = _negated(stmt.cond) if outer is None else _both(outer, _negated(stmt.cond))
    sides: list[list[N.Stmt]] = []
    for side, cond in ((stmt.body, then), (stmt.orelse, orelse)):
        kept: list[N.Stmt] = []
        for s in side:
            if isinstance(s, N.Assign) and s.value.kind in N.NUMBERS:
                if tensors & {n.id for n in walk(s.value) if isinstance(n, N.Name)} or s.target in read:
                    return None  # (a statement before reads the value it had, or binds what it reads)
                numbers.append((s, cond))
                continue
            if isinstance(s, N.If):
                nested = _pulled(s, cond, numbers, tensors, read)
                if nested is None:
                    return None
                if not (nested.body or nested.orelse):  # it bound numbers only
                    continue
                s = nested
            else:
                read |= {n.id for n in walk(s) if isinstance(n, N.Name)}
                tensors |= {a.target for a in loops.walk_stmts([s]) if isinstance(a, N.Assign)}
                tensors |= {t for a in loops.walk_stmts([s]) if isinstance(a, N.Unpack) for t, _ in a.targets}
                tensors |= {a.target for a in loops.walk_stmts([s]) if isinstance(a, N.IndexAssign)}
            kept.append(s)
        sides.append(kept)
    return dataclasses.replace(stmt, body=sides[0], orelse=sides[1])
