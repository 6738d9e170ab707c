"""A carried value of a loop of choices per step (`autodiff.step_choices`) whose update each side binds (under
the merged name, `step_choices.merged_as_own`) or passes through, kept lazily, as autograd keeps it: a step's
update only where that step's side reads it or the next step reads the carried value. A read of the carried
value outside the sides (a statement before the `if`: `g = h * x[t]`) is every step's, on either side.

Forward appends, at the end of the side taken, the carried value where the step reads it and the step before
kept no row of its update (a flag), then the update where the side reads it (the flag set, else cleared); a
side passing the carried value on appends no update (its update is the carried value: the flag set where the
step read it, the row it has). The rows are the kept updates in the order of the steps. The start: an input
the body reads anyway (`y @ w` on a side), or one step 0's side reads (its condition known at the loop's first
value, `read_at_step_zero`), is read as itself, no row (the flag set before step 0: the row
before the first is the start); else copied as a row where a step reads it, as autograd keeps it only then.
Backward runs the steps in reverse with a counter of the rows not yet passed and a flag saying whether the
step after read the carried value: at the start of a side, it takes the update's row where the side reads it
(or passes it where only the step after read it), and the carried value from the row before (the start where
none is). A row's extra-output gradient (double backward) is given at the step whose update it holds (a
copied start's to the start, after the loop, `start_rows`).

Where no side reads the update and both bind it (an item appended, `outs.append(h)`: the carried value is kept
from step 1 on, `function_nest.from_step_one`), the rows are the carried value's own (`Lazy.own`, in its stack
over the steps): each step whose side reads it appends it, backward takes the last row not yet read where the
side reads it and gives that row's extra-output gradient to the carried value at that step (`own_rows_given`).
A read of the carried value's name after the loop (a later loop's start) is not a step's (`function_nest`
counts a nest's reads by side apart from the rest).

A value every step binds that is not carried (a choice's merged local: `tanh`'s result on one side, `h * x[t]`
on the other; a nested `if`'s, flattened into `if`s in a row whose sides pass the value before them on) and
that backward reads on one side of one choice only (`sin(h)` of the nested `if`'s side) is kept in rows for the
steps that ran that side (`merged_rows`, by `function_nest.side_rows`), as a value only one side binds is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from layerdsl.autodiff import choice_slices
from layerdsl.autodiff.loops import UNBOUND, Choice
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import walk
from layerdsl.semantics.evaluate import NotConstant, evaluate

if TYPE_CHECKING:
    from layerdsl.autodiff.nest import Nest
    from layerdsl.codegen.function_loops import LoopFunction
    from layerdsl.codegen.loop_backward import BackwardWriter


@dataclass
class Lazy:
    carried: str
    update: str
    choice: Choice
    reads_update: tuple[bool, bool]  # by side
    reads_carried: tuple[bool, bool]
    start: str | None = None  # the start, read as itself where the body reads it anyway (not copied as a row)
    passes: tuple[bool, bool] = (False, False)  # by side: the side binds no update (the update is the carried)
    kept_as: str = ""  # the value of the body kept per step whose rows these are: the update, or the carried

    @property
    def own(self) -> bool:
        """Whether the rows are the carried value's own (kept from step 1 on, `function_nest.from_step_one`:
        no side reads the update, each step reading the carried value appends it, its row given its gradient
        there)."""
        return self.kept_as == self.carried


def lazy_updates(fn: LoopFunction, nest: Nest, kept: list[str], rows: dict) -> dict[str, Lazy]:
    """By the value kept per step (the update, or the carried value where it is kept from step 1 on: `own`):
    the carried values kept lazily (see the module's docstring); a nest of one choice per step, whose backward
    reads the update and the carried value by value on its sides only."""
    from layerdsl.codegen import function_nest as F

    choices = [(k, seg) for k, seg in enumerate(nest.segments) if isinstance(seg, Choice) and seg.per_step]
    if len(choices) != 1 or nest.loops():
        return {}
    index, seg = choices[0]
    at = F.choice_key(fn, nest, index)
    sides = {(at, 0), (at, 1)}
    shaped = fn.step_shapes.get(F.key(fn, nest), set())
    sliced = choice_slices.sliced_carried(nest, fn.plan.shapes, set(fn.plan.leaves))
    later = F.from_step_one(fn, nest, kept)
    out: dict[str, Lazy] = {}
    for c, u in nest.updates.items():
        if c in sliced:  # read at the head of the step, for its slices computed again there
            continue
        values = seg.merged.get(u)
        # the carried value kept from step 1 on, the update read by no side (each side binds it)
        own = c in later and u not in kept and values is not None and c not in values
        if (
            values is None
            or u not in values
            or not set(values) <= {u, c}
            or (u not in kept or u in rows or u in shaped or c in kept)
            and not own
        ):
            continue
        if u in fn.step_shape_reads or c in fn.step_shape_reads:
            continue
        where_u, where_c = fn.step_sides.get(u, set()), fn.step_sides.get(c, set())
        if None in where_c:  # read outside the sides (before the choice: the update takes c's name after it)
            where_c = (where_c - {None}) | sides
        if not where_u <= sides or not where_c <= sides:
            continue
        items = [*nest.appended.values(), *(i for more in nest.more.values() for i in more)]
        appended = {getattr(i, "id", None) for i in items}
        if c in appended or u in appended and not own or u in fn.outputs:
            continue
        passes = (values[0] == c, values[1] == c)
        # a side passing the carried value on reads the update as the carried value
        reads_u = ((at, 0) in where_u and not passes[0], (at, 1) in where_u and not passes[1])
        reads_c = (
            (at, 0) in where_c | (where_u if passes[0] else set()),
            (at, 1) in where_c | (where_u if passes[1] else set()),
        )
        start = nest.carried[c]
        read_anyway = start in _read_by_body(nest) or read_at_step_zero(nest, seg, reads_c)
        itself = start if start in fn.plan.leaves and read_anyway else None
        if own and any(reads_u):
            continue
        out[c if own else u] = Lazy(c, u, seg, reads_u, reads_c, itself, passes, c if own else u)
    return out


def merged_rows(fn: LoopFunction, nest: Nest, kept: list[str], index: int) -> dict[str, int]:
    """The values of `kept` every step binds (both sides of a choice per step leave them in its merged local,
    `step_choices.merged_as_own`, or one side passes the value before it on: a nested `if` flattened,
    `step_choices.sides_flattened`) that backward reads by value on one side of the choice per step at `index`
    only: that choice's own merged values, and those of the choices before it; by the side (`side_rows` keeps
    them in rows for the steps that ran it). Not a carried value nor its update (`lazy_updates`), nor one a
    list is appended, nor one kept for its shape alone."""
    from layerdsl.codegen import function_nest as F

    seg = nest.segments[index]
    if not (isinstance(seg, Choice) and seg.per_step):
        return {}
    every = {
        v
        for earlier in nest.segments[: index + 1]
        if isinstance(earlier, Choice) and earlier.per_step
        for v, values in earlier.merged.items()
        if UNBOUND not in values
    }
    items = [*nest.appended.values(), *(i for more in nest.more.values() for i in more)]
    listed = {n.id for item in items for n in walk(item) if isinstance(n, N.Name)}
    held = set(nest.updates.values()) | set(nest.carried) | listed | F.stacked_shapes(fn, nest)
    at = F.choice_key(fn, nest, index)
    out: dict[str, int] = {}
    for v in kept:
        sides = fn.step_sides.get(v, set())
        if v in every - held and len(sides) == 1 and next(iter(sides)) in {(at, 0), (at, 1)}:
            out[v] = next(iter(sides))[1]  # type: ignore[index]
    return out


def chosen_per_step(nest: Nest) -> bool:
    """Whether `nest` is a loop of choices per step: its carried values keep one shape (checked at each step),
    so a carried value's zeros are its update's gradient's shape (not read of the carried value, which the
    sides may not read: read there, it would be counted as read at every step)."""
    return not nest.loops() and any(isinstance(seg, Choice) and seg.per_step for seg in nest.segments)


def _read_by_body(nest: Nest) -> set[str]:
    """The names the derivatives of the nest's body's steps read (`y` of `y @ w`, not of `x[t] + y`): a leaf
    such is kept for backward anyway, so a carried value's start that is one is read as itself, not copied."""
    out: set[str] = set()
    for s in nest.steps():
        if s.op is None:
            continue
        formulas = " ".join(f for f in s.op.grads.values() if f) + " " + repr(s.op.rank_grads)
        for param, arg in s.args.items():
            if isinstance(arg, N.Name) and re.search(rf"\b{re.escape(param)}\b", formulas):
                out.add(arg.id)
    return out


