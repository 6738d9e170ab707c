"""A loop of a nest's body (`autodiff.nest.Nest`) whose count changes from one outer step to the next
(`for j { for k_t in range(j * T) { ... } }`): the stacks of its per-step values, kept per outer step, are of a
different length at each outer step, so they are not stacked over the outer steps but joined end to end in one
buffer (`torch.cat`, an outer step whose loop ran no steps adding nothing). Backward, running the outer steps in
reverse, counts that loop's steps at each again (its count reads only what the step binds before its segments)
and cuts the step's rows from the buffer's end: each stack at the offset its earlier outer steps leave.

A stack of a carried value holds one row fewer than the loop's count (its step 0 is its start); one read only for
its shape (one element expanded) is one element expanded to all the rows again. What only that loop reads, as the
start of a value it carries, is kept only at the outer steps where it runs a step, as autograd keeps it: a value
of the body (`gated_starts`), or the nest's carried value, which an outer step of no inner steps passes on
unchanged (`gated`: kept from the second outer step that runs one on), or, where the loop's stack holds that
value's next values in full, not kept at all but read back as the row before the outer step's rows (`read_back`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from layerdsl.autodiff.loops import Loop
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import walk

if TYPE_CHECKING:
    from layerdsl.autodiff.nest import Nest
    from layerdsl.codegen.function_loops import LoopFunction
    from layerdsl.codegen.loop_backward import BackwardWriter


def ragged_loops(nest: Nest) -> list[Loop]:
    """The loops of the nest's body whose count may change from one outer step to the next (`Nest.ragged`)."""
    return [seg for k, seg in enumerate(nest.segments) if k in nest.ragged and isinstance(seg, Loop)]


def ragged_stacks(fn: LoopFunction, nest: Nest, kept: list[str]) -> dict[str, tuple[Loop, int]]:
    """The values of `kept` (kept per outer step) that are a ragged loop's stacks of per-step values, by the
    loop and how many rows short of its count each holds (a carried value's: one)."""
    out: dict[str, tuple[Loop, int]] = {}
    for loop in ragged_loops(nest):
        for v in [*loop.carried, *(s.var for s in loop.tape.steps)]:
            if fn.stacked(v) in kept:
                out[fn.stacked(v)] = (loop, 1 if v in loop.carried else 0)
    return out


def steps_running(nest: Nest, outer: str, trip: str) -> str:
    """The outer steps (`outer`: their range) at which the ragged loop of range `trip` runs a step: empty where
    none does (`loop_starts.when_a_step_runs` saves what only its steps read under that test)."""
    return f"[{nest.var} for {nest.var} in {outer} if {trip}]"


def joined(listed: str, shaped: bool) -> list[str]:
    """Forward's line after the nest joining the per-step stacks `listed` of a ragged loop into one buffer
    (None where no step ran); `shaped`: one element expanded (only its shape is read)."""
    present = f"[s for s in {listed} if s is not None]"
    if shaped:
        whole = (
            f"{listed}[0].new_zeros(()).expand(sum(s.shape[0] for s in {listed}), *{listed}[0].shape[1:])"
            "  # only its shape is read"
        )
    else:
        whole = f"torch.cat({listed})"
    return [f"{listed} = {present}", f"{listed} = {whole} if {listed} else None"]


def counter(fn: LoopFunction, value: str) -> str:
    """The rows of the buffer of `value` not yet read back by backward's steps in reverse."""
    return fn.name(f"{value}_rows_at", key=("ragged",))


def count_name(fn: LoopFunction, loop: Loop) -> str:
    return fn.name("n_inner", key=("ragged", id(loop)))


def counters(fn: LoopFunction, nest: Nest, kept: list[str]) -> list[str]:
    """Backward's lines before the outer steps: each buffer's counter at its end."""
    from layerdsl.codegen.function_nest import layers

    return [
        f"{counter(fn, v)} = 0 if {layers(fn, v)} is None else {layers(fn, v)}.shape[0]"
        for v in [*ragged_stacks(fn, nest, kept), *gated(fn, nest, kept), *gated_starts(fn, nest, kept)]
    ]


