"""An `if` in the body of a loop of a run-time count whose side may change from step to step (`if t % 2 == 1`,
`if t > n` of an int `n` the loop carries, `if t == 0` in a loop over `range(0, T, 2)`): a choice per step.

`loop_split` splits a loop at `t == 0` / `t < k` where it can (that stays the path where it applies), and
`loops.unswitched` takes an `if` on arguments out of the loop. A loop whose body still holds an `if` at its
top level, on ints only (the loop's variable, ints it carries, arguments, sizes), each side holding no loop,
append, `return` or `if` (`loops.choice_alone`), is planned as a `nest.Nest` of no inner loop (`steps_choose`):
its body as segments, each such `if` a `loops.Choice` whose condition the Function evaluates at every step, in
forward, and again in backward's loop (the ints a step reads are those backward's prelude runs again,
`loop_ints`), running the derived backward of the side taken.

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
from layerdsl.autodiff.tape import Tape
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import map_children, walk

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