def read_at_step_zero(nest: Nest, seg: Choice, reads_carried: tuple[bool, bool]) -> bool:
    """Whether step 0 (known from the loop's first value of its variable and the numbers the body binds from
    it) takes a side of `seg` reading the carried value (`reads_carried`, by side): its start, an input, is
    then read as itself (autograd keeps that input at step 0 too), not copied as a row."""
    first = nest.bounds[0] if len(nest.bounds) > 1 else B.num(0)
    if not (isinstance(first, N.Num) and isinstance(first.value, int)):
        return False
    taken = side_at(nest, seg, first.value)
    return taken is not None and reads_carried[taken]


def side_at(nest: Nest, seg: Choice, t: int) -> int | None:
    """The side of `seg` (0: its condition holds) that the step whose variable is `t` takes, where that is known
    from `t` and the numbers the body binds from it alone; else None."""
    return _side_given(nest, seg, nest.var, t)


def pair_side_at(nest: Nest, seg: Choice, outer: str, j: int) -> int | None:
    """As `side_at`, at the steps of a loop over pairs of steps (`autodiff.nest_pairs`) whose outer variable
    `outer` (bound from the pair's, `j = j_k // K`) is `j`: None where the side is not known from `j` alone."""
    return _side_given(nest, seg, outer, j)