def step_lines(w: BackwardWriter, nest: Nest, kept: list[str]) -> list[str]:
    """At the head of a backward step: each ragged loop's count, each buffer's counter moved back over the
    step's rows and the step's stack cut from the buffer (None where the loop ran no steps)."""
    from layerdsl.codegen.function_nest import layers, spelt

    fn = w.fn
    stacks = ragged_stacks(fn, nest, kept)
    lines = [f"{count_name(fn, loop)} = len({fn.trip(loop, w.ex)})" for loop in ragged_loops(nest)]
    for v, (loop, short) in stacks.items():
        n, at = count_name(fn, loop), counter(fn, v)
        rows = f"{n} - {short}" if short else n
        lines.append(f"{at} -= max({rows}, 0)")
        lines.append(f"{spelt(w, v)} = {layers(fn, v)}[{at}:{at} + {rows}] if {n} > 0 else None")
    for v, loop in gated_starts(fn, nest, kept).items():
        n, at = count_name(fn, loop), counter(fn, v)
        lines += [f"{at} -= {n} > 0", f"{spelt(w, v)} = {layers(fn, v)}[{at}] if {n} > 0 else None"]
    for v, loop in gated(fn, nest, kept).items():  # (bound once the carried values are read back)
        at, here = counter(fn, v), kept_here(fn, v)
        lines += [f"{here} = {count_name(fn, loop)} > 0 and {at} > 0", f"{at} -= {here}"]
    return lines


def grad_out_line(w: BackwardWriter, nest: Nest, v: str, given: str) -> str:
    """The step's share of the gradient `given` of the buffer of `v` (a ragged loop's stack, `step_lines`; or
    a value kept where it runs, `gated`: zeros at a step that did not keep it)."""
    from layerdsl.codegen.function_nest import body_extra

    starts = gated_starts(w.fn, nest, body_extra(w.fn, nest, w.per_step))
    if v in starts:
        n, at = count_name(w.fn, starts[v]), counter(w.fn, v)
        zeros = f"0 if {given} is None else {given}.new_zeros({given}.shape[1:])"  # (as `function_nest.rows_read`)
        return f"{w.fn.grad_out(v)} = {given}[{at}] if {n} > 0 else {zeros}"
    if v not in ragged_stacks(w.fn, nest, [v]):
        start = w.ex(B.name(nest.carried[v]))
        at, here = counter(w.fn, v), kept_here(w.fn, v)
        return f"{w.fn.grad_out(v)} = {given}[{at}] if {here} else torch.zeros_like({start})"
    loop, short = ragged_stacks(w.fn, nest, [v])[v]
    n, at = count_name(w.fn, loop), counter(w.fn, v)
    rows = f"{n} - {short}" if short else n
    return f"{w.fn.grad_out(v)} = None if {given} is None or {n} == 0 else {given}[{at}:{at} + {rows}]"


def gated(fn: LoopFunction, nest: Nest, kept: list[str]) -> dict[str, Loop]:
    """The carried values of the nest kept from outer step 1 on (`function_nest.from_step_one`) that only a
    ragged loop reads, at its start, and whose next value is that loop's last: by the loop. Such a value passes
    an outer step whose loop runs no steps unchanged, so it is kept only at an outer step where the loop runs
    steps, after one where it ran (before, it is still its start): as autograd keeps it, as the loop's first
    step's operand."""
    from layerdsl.codegen.function_nest import from_step_one

    out: dict[str, Loop] = {}
    alone = _not_read_by_segments(nest)
    for c in from_step_one(fn, nest, kept):
        update = nest.updates.get(c)
        for loop in ragged_loops(nest):
            if update in loop.carried and loop.carried[update] == c and c in alone:
                out[c] = loop
    return out


def ran(fn: LoopFunction, value: str) -> str:
    """Whether an outer step before ran a step of the ragged loop `value` is kept for (`gated`)."""
    return fn.name(f"{value}_ran", key=("ragged",))


def kept_here(fn: LoopFunction, value: str) -> str:
    """Whether backward's outer step reads `value` (`gated`) back from its stack."""
    return fn.name(f"{value}_kept", key=("ragged",))


