"""A carried value of a loop of choices per step (`autodiff.step_choices`) whose update each side binds (under
the merged name, `step_choices.merged_as_own`) or passes through, kept lazily, as autograd keeps it: a step's
update only where that step's side reads it or the next step's side reads the carried value.

Forward appends, at the end of the side taken, the carried value where the side reads it and the step before
kept no row of its update (a flag; at step 0 its start, copied only where step 0's side reads it, as autograd
keeps it only then), then the update where the side reads it (the flag set, else cleared): the
rows are the kept updates in the order of the steps. Backward runs the steps in reverse with a counter of the
rows not yet passed and a flag saying whether the step after read the carried value: at the start of a side,
it takes the update's row where the side reads it (or passes it where only the step after read it), and the
carried value from the row before. A row's extra-output gradient (double backward) is given at the step whose
update it holds (the start's row's to the start, after the loop, `start_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from layerdsl.autodiff.loops import Choice

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


def lazy_updates(fn: LoopFunction, nest: Nest, kept: list[str], rows: dict) -> dict[str, Lazy]:
    """By update: the carried values kept lazily (see the module's docstring); a nest of one choice per step,
    whose backward reads the update and the carried value by value on its sides only."""
    from layerdsl.codegen import function_nest as F

    choices = [(k, seg) for k, seg in enumerate(nest.segments) if isinstance(seg, Choice) and seg.per_step]
    if len(choices) != 1 or nest.loops():
        return {}
    index, seg = choices[0]
    at = F.choice_key(fn, nest, index)
    sides = {(at, 0), (at, 1)}
    shaped = fn.step_shapes.get(F.key(fn, nest), set())
    out: dict[str, Lazy] = {}
    for c, u in nest.updates.items():
        values = seg.merged.get(u, ())
        if u not in values or not set(values) <= {u, c} or u not in kept or u in rows or u in shaped or c in kept:
            continue
        if u in fn.step_shape_reads or c in fn.step_shape_reads:
            continue
        where_u, where_c = fn.step_sides.get(u, set()), fn.step_sides.get(c, set())
        if not where_u <= sides or not where_c <= sides:
            continue
        items = [*nest.appended.values(), *(i for more in nest.more.values() for i in more)]
        if any(getattr(i, "id", None) in (u, c) for i in items) or u in fn.outputs:
            continue
        out[u] = Lazy(c, u, seg, ((at, 0) in where_u, (at, 1) in where_u), ((at, 0) in where_c, (at, 1) in where_c))
    return out


def flag(fn: LoopFunction, lazy: Lazy) -> str:
    return fn.name(f"{lazy.update}_row_kept", key=("lazy",))


def forward_side(fn: LoopFunction, nest: Nest, lazy: dict[str, Lazy], seg: Choice, k: int) -> list[str]:
    from layerdsl.codegen import function_nest as F

    lines: list[str] = []
    for v in lazy.values():
        if v.choice is not seg:
            continue
        listed = F.layers(fn, v.update)
        if v.reads_carried[k]:
            lines += [f"if not {flag(fn, v)}:", f"    {listed}.append({v.carried})"]
        if v.reads_update[k]:
            lines.append(f"{listed}.append({v.update})")
        lines.append(f"{flag(fn, v)} = {v.reads_update[k]}")
    return lines


def counter(fn: LoopFunction, lazy: Lazy) -> str:
    return fn.name(f"{lazy.update}_rows_left", key=("lazy",))


def next_read(fn: LoopFunction, lazy: Lazy) -> str:
    return fn.name(f"{lazy.carried}_read_after", key=("lazy",))


def backward_start(fn: LoopFunction, lazy: dict[str, Lazy]) -> list[str]:
    from layerdsl.codegen import function_nest as F

    lines: list[str] = []
    for v in lazy.values():
        listed = F.layers(fn, v.update)
        lines += [f"{counter(fn, v)} = 0 if {listed} is None else {listed}.shape[0]", f"{next_read(fn, v)} = False"]
    return lines


def backward_side(w: BackwardWriter, nest: Nest, lazy: dict[str, Lazy], seg: Choice, k: int) -> list[str]:
    from layerdsl.codegen import function_nest as F

    fn = w.fn
    lines: list[str] = []
    for v in lazy.values():
        if v.choice is not seg:
            continue
        listed, at = F.layers(fn, v.update), counter(fn, v)
        given = fn.grad_out(listed)
        rare = w.mode != "main"
        if v.reads_update[k]:
            lines += [f"{at} -= 1", f"{v.update} = {listed}[{at}]"]
            if rare:
                lines.append(f"{fn.grad_out(v.update)} = None if {given} is None else {given}[{at}]")
        else:
            lines += [f"if {next_read(fn, v)}:", f"    {at} -= 1"]
            if rare:  # its row's gradient given here (the step after read it as the carried value)
                zeros = f"{given}.new_zeros({given}.shape[1:])"
                row = f"({given}[{at}] if {next_read(fn, v)} else {zeros})"
                lines.append(f"{fn.grad_out(v.update)} = 0 if {given} is None else {row}")
        if v.reads_carried[k]:
            lines.append(f"{v.carried} = {listed}[{at} - 1]")
        lines.append(f"{next_read(fn, v)} = {v.reads_carried[k]}")
    return lines


def start_rows(w: BackwardWriter, nest: Nest, lazy: dict[str, Lazy]) -> list[str]:
    """After the loop, in the double backward: the gradient of the row of the start (kept where step 0's side
    read the carried value, the first row) given to the start."""
    from layerdsl.codegen import function_nest as F

    lines: list[str] = []
    if w.mode == "main":
        return lines
    for v in lazy.values():
        start = nest.carried[v.carried]
        if start not in w.plan.requires:
            continue
        given = w.fn.grad_out(F.layers(w.fn, v.update))
        taken = w.accumulate(start, f"{given}[0]", conditional=True)
        lines += [f"if {next_read(w.fn, v)} and {given} is not None:", *("    " + t for t in taken)]
    return lines