def _side_given(nest: Nest, seg: Choice, var: str, value: int) -> int | None:
    """The side of `seg` taken where the number `var` is `value`, from the numbers the body binds from it alone
    (`var` itself not bound again); None where not known from it."""
    env: dict[str, object] = {var: value}
    for name, expr in nest.numbers:  # (a number not known from `var` alone: unknown, and so is what reads it)
        if name == var:
            continue
        try:
            env[name] = evaluate(expr, env)
        except NotConstant:
            env.pop(name, None)
    try:
        return 0 if evaluate(seg.cond, env) else 1
    except NotConstant:
        return None


def initially(fn: LoopFunction, lazy: dict[str, Lazy]) -> list[str]:
    """Forward's lines before the loop: each flag saying the carried value is the last row (the start is,
    where it is read as itself)."""
    return [f"{flag(fn, v)} = {v.start is not None}" for v in lazy.values()]


def flag(fn: LoopFunction, lazy: Lazy) -> str:
    return fn.name(f"{lazy.update}_row_kept", key=("lazy",))


def forward_side(fn: LoopFunction, nest: Nest, lazy: dict[str, Lazy], seg: Choice, k: int) -> list[str]:
    from layerdsl.codegen import function_nest as F

    lines: list[str] = []
    for v in lazy.values():
        if v.choice is not seg:
            continue
        listed = F.layers(fn, v.kept_as)
        if v.reads_carried[k]:
            lines += [f"if not {flag(fn, v)}:", f"    {listed}.append({v.carried})"]
        if v.reads_update[k]:
            lines.append(f"{listed}.append({v.update})")
        # a side passing the carried value on, reading it: its row (the last) is the update's
        lines.append(f"{flag(fn, v)} = {v.reads_update[k] or v.passes[k] and v.reads_carried[k]}")
    return lines


def counter(fn: LoopFunction, lazy: Lazy) -> str:
    return fn.name(f"{lazy.update}_rows_left", key=("lazy",))


def next_read(fn: LoopFunction, lazy: Lazy) -> str:
    return fn.name(f"{lazy.carried}_read_after", key=("lazy",))


def backward_start(fn: LoopFunction, lazy: dict[str, Lazy]) -> list[str]:
    from layerdsl.codegen import function_nest as F

    lines: list[str] = []
    for v in lazy.values():
        listed = F.layers(fn, v.kept_as)
        lines.append(f"{counter(fn, v)} = 0 if {listed} is None else {listed}.shape[0]")
        lines += [] if v.own else [f"{next_read(fn, v)} = False"]
    return lines