def gated_appends(fn: LoopFunction, nest: Nest, values: dict[str, Loop], ex) -> list[str]:
    """Forward's lines at the end of an outer step keeping each of `values` (`gated`) as it was at the step's
    start where the loop ran steps, after a step where it ran."""
    from layerdsl.codegen.function_nest import layers

    lines: list[str] = []
    for v, loop in values.items():
        if v not in nest.carried:  # a start only the loop reads (`gated_starts`)
            lines += [f"if len({fn.trip(loop, ex)}):", f"    {layers(fn, v)}.append({v})"]
            continue
        lines += [
            f"if len({fn.trip(loop, ex)}):",
            f"    if {ran(fn, v)}:",
            f"        {layers(fn, v)}.append({v})",
            f"    {ran(fn, v)} = True",
        ]
    return lines


def read_back_line(w: BackwardWriter, nest: Nest, c: str) -> str:
    """Backward's line binding the carried value `c` (`gated`) at an outer step: its row where the step kept
    it, else its start (a step that kept none reads it not, or reads the start: no step ran before)."""
    from layerdsl.codegen.function_nest import body_extra, layers, spelt

    start = w.ex(B.name(nest.carried[c]))
    kept = body_extra(w.fn, nest, w.per_step)
    if c in (back := read_back(w.fn, nest, kept)):
        at = counter(w.fn, back[c][1])
        return f"{spelt(w, c)} = {layers(w.fn, back[c][1])}[{at} - 1] if {at} > 0 else {start}"
    at, here = counter(w.fn, c), kept_here(w.fn, c)
    return f"{spelt(w, c)} = {layers(w.fn, c)}[{at}] if {here} else {start}"


def _not_read_by_segments(nest: Nest) -> set[str]:
    """The nest's values that no segment of its body reads (but as a loop's start), nor a step appends."""
    from layerdsl.codegen.function_nest import segment_reads

    read = set().union(*(segment_reads(seg) for seg in nest.segments))
    items = [*nest.appended.values(), *(i for more in nest.more.values() for i in more)]
    read |= {n.id for item in items for n in walk(item) if isinstance(n, N.Name)}
    return nest.values() - read


def _key(fn: LoopFunction, nest: Nest) -> int:
    from layerdsl.codegen.function_nest import key

    return key(fn, nest)


def read_back(fn: LoopFunction, nest: Nest, kept: list[str]) -> dict[str, tuple[Loop, str]]:
    """The carried values of the nest that only a ragged loop reads, at its start, whose next value is that
    loop's last step's, which `kept` holds in full (its stack, `h3_steps`): by the loop and that stack. Not kept
    per outer step but read back as the stack's row before the outer step's rows (the last step of the last
    outer step that ran one), or the start where no step ran before (`read_back_line`)."""
    out: dict[str, tuple[Loop, str]] = {}
    alone = _not_read_by_segments(nest)
    for c in nest.carried:
        update = nest.updates.get(c)
        for loop in ragged_loops(nest):
            if c not in alone or update not in loop.carried or loop.carried[update] != c:
                continue
            step = loop.updates.get(update)
            k = fn.loops.index(loop)
            if step is None or not any(s.var == step for s in loop.tape.steps) or fn.stacked(step) not in kept:
                continue
            if step in fn.step_shapes.get(k, set()) or fn.first_broadcast(loop, update) is not None:
                continue
            out[c] = (loop, fn.stacked(step))
    return out


def gated_starts(fn: LoopFunction, nest: Nest, kept: list[str]) -> dict[str, Loop]:
    """The values of the body of `kept` that only a ragged loop reads, as the start of a value it carries (`h1`
    of `h1 = h * 0.5; for t in range(j) { h1 = tanh(h1 @ w) }`): by the loop, kept only at an outer step where
    it runs a step (as autograd keeps it, as that step's operand)."""
    from layerdsl.codegen.function_nest import from_step_one, maybe_none

    out: dict[str, Loop] = {}
    alone = _not_read_by_segments(nest)
    later = set(from_step_one(fn, nest, kept))
    shaped = fn.step_shapes.get(_key(fn, nest), set())
    for loop in ragged_loops(nest):
        for v in loop.carried.values():
            if v in kept and v in alone and v not in nest.carried and v not in later | shaped:
                if not maybe_none(fn, nest, v) and v not in set(nest.updates.values()):
                    out[v] = loop
    return out