def backward_side(w: BackwardWriter, nest: Nest, lazy: dict[str, Lazy], seg: Choice, k: int) -> list[str]:
    from layerdsl.codegen import function_nest as F

    fn = w.fn
    lines: list[str] = []
    for v in lazy.values():
        if v.choice is not seg:
            continue
        listed, at = F.layers(fn, v.kept_as), counter(fn, v)
        given = fn.grad_out(listed)
        rare = w.mode != "main"
        if v.own:
            lines += _own_side(w, nest, v, k)
            continue
        if v.passes[k] and v.reads_carried[k]:  # its row is the carried value's (kept here, or before)
            if rare:  # given where it was kept (the step before, or the step that computed it)
                lines.append(f"{fn.grad_out(v.update)} = 0")
        elif v.reads_update[k]:
            lines += [f"{at} -= 1", f"{v.update} = {listed}[{at}]"]
            if rare:
                lines.append(f"{fn.grad_out(v.update)} = None if {given} is None else {given}[{at}]")
        else:
            lines += [f"if {next_read(fn, v)}:", f"    {at} -= 1"]
            if rare:  # its row's gradient given here (the step after read it as the carried value)
                zeros = f"{given}.new_zeros({given}.shape[1:])"
                row = f"({given}[{at}] if {next_read(fn, v)} else {zeros})"
                lines.append(f"{fn.grad_out(v.update)} = 0 if {given} is None else {row}")
        carried = F.spelt(w, v.carried)  # (the nest's step's own name for it, `function_nest.step_spelling`)
        if v.reads_carried[k] and v.start is not None:  # no row before the first: the start
            lines.append(f"{carried} = {listed}[{at} - 1] if {at} > 0 else {read_start(w, nest, v.start)}")
        elif v.reads_carried[k]:
            lines.append(f"{carried} = {listed}[{at} - 1]")
        if v.passes[k] and v.reads_carried[k]:
            lines.append(f"{v.update} = {carried}")
        lines.append(f"{next_read(fn, v)} = {v.reads_carried[k]}")
    return lines


def read_start(w: BackwardWriter, nest: Nest, start: str) -> str:
    """`start`, an input a carried value starts as, read as itself at a step of the nest's backward (its
    spelling): as read in the nest's steps only, so that setup_context saves it only where a step runs
    (`loop_starts.when_a_step_runs`: autograd keeps nothing of it at a loop of no steps)."""
    from layerdsl.codegen import function_nest as F

    at = F.key(w.fn, nest)
    w.reads.trips[at] = f"range({', '.join(w.ex(b) for b in nest.bounds)})"
    own, w.own_loop = w.own_loop, at
    w.read(B.name(start))
    w.own_loop = own
    return w.ex(B.name(start))


def start_rows(w: BackwardWriter, nest: Nest, lazy: dict[str, Lazy]) -> list[str]:
    """After the loop, in the double backward: the gradient of the row of the start (kept where step 0's side
    read the carried value, the first row) given to the start."""
    from layerdsl.codegen import function_nest as F

    lines: list[str] = []
    if w.mode == "main":
        return lines
    for v in lazy.values():
        start = nest.carried[v.carried]
        if start not in w.plan.requires or v.start is not None or v.own:  # (an own row's given at its step)
            continue
        given = w.fn.grad_out(F.layers(w.fn, v.kept_as))
        taken = w.accumulate(start, f"{given}[0]", conditional=True)
        lines += [f"if {next_read(w.fn, v)} and {given} is not None:", *("    " + t for t in taken)]
    return lines


def _own_side(w: BackwardWriter, nest: Nest, v: Lazy, k: int) -> list[str]:
    """At the start of side `k` in backward, the carried value's own rows (`Lazy.own`): where the side reads
    it, the last row not yet read (the start read as itself where no row is left: step 0's), its extra
    output's gradient given to the carried value after the step's segments (`own_rows_given`)."""
    from layerdsl.codegen import function_nest as F

    fn = w.fn
    listed, at = F.layers(fn, v.kept_as), counter(fn, v)
    given = fn.grad_out(listed)
    rare = w.mode != "main"
    if not v.reads_carried[k]:
        return [f"{fn.grad_out(v.carried)} = None"] if rare else []
    lines = [f"{at} -= 1"]
    row = f"{listed}[{at}]"
    if v.start is not None:
        lines.append(f"{F.spelt(w, v.carried)} = {row} if {at} >= 0 else {read_start(w, nest, v.start)}")
        if rare:
            lines.append(f"{fn.grad_out(v.carried)} = None if {given} is None or {at} < 0 else {given}[{at}]")
    else:
        lines.append(f"{F.spelt(w, v.carried)} = {row}")
        if rare:
            lines.append(f"{fn.grad_out(v.carried)} = None if {given} is None else {given}[{at}]")
    return lines


def own_rows_given(w: BackwardWriter, lazy: dict[str, Lazy]) -> list[str]:
    """After a step's segments, in the double backward: the gradient of the carried value's own row read at the
    step (`_own_side`; None where its side read none) added to the carried value's."""
    lines: list[str] = []
    if w.mode == "main":
        return lines
    for v in lazy.values():
        if v.own and v.carried in w.plan.requires:
            g, given = w.acc(v.carried), w.fn.grad_out(v.carried)
            lines += [f"if {given} is not None:", f"    {g} = {g} + {given}"]
    return lines
