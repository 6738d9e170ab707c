"""A `Nest` segment (`autodiff.nest`: a loop whose body holds a loop) in a loop Function
(`function_loops.LoopFunction`): its forward and its backward.

Forward runs the body once per step, its segments written as the Function's own are; each value the body's
backward reads (a straight segment's, a loop's carried value or stack of per-step values) is appended to a
list of its own (`h_steps_layers`), stacked after the loop (one more leading dim: the outer steps) and
returned as an extra output; one it reads only the shape of is kept as one element expanded to that shape,
over the steps too (`shapes_per_step`; a side's row alike), and holds no memory. An `x[t]` of an input
(`step_picks`) is picked again from x at the top of a backward step, not kept. A carried value is not stacked as a copy of
what is kept anyway: it is read back from the stack of its update at the step before (`previous_update`:
an RNN's `x`, the layer before's stacked outputs; a value only the inner loop changes, as that loop's last
step, `last_step`), or else stacked from step 1 on (`from_step_one`), and
is its start at step 0; where the body's loops in a row carry it, from the last step of the latest that ran
steps (`loop_chain`: each loop's count the same at every outer step). A loop's carried value that a later loop
starts from, starting from the nest's carried value, is kept only where the loop ran no steps, read as its
last step elsewhere (`kept_where_none`); one a loop leaves whose last value is in no stack, only where the loop
ran steps, read as its start elsewhere (`kept_where_steps`); a merged value after an `if` tested at each outer step whose other
side passes the carried value on is kept in rows for the steps of the side computing it, read as the carried
value elsewhere (`merged_rows`). After the nest, its last value is the inner loop's last step at the last outer step
(`ends_in_layers`: saved only where that stack is None); an inner loop's last value the body reads is not
stacked but read back as that loop's last step (`inner_ends`); what only an inner loop's steps read is saved
only where a step of both loops runs (`inner_loop`, `starts_read`; an extra output, `saved_in_steps`), an
input's shape for its zeros kept on ctx (`start_zeros`). Backward runs the body's backward for
k = n - 1, ..., 0, each carried value under a name of its own (`step_spelling`: its own name keeps the last
value, which the backward written after the nest's reads), each saved value bound to its step's slice
(`h_steps = h_steps_layers[k]`, and its
gradient as an extra output alike), so that the body's segments' backward is written as the Function's own
is; the carried values' gradients go from step to step, and a list's items' gradients are cut from what it
is joined into. Numbers the nest carries (`autodiff.loop_ints`) are run again in backward's prelude
(`replay`), recorded at the start of each outer step, of each step of its loops, and after each loop where a
later segment of the body reads what it leaves; backward binds each as recorded where it reads it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from layerdsl.autodiff import choice_slices
from layerdsl.autodiff.loops import UNBOUND, Choice, Join, Loop, Straight
from layerdsl.autodiff.nest import Nest
from layerdsl.autodiff.tape import Step, Tape
from layerdsl.codegen import loop_backward, loop_starts, ragged_steps, step_picks, step_rows
from layerdsl.codegen.function import VIEWS
from layerdsl.codegen.function_checks import item_check_lines
from layerdsl.codegen.pyexpr import PyExpr
from layerdsl.codegen.spec_lines import with_spec_line
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import walk

if TYPE_CHECKING:
    from layerdsl.codegen.function_loops import LoopFunction
    from layerdsl.codegen.loop_backward import BackwardWriter, Reads


def nests(segments) -> list[Nest]:
    return [seg for seg in segments if isinstance(seg, Nest)]


def loops_in(segments) -> list[Loop]:
    """The loops of the forward, those in a nest's body too, in order."""
    out: list[Loop] = []
    for seg in segments:
        out += seg.loops() if isinstance(seg, Nest) else [seg] if isinstance(seg, Loop) else []
    return out


def names_read(nest: Nest) -> set[str]:
    """The names its count, its number locals and its joins' dims read (forward binds them before it)."""
    exprs = [*nest.bounds, *(e for _, e in nest.numbers), *(j.dim for j in nest.joins)]
    return {n.id for e in exprs for n in walk(e) if isinstance(n, N.Name)} | set(nest.number_starts.values())


def replays(nest: Nest) -> bool:
    """Whether backward's prelude runs the nest's numbers again: it names numbers apart, or carries some."""
    return bool(
        nest.number_starts
        or nest.carried_numbers
        or any(loop.carried_numbers for loop in nest.loops())
        or left_by_loops(nest)
    )


def replay_reads(nest: Nest) -> tuple[set[str], set[str]]:
    """The names the nest's numbers bind (its loops' variables too), and those they read from before it."""
    own = {nest.var, *(n for n, _ in nest.numbers), *nest.number_starts}
    exprs = [*nest.bounds, *(e for _, e in nest.numbers)]
    for loop in nest.loops():
        own |= {loop.var, *(n for n, _ in loop.numbers)}
        exprs += [*loop.bounds, *(e for _, e in loop.numbers)]
    read = {n.id for e in exprs for n in walk(e) if isinstance(n, N.Name)} - own
    return own, read | set(nest.number_starts.values())


def step_index(fn: LoopFunction, nest: Nest) -> str:
    """The index of an outer step in what is kept per step: the loop's variable over `range(n)`, else a count of
    the steps of its own (a range with a start or a step, `step_choices`)."""
    return nest.var if len(nest.bounds) == 1 else fn.name("step", key=(id(nest),))


def step_head(fn: LoopFunction, nest: Nest, ex: PyExpr, backward: bool = False) -> str:
    """What `for` runs over for the nest's steps (in reverse in `backward`), binding `step_index` too."""
    trip = f"range({', '.join(ex(b) for b in nest.bounds)})"
    if len(nest.bounds) == 1:
        return f"{nest.var} in reversed({trip})" if backward else f"{nest.var} in {trip}"
    pairs = f"enumerate({trip})"
    return f"{step_index(fn, nest)}, {nest.var} in " + (f"reversed(list({pairs}))" if backward else pairs)


def number_record(fn: LoopFunction, nest: Nest, number: str) -> str:
    """The list of `number`'s value at the start of each outer step."""
    return fn.name(f"{number}_at", key=(id(nest),))


def number_rows(fn: LoopFunction, loop: Loop, number: str) -> str:
    """The list, by outer step, of the lists of `number`'s value at the start of each step of `loop`."""
    return fn.name(f"{number}_rows", key=(id(loop),))


def replay(fn: LoopFunction, nest: Nest, ex: PyExpr) -> list[str]:
    """The nest's numbers run again (a Python loop over ints) in backward's prelude, recording the carried
    ones at the start of each outer step and of each step of its loops (`number_record`, `number_rows`)."""
    lines = [f"{new} = {start}" for new, start in nest.number_starts.items()]
    records = {c: number_record(fn, nest, c) for c in nest.carried_numbers}
    inner = [loop for loop in nest.loops() if loop.carried_numbers]
    lines += [f"{r} = []" for r in records.values()]
    lines += [f"{number_rows(fn, loop, c)} = []" for loop in inner for c in loop.carried_numbers]
    left = left_by_loops(nest)
    lines += [f"{after_record(fn, nest, k, c)} = []" for k, numbers in left.items() for c in numbers]
    body = [f"{r}.append({c})" for c, r in records.items()]
    body += [f"{n} = {ex(e)}" for n, e in nest.numbers]
    for k, loop in enumerate(nest.segments):
        if not isinstance(loop, Loop):
            continue
        rows = {c: fn.number_record(loop, c) for c in loop.carried_numbers}
        body += [f"{r} = []" for r in rows.values()]
        steps = [f"{r}.append({c})" for c, r in rows.items()] + [f"{n} = {ex(e)}" for n, e in loop.numbers]
        body += [f"for {loop.var} in {fn.trip(loop, ex)}:", *("    " + line for line in steps or ["pass"])]
        body += [f"{number_rows(fn, loop, c)}.append({r})" for c, r in rows.items()]
        body += [f"{after_record(fn, nest, k, c)}.append({c})" for c in left.get(k, [])]
    head = f"for {step_head(fn, nest, ex)}:  # the loop's numbers again"
    return lines + [head, *("    " + line for line in body or ["pass"])]


def segment_reads(seg) -> set[str]:
    """The names a segment of a nest's body reads (its steps', its numbers', its count's, its condition's)."""
    exprs: list[N.Node] = []
    if isinstance(seg, Straight):
        exprs += [s.expr for s in seg.tape.steps] + [e for _, e in seg.tape.numbers]
    elif isinstance(seg, Choice):
        exprs += [seg.cond] + [s.expr for tape in seg.sides() for s in tape.steps]
    elif isinstance(seg, Loop):
        exprs += [*seg.bounds, *(e for _, e in seg.numbers), *(s.expr for s in seg.tape.steps)]
        exprs += [s.expr for s in seg.picks.values()]
    return {n.id for e in exprs for n in walk(e) if isinstance(n, N.Name)}


def left_by_loops(nest: Nest) -> dict[int, list[str]]:
    """By index of a loop in the nest's body: the numbers it binds that a later segment of the body reads
    (backward runs the segments in reverse: it binds each as the loop left it, `after_record`)."""
    out: dict[int, list[str]] = {}
    for k, seg in enumerate(nest.segments):
        if isinstance(seg, Loop):
            later = set().union(*(segment_reads(s) for s in nest.segments[k + 1 :]))
            left = [n for n in dict.fromkeys(n for n, _ in seg.numbers) if n in later]
            if left:
                out[k] = left
    return out


def after_record(fn: LoopFunction, nest: Nest, index: int, number: str) -> str:
    """The list, by outer step, of `number`'s value after the loop at `index` of the nest's body."""
    return fn.name(f"{number}_after", key=(id(nest.segments[index]),))


def rebound_before(fn: LoopFunction, nest: Nest, index: int, of: N.Node | None = None) -> list[str]:
    """Backward's lines before the segment at `index` of a nest's body (or `of`, an expression in it): each
    number it reads that a loop before it binds, as the last such loop left it at this outer step."""
    reads = segment_reads(nest.segments[index]) if of is None else {n.id for n in walk(of) if isinstance(n, N.Name)}
    lines: list[str] = []
    done: set[str] = set()
    for k, left in sorted(left_by_loops(nest).items(), reverse=True):
        if k < index:
            lines += [
                f"{c} = {after_record(fn, nest, k, c)}[{step_index(fn, nest)}]" for c in left if c in reads - done
            ]
            done |= set(left)
    return lines


def recorded(fn: LoopFunction, nest: Nest, names: dict[str, str] | None = None) -> list[str]:
    """The head of a backward step of the nest: its carried numbers as the step started with them (by their
    `names` there, `step_spelling`), and its loops' records of this step."""
    spelt_as = names or {}
    lines = [
        f"{spelt_as.get(c, c)} = {number_record(fn, nest, c)}[{step_index(fn, nest)}]" for c in nest.carried_numbers
    ]
    return lines + [
        f"{fn.number_record(loop, c)} = {number_rows(fn, loop, c)}[{step_index(fn, nest)}]"
        for loop in nest.loops()
        for c in loop.carried_numbers
    ]


def key(fn: LoopFunction, nest: Nest) -> int:
    """Where `Reads.per_step` keeps what backward reads of a nest's body per step (the loops' keys are 0 on)."""
    return -1 - nests(fn.plan.segments).index(nest)


def choice_key(fn: LoopFunction, nest: Nest, index: int) -> int:
    """The key of the `Choice` at `index` of a nest's body among the Function's `if`s (those of the
    forward's segments are their indices): after every segment's, by nest and index."""
    return len(fn.plan.segments) * (2 + fn.plan.segments.index(nest)) + index


def choices(segments) -> list[Choice]:
    """The `if`s of their own of the forward, those of a nest's body too."""
    out: list[Choice] = []
    for seg in segments:
        out += choices(seg.segments) if isinstance(seg, Nest) else [seg] if isinstance(seg, Choice) else []
    return out


def body_extra(fn: LoopFunction, nest: Nest, per_step: dict[int, set[str]]) -> list[str]:
    """The body's values its backward reads (one per outer step), in the order forward computes them: not a
    carried value read back from what its update views (`previous_update`)."""
    read = per_step.get(key(fn, nest), set())
    rest = fn.extra_outputs(read, per_step, nest.segments)
    ends = inner_ends(fn, nest, rest)
    rest = [v for v in rest if v not in ends]
    moved = {c for c in nest.carried if previous_update(fn, nest, c, rest, per_step) is not None}
    moved |= set(ragged_steps.read_back(fn, nest, rest))  # (read back from a ragged loop's stack)
    return [c for c in nest.carried if c in read and c not in moved] + rest


def inner_ends(fn: LoopFunction, nest: Nest, kept: list[str]) -> dict[str, tuple[str, str]]:
    """The carried values of the body's loops that `kept` (the body's values kept per step) holds, whose last
    value is the last row of their loop's steps kept per step (`g1` of `for t { g = tanh(g @ u) }`, in
    `g3_steps`), by that stack and the value the loop starts from: not kept per outer step, read back at each
    as the stack's last row, or as the start where the loop ran no steps (`end_lines`). The start is one
    `kept` holds (bound before) or a value from before the nest; the loop's count is one the outer step does
    not change, so its stack is None at every outer step or at none."""
    out: dict[str, tuple[str, str]] = {}
    bound = nest.values() | {nest.var, *(n for n, _ in nest.numbers), *nest.number_starts, *nest.carried_numbers}
    for v, start, steps in _stacked_carried(fn, nest, kept):
        if start in bound and (start not in kept or start in nest.carried or maybe_none(fn, nest, start)):
            continue
        out[v] = (steps, start)
    return out


def _stacked_carried(fn: LoopFunction, nest: Nest, kept: list[str]):
    """Each carried value of the body's loops of a count the outer step does not change that `kept` holds
    (not for its shape alone), its start, and the stack of its loop's steps that `kept` holds too (its update
    a step of the loop, of the value's shape at every step): what `inner_ends` and `kept_where_none` read
    back from that stack."""
    shaped = fn.step_shapes.get(key(fn, nest), set())
    for loop in (seg for seg in nest.segments if isinstance(seg, Loop)):
        if not _count_steady(nest, loop):
            continue
        k = fn.loops.index(loop)
        for v, start in loop.carried.items():
            step = loop.updates.get(v)
            if v not in kept or v in shaped or step is None or not any(s.var == step for s in loop.tape.steps):
                continue
            if fn.stacked(step) not in kept or step in fn.step_shapes.get(k, set()):
                continue
            if fn.first_broadcast(loop, v) is None:
                yield v, start, fn.stacked(step)


def kept_where_none(fn: LoopFunction, nest: Nest, kept: list[str]) -> dict[str, str]:
    """The carried values of the body's loops that `kept` (the body's values kept per step) holds, that
    `inner_ends` leaves kept because their loop starts from a carried value of the nest (`h2` of a loop
    starting from `h`, whose value a later loop starts from): by the stack of their loop's steps. Such a loop's
    count is one the outer step does not change: forward keeps the value per outer step only where the loop
    ran no steps (the stack over the outer steps is None where it ran some), and backward reads it as its
    loop's last step elsewhere, as autograd keeps that step's value only."""
    return {v: steps for v, start, steps in _stacked_carried(fn, nest, kept) if start in nest.carried}


def where_none_lines(w: BackwardWriter, nest: Nest, where_none: dict[str, str]) -> list[str]:
    """Backward's lines binding each value `kept_where_none` at the head of a step: its loop's last step at
    this outer step, or its row where the loop ran none (bound after the stacks of the steps)."""
    k = step_index(w.fn, nest)
    return [
        f"{spelt(w, v)} = {steps}[-1] if {steps} is not None else None if {layers(w.fn, v)} is None else"
        f" {layers(w.fn, v)}[{k}]"
        for v, steps in where_none.items()
    ]


def kept_where_steps(fn: LoopFunction, nest: Nest, kept: list[str]) -> dict[str, tuple[str, str]]:
    """The carried values of the body's loops that `kept` (the body's values kept per step) holds, left by a
    loop whose last value is in no stack (`h4` of a loop whose steps keep `h4_steps` before each step), that
    starts from a value backward binds before them (one `kept_where_none`):
    by a stack of their loop's steps (None where it ran none) and that start. Such a loop's count is one the
    outer step does not change: forward keeps the value per outer step only where the loop ran steps (the
    stack over the outer steps is None where it ran none), and backward reads it as its start elsewhere, as
    autograd keeps nothing of a copy (`where_steps_lines`)."""
    out: dict[str, tuple[str, str]] = {}
    shaped = stacked_shapes(fn, nest)
    where_none = kept_where_none(fn, nest, kept)
    special = {*from_step_one(fn, nest, kept), *nest.carried, *where_none}
    for loop in (seg for seg in nest.segments if isinstance(seg, Loop)):
        if not _count_steady(nest, loop) or loop in ragged_steps.ragged_loops(nest):
            continue
        stacks = [fn.stacked(v) for v in [*loop.carried, *_vars(loop)]]
        ran = next((st for st in stacks if st in kept and st not in shaped), None)
        if ran is None:
            continue
        for v, start in loop.carried.items():
            if v not in kept or v in shaped | special or maybe_none(fn, nest, v):
                continue
            if start in where_none:  # (one kept as it is may be saved only where a step runs: `saved_in_steps`)
                out[v] = (ran, start)
    return out


def where_steps_lines(w: BackwardWriter, nest: Nest, where_steps: dict[str, tuple[str, str]]) -> list[str]:
    """Backward's lines binding each value `kept_where_steps` at the head of a step (after the values
    `kept_where_none`): its row where its loop ran steps, else its start."""
    k = step_index(w.fn, nest)
    return [
        f"{spelt(w, v)} = {spelt(w, start)} if {layers(w.fn, v)} is None else {layers(w.fn, v)}[{k}]"
        for v, (_, start) in where_steps.items()
    ]


def kept_before(fn: LoopFunction, nest: Nest, value: str, kept: list[str]) -> str:
    """`value`, one of `kept` (the body's values kept per step), at the outer step before this one (k > 0), as
    backward reads it back from what holds it: its row, or where it is kept only where its loop ran steps
    (`kept_where_steps`) and that loop ran none, its start at that step; one `kept_where_none`, its loop's
    last step there, where it ran some."""
    k = step_index(fn, nest)
    where_none = kept_where_none(fn, nest, kept)
    if value in where_none:
        steps = layers(fn, where_none[value])
        return f"({steps}[{k} - 1][-1] if {steps} is not None else {layers(fn, value)}[{k} - 1])"
    where_steps = kept_where_steps(fn, nest, kept)
    if value in where_steps:
        start = kept_before(fn, nest, where_steps[value][1], kept)
        return f"({layers(fn, value)}[{k} - 1] if {layers(fn, value)} is not None else {start})"
    return f"{layers(fn, value)}[{k} - 1]"


def end_lines(w: BackwardWriter, nest: Nest) -> list[str]:
    """Backward's lines binding each of the body's loops' carried values not kept per outer step
    (`inner_ends`) at the head of a step: its loop's last step at this outer step, or its start."""
    lines = []
    rest = w.fn.extra_outputs(w.per_step.get(key(w.fn, nest), set()), w.per_step, nest.segments)
    for v, (steps, start) in inner_ends(w.fn, nest, rest).items():
        w.read(B.name(start))
        lines.append(f"{v} = {steps}[-1] if {steps} is not None else {w.ex(B.name(start))}")
    return lines


def previous_update(
    fn: LoopFunction, nest: Nest, carried: str, kept: list[str], per_step: dict[int, set[str]]
) -> tuple[str, Join | Loop | None] | None:
    """Where the carried value `carried` at outer step k > 0 is read back from (its start at 0), as
    `LoopFunction.previous_step` reads a loop's: the stack over the outer steps (of `kept`, the body's values
    kept per step) that holds its update at step k - 1, the body's value itself or the buffer of the loop whose
    join it is (`stack(outputs)` of an RNN's layer, a view of the buffer: with that join, whose dim it moves
    to). None where it is kept one element expanded (only its shape is read) or nothing kept holds it."""
    update = nest.updates.get(carried)
    if update is None or update in nest.carried or carried in fn.step_shapes.get(key(fn, nest), set()):
        return None
    if update in kept and not maybe_none(fn, nest, update):
        return update, None
    for loop in (seg for seg in nest.segments if isinstance(seg, Loop)):
        if loop in ragged_steps.ragged_loops(nest):  # its buffer's rows are not by outer step
            continue
        k = fn.loops.index(loop)
        shaped = fn.step_shapes.get(k, set())
        order = [v for v in fn.per_step_order(loop, per_step.get(k, set())) if v not in shaped | set(loop.carried)]
        buffered = fn.buffered_lists(loop, order)
        for j in loop.joins:
            if j.name == update and j.items in buffered and fn.stacked(buffered[j.items]) in kept:
                return fn.stacked(buffered[j.items]), j
    return last_step(fn, nest, carried, kept)


def last_step(fn: LoopFunction, nest: Nest, carried: str, kept: list[str]) -> tuple[str, Loop] | None:
    """Where the carried value `carried` at outer step k > 0 is read back from when the body's last change of
    it is a loop of its own (`for t { h = tanh(h @ w + x[t]) }`), of a count the outer step does not change,
    keeping every step's next value (`h2_steps`): the last step's value at step k - 1 of that stack over the
    outer steps, or where the loop runs no steps (then at no outer step), the value it starts from: `carried`
    itself (which then never changes: its start), a value kept per step (an `if`'s, at step k - 1), or the
    value a loop before it leaves (`loop_chain`). None where there is no such loop."""
    chain = loop_chain(fn, nest, carried, kept)
    return None if chain is None else chain[0][0]


def loop_chain(
    fn: LoopFunction, nest: Nest, carried: str, kept: list[str]
) -> tuple[list[tuple[str, Loop]], str] | None:
    """The loops in a row of the body that carry `carried` through to its update (the last first, each by the
    stack over its steps of its carried value's next value: `last_step`'s), the first starting from `carried`
    or a value of `kept` (the body's values kept per step), and that value. Each loop's count is one the outer
    step does not change (`_count_steady`), so each runs steps at every outer step or at none; where a loop
    runs none, its carried value is the value the loop before it left (`chain_start`): not kept per step."""
    value = nest.updates.get(carried)
    chain: list[tuple[str, Loop]] = []
    for loop in reversed([seg for seg in nest.segments if isinstance(seg, Loop)]):
        if value not in loop.carried:
            continue
        step = loop.updates.get(value)
        k = fn.loops.index(loop)
        if step is None or not any(s.var == step for s in loop.tape.steps) or fn.stacked(step) not in kept:
            return None
        if step in fn.step_shapes.get(k, set()) or fn.first_broadcast(loop, value) is not None:
            return None
        if not _count_steady(nest, loop):
            return None
        chain.append((fn.stacked(step), loop))
        value = loop.carried[value]
        if value == carried:
            return chain, value
        if value in kept_where_none(fn, nest, kept) or value not in kept and _left_by_a_loop(nest, loop, value):
            continue  # (the value a loop before it leaves)
        if value not in kept or value in nest.carried or maybe_none(fn, nest, value):
            return None
        return chain, value
    return None


def chain_reads(fn: LoopFunction, nest: Nest, carried: str, kept: list[str]) -> set[str]:
    """The value of `kept` that `chain_start` reads at the step after where no loop of `carried`'s
    `loop_chain` runs steps (the first loop's start, kept per step): saved whatever the steps run."""
    chain = loop_chain(fn, nest, carried, kept)
    return set() if chain is None or chain[1] == carried else {chain[1]}


def _left_by_a_loop(nest: Nest, loop: Loop, value: str) -> bool:
    """Whether `value` is the carried value of a loop of the nest's body before `loop`."""
    return any(value in seg.carried for seg in nest.segments[: nest.segments.index(loop)] if isinstance(seg, Loop))


def _count_steady(nest: Nest, loop: Loop) -> bool:
    """Whether `loop`, a loop of the nest's body, runs as many steps at every outer step: its count reads no
    number that may differ from one outer step to the next (the outer loop's variable, a number it carries,
    one a loop of the body binds, or one computed from such: not `t_at = min(1, T)` of a split loop)."""
    varying = {nest.var, *nest.carried_numbers}
    for inner in nest.loops():
        varying |= {inner.var, *(n for n, _ in inner.numbers), *inner.carried_numbers}
    for _ in range(len(nest.numbers) + 1):
        varying |= {n for n, e in nest.numbers if {m.id for m in walk(e) if isinstance(m, N.Name)} & varying}
    return not {n.id for e in loop.bounds for n in walk(e) if isinstance(n, N.Name)} & varying


def chain_start(w: BackwardWriter, nest: Nest, carried: str, kept: list[str], start: str) -> str:
    """The carried value `carried` at outer step k where the last loop of its `loop_chain` ran no steps: the
    last step's value at step k - 1 of the latest loop before it in the chain that runs steps, else the
    value the first loop starts from (at step k - 1 where it is one kept per step; else `start`, `carried`'s
    at step k, which it is at every step as no loop changes it)."""
    chain = loop_chain(w.fn, nest, carried, kept)
    assert chain is not None
    loops_, first = chain
    k = step_index(w.fn, nest)
    value = start if first == carried else f"{kept_before(w.fn, nest, first, kept)} if {k} > 0 else {start}"
    for steps, _ in reversed(loops_[1:]):
        value = f"{layers(w.fn, steps)}[{k} - 1][-1] if {k} > 0 and {layers(w.fn, steps)} is not None else {value}"
    return value


def ends_in_layers(fn: LoopFunction, saved: list[str], per_step: dict[int, set[str]]) -> dict[str, str]:
    """The nests' carried values of `saved` whose last value is the last step of an inner loop at the last
    outer step (`last_step`: `h2_steps_layers[-1][-1]`), by that stack over the outer steps (saved too), as
    `LoopFunction.ends_in_buffers` reads a loop's: setup_context saves the value only where that stack is
    None (no outer step, or an inner loop of no steps) and backward reads the row (`end_row`)."""
    from layerdsl.codegen.function_loops import _maybe_unbound

    ends: dict[str, str] = {}
    unbound = _maybe_unbound(fn.plan)
    for nest in nests(fn.plan.segments):
        kept = body_extra(fn, nest, per_step)
        for c, start in nest.carried.items():
            if c not in saved or c in fn.saved_on or start in unbound or c in nest.shapes_checked:
                continue
            source = last_step(fn, nest, c, kept)
            buffer = None if source is None else layers(fn, source[0])
            if buffer is not None and buffer in saved and buffer not in fn.saved_on:
                ends[c] = buffer
    return ends


def end_row(fn: LoopFunction, value: str, buffer: str) -> str:
    """How backward reads the last value of `value` back from `buffer` (`ends_in_buffers`): a loop's carried
    value as its buffer's last row, a nest's as the last row of its inner loop's steps at the last outer
    step (`ends_in_layers`)."""
    carried = {c for nest in nests(fn.plan.segments) for c in nest.carried}
    return f"{buffer}[-1][-1]" if value in carried else f"{buffer}[-1]"


def from_step_one(fn: LoopFunction, nest: Nest, kept: list[str]) -> list[str]:
    """The carried values of `kept` (the body's values kept per step) stacked from outer step 1 on, as a
    loop's are (`LoopFunction.buffer`): step 0's is their start, which backward reads instead of a copy.
    Not one kept one element expanded (only its shape is read: it holds no memory)."""
    shaped = stacked_shapes(fn, nest)
    return [v for v in kept if v in nest.carried and v not in shaped and not maybe_none(fn, nest, v)]


def previous_value(fn: LoopFunction, nest: Nest, source: tuple[str, Join | Loop | None], ex: PyExpr) -> str:
    """The update at the outer step before, from its `previous_update` source (as forward views the buffer;
    a loop's last step, `last_step`)."""
    value, join = source
    at = f"{layers(fn, value)}[{step_index(fn, nest)} - 1]"
    if isinstance(join, Loop):
        return f"{at}[-1]"
    dim = "0" if join is None else ex(join.dim)
    return at if dim == "0" else f"torch.movedim({at}, 0, {dim})"


def layers(fn: LoopFunction, value: str) -> str:
    """The stack of `value` over the outer steps."""
    return fn.name(f"{value}_layers")


def second_results(fn: LoopFunction, nest: Nest) -> list[str]:
    """The stacks over the outer steps of a kernel's second results in `nest`'s body (group norm's `mean`,
    `rstd`; kept per step of its loops too, or on a side of its `if`s: a loop choosing a side per step): not differentiable, as a loop's are (double backward would
    otherwise go through `native_layer_norm_backward`'s mean, which has no derivative)."""
    from layerdsl.codegen.function_loops import _kept

    straight = [s.var for seg in nest.segments if isinstance(seg, Straight) for s in seg.tape.steps if _kept(s)]
    straight += [
        s.var for seg in nest.segments if isinstance(seg, Choice) for t in seg.sides() for s in t.steps if _kept(s)
    ]
    looped = [fn.stacked(s.var) for loop in nest.loops() for s in loop.tape.steps if _kept(s)]
    return [layers(fn, v) for v in straight + looped]


def shapes_per_step(fn: LoopFunction, reads: Reads, per_step: dict[int, set[str]], text: str) -> dict[int, set[str]]:
    """The values of each nest's straight segments, those it carries, those its loops leave and their joins
    (`stack(outs)`), kept per outer step, that backward (`text`) reads only for their shape (`sum_to_size(mm.shape)` in the gradient of `mm + b`, `select_backward(g, gi.shape, 0, t)`),
    by `key`: each step keeps one element expanded to the value's shape (`stacked_shapes`)."""
    from layerdsl.codegen.function_loops import _kept, _read_as_value

    out: dict[int, set[str]] = {}
    for nest in nests(fn.plan.segments):
        at = key(fn, nest)
        items = [*nest.appended.values(), *(i for more in nest.more.values() for i in more)]
        listed = {n.id for item in items for n in walk(item) if isinstance(n, N.Name)}
        shaped = {s.var for s in _straight_or_side_steps(nest) if s.var in per_step.get(at, set()) and not _kept(s)}
        shaped -= reads.by_value.get(at, set())
        # a carried value is bound per step under its own name only: the text tells whether it is read
        carried = [*nest.carried, *(c for loop in nest.loops() for c in loop.carried)]
        shaped |= {c for c in carried if c in per_step.get(at, set())}
        # a join of its loops' lists (`stack(outs)` read only for the shape of `sum`'s gradient)
        joined = {j.name for loop in nest.loops() for j in loop.joins}
        shaped |= {v for v in joined if v in per_step.get(at, set())} - reads.by_value.get(at, set())
        shaped -= set(nest.updates.values()) | listed
        spelt_as = {c: step_name(fn, nest, c) for c in nest.carried}  # (`step_spelling`)
        out[at] = {v for v in shaped if not any(_read_as_value(n, text) for n in {v, spelt_as.get(v, v)})}
    return out


def _straight_or_side_steps(nest: Nest) -> list[Step]:
    """The steps of the nest's straight segments and of the sides of its choices per step (kept in rows for the
    steps that ran the side, `side_rows`: a row read only for its shape holds one element expanded too)."""
    out: list[Step] = []
    for seg in nest.segments:
        if isinstance(seg, Straight):
            out += seg.tape.steps
        elif isinstance(seg, Choice) and (seg.per_step or _on_step(nest, seg)):
            out += [s for tape in seg.sides() for s in tape.steps]
    return out


def row_append(fn: LoopFunction, nest: Nest, v: str) -> str:
    """Forward's line appending `v`'s row where its side runs (`side_rows`): one element expanded to its shape
    where backward reads only that (`shapes_per_step`)."""
    if v in fn.step_shapes.get(key(fn, nest), set()):
        return f"{layers(fn, v)}.append({v}.new_zeros(()).expand({v}.shape))  # only its shape is read"
    return f"{layers(fn, v)}.append({v})"


def stacked_shapes(fn: LoopFunction, nest: Nest) -> set[str]:
    """The values kept per outer step whose shape alone backward reads: the body's (`shapes_per_step`) and
    its loops' stacks of such values (already one element expanded): their stacks over the outer steps hold
    one element too."""
    out = set(fn.step_shapes.get(key(fn, nest), set()))
    for loop in nest.loops():
        out |= {fn.stacked(v) for v in fn.step_shapes.get(fn.loops.index(loop), set())}
    return out


def placeholders(fn: LoopFunction) -> set[str]:
    """The nests' stacks over the outer steps of values read only for their shape (`stacked_shapes`): one
    element expanded, whose shape setup_context keeps rather than save it (`LoopFunction.placeholders`)."""
    out: set[str] = set()
    for nest in nests(fn.plan.segments):
        shaped = stacked_shapes(fn, nest)
        out |= {layers(fn, v) for v in body_extra(fn, nest, fn.kept_per_step) if v in shaped}
    return out


def maybe_none(fn: LoopFunction, nest: Nest, value: str) -> bool:
    """Whether a step may leave `value` None: a loop's stack (no steps), a value of its first step, or one of
    a side of an `if` of its own (the other side ran)."""
    for seg in nest.segments:
        if isinstance(seg, Choice) and value in seg.merged and UNBOUND not in seg.merged[value]:
            return False  # both sides bind it (`step_choices.merged_as_own`)
        if isinstance(seg, Choice) and value in {s.var for tape in seg.sides() for s in tape.steps}:
            return True
        if isinstance(seg, Choice) and UNBOUND in seg.merged.get(value, ()):
            return True
    for loop in nest.loops():
        if value in {fn.first(v) for v in fn.widenable(loop, fn.per_step_order(loop, set(loop.carried) | _vars(loop)))}:
            return True
        if value in {fn.stacked(v) for v in set(loop.carried) | _vars(loop)}:
            return True
    return False


def _vars(loop: Loop) -> set[str]:
    return {s.var for s in loop.tape.steps}


def extra_outputs(fn: LoopFunction, nest: Nest, once: set[str], per_step: dict[int, set[str]]) -> list[str]:
    out = [layers(fn, v) for v in body_extra(fn, nest, per_step)]
    out += [c for c in nest.carried if c in once]
    return out + [j.name for j in nest.joins if j.name in once]


def forward(fn: LoopFunction, nest: Nest, per_step: dict[int, set[str]], ex: PyExpr) -> list[str]:
    lines = [f"{c} = {fn.not_an_input(start)}" for c, start in nest.carried.items()]
    lines += [f"{new} = {start}" for new, start in nest.number_starts.items()]  # as a loop of no steps leaves it
    kept = body_extra(fn, nest, per_step)
    lines += [f"{layers(fn, v)} = []" for v in kept]
    lines += [f"{name} = [{', '.join(nest.heads.get(name, []))}]" for name in nest.appended if name not in nest.before]
    rows = side_rows(fn, nest, kept)
    lazy = step_rows.lazy_updates(fn, nest, kept, rows)
    lines += step_rows.initially(fn, lazy)
    merged = merged_rows(fn, nest, kept)
    body = [f"{n} = {ex(e)}" for n, e in nest.numbers]
    for seg in nest.segments:
        if isinstance(seg, Straight):
            body += fn.steps(seg.tape, ex)
        elif isinstance(seg, Choice):  # (a side's rows appended where it runs, `side_rows`)
            appends = [
                [row_append(fn, nest, v) for v, (c, side) in rows.items() if c is seg and side == k]
                + step_rows.forward_side(fn, nest, lazy, seg, k)
                + merged_side_lines(fn, merged, seg, k)
                for k in (0, 1)
            ]
            body += fn.forward_choice(seg, set(kept), ex, (appends[0], appends[1]))
        elif isinstance(seg, Loop):
            body += fn.forward_loop(seg, per_step.get(fn.loops.index(seg), set()), ex)
    shaped, later = stacked_shapes(fn, nest), from_step_one(fn, nest, kept)
    starts = ragged_steps.gated_starts(fn, nest, kept)
    where_none = kept_where_none(fn, nest, kept)
    where_steps = kept_where_steps(fn, nest, kept)
    body += [
        (
            f"{layers(fn, v)}.append({v}.new_zeros(()).expand({v}.shape))  # only its shape is read"
            if v in fn.step_shapes.get(key(fn, nest), set())
            else (
                f"{layers(fn, v)}.append({v} if {where_none[v]} is None else None)  # (its loop's last step)"
                if v in where_none
                else (
                    f"{layers(fn, v)}.append(None if {where_steps[v][0]} is None else {v})  # (else its start)"
                    if v in where_steps
                    else f"{layers(fn, v)}.append({v})"
                )
            )
        )
        for v in kept
        if v not in later and v not in rows and v not in lazy and v not in starts and v not in merged
    ]
    for v in merged:  # (its side's steps, and those whose loops ran none: `merged_rows`)
        body += [f"if {merged_kept(fn, nest, v, kept)}:", f"    {layers(fn, v)}.append({v})"]
    # a side's value, kept for the steps that ran the side only (`step_choices`)

    gated = ragged_steps.gated(fn, nest, kept)
    appended = [f"{layers(fn, v)}.append({v})" for v in later if v not in lazy and v not in gated]
    body += (
        [f"if {step_index(fn, nest)} > 0:  # step 0's is its start", *("    " + line for line in appended)]
        if appended
        else []
    )
    body += ragged_steps.gated_appends(fn, nest, gated | starts, ex)
    body += [
        f"{name}.append({ex(item)})"
        for name, first in nest.appended.items()
        for item in [first, *nest.more.get(name, [])]
    ]
    for c, local in nest.shapes_checked.items():  # the steps' values are stacked: one shape at every step
        new = nest.updates[c]
        message = (
            f"{fn.layer.name}: under @function, each step of the loop keeps the shape of '{local}' (a derived"
            f" backward stacks the steps' values): {{tuple({c}.shape)}} became {{tuple({new}.shape)}}"
        )
        body += [f"if {new}.shape != {c}.shape:", f'    raise ValueError(f"{message}")']
    moved = [(c, v) for c, v in nest.updates.items() if c != v]
    if moved:
        body.append(f"{', '.join(c for c, _ in moved)} = {', '.join(v for _, v in moved)}")
    lines += [f"{ragged_steps.ran(fn, v)} = False" for v in gated]
    lines += with_spec_line([f"for {step_head(fn, nest, ex)}:"], 0, fn.e.spec_path, nest.span.line)
    lines += ["    " + line for line in body]
    ragged = ragged_steps.ragged_stacks(fn, nest, kept)
    for v in kept:  # a loop of no steps keeps nothing (and a step's value may be None: so at every step)
        listed = layers(fn, v)
        if v in ragged:  # of a different length at each outer step: joined end to end
            lines += ragged_steps.joined(listed, v in shaped)
            continue
        none = maybe_none(fn, nest, v) or v in where_none or v in where_steps
        test = f"{listed} and {listed}[0] is not None" if none else listed
        if v in shaped:  # one element expanded: the outer steps' dim is one more
            whole = f"{listed}[0].expand(len({listed}), *{listed}[0].shape)"
            lines.append(f"{listed} = {whole} if {test} else None  # only its shape is read")
        else:
            lines.append(f"{listed} = torch.stack({listed}) if {test} else None")
    for j in nest.joins:
        lines += item_check_lines(j, len(nest.heads.get(j.items, [])), None, fn.layer, fn.e.spec_path)
        lines.append(f"{j.name} = torch.{j.func}({j.items}, dim={ex(j.dim)})")
    return lines


def backward(w: BackwardWriter, nest: Nest) -> list[str]:
    """The nest's backward: its body's, for each outer step in reverse."""
    fn = w.fn
    lines: list[str] = []
    if w.mode != "main":
        for c in nest.carried:
            if c in w.once and c not in fn.outputs:
                lines += w.accumulate(c, fn.grad_out(c), conditional=False)
        for j in nest.joins:
            if j.name in w.once and j.name not in fn.outputs:
                lines += w.accumulate(j.name, fn.grad_out(j.name), conditional=False)
    requiring = [c for c in nest.carried if c in w.plan.requires]
    for c in requiring:
        st = w.state.get(w.acc(c))
        if st != "set":  # nothing after the loop reads it: zeros to start
            g, zeros = w.acc(c), _last_zeros(w, nest, c)
            lines.append(f"{g} = {zeros}" if st is None else f"{g} = {zeros} if {g} is None else {g}")
            w.state[g] = "set"
    parts: dict[str, list[Join]] = {}  # list -> the joins of it whose gradients give its items' (heads' first)
    for j in nest.later_joins:  # a later loop's join of a list this one appends to first: cut there
        if w.state.get(w.acc(j.name)) is not None:
            parts.setdefault(j.items, []).append(j)
    for j in nest.joins:
        if w.state.get(w.acc(j.name)) is None:
            continue
        if w.state[w.acc(j.name)] == "maybe":
            w.read(B.name(j.name))
            g = w.acc(j.name)
            lines.append(f"{g} = torch.zeros_like({j.name}) if {g} is None else {g}")
            w.state[g] = "set"
        parts.setdefault(j.items, []).append(j)
        cut_at = fn.name(f"grad_{j.name}_parts")
        # cat(): one part per outer step (a cat of a list with heads or several items per step is refused,
        # `loops.Planner.cat_of_steps`)
        count = f"len(range({', '.join(w.ex(b) for b in nest.bounds)}))"
        cut = f"unbind({w.ex(j.dim)})" if j.func == "stack" else f"tensor_split({count}, {w.ex(j.dim)})"
        lines.append(f"{cut_at} = {w.acc(j.name)}.{cut}")
        for i, head in enumerate(j.heads):
            if head in w.plan.requires:
                lines += w.accumulate(head, f"{cut_at}[{i}]", conditional=False)
    # what the body accumulates into from outside it: None until a step gives it (there may be none)
    inside = nest.values()
    # a carried value whose shape a segment after the loop reads (a side of an `if` of its own): its last
    # value, saved as it is (the body binds the name to each step's)
    read_after = w.reads.shapes & set(nest.carried)
    for tape in nest.tapes():
        for leaf in tape.leaves:
            if leaf not in inside and w.state.get(w.acc(leaf)) is None:
                w.state[w.acc(leaf)] = "maybe"
                w.maybe_none.add(w.acc(leaf))
    kept = body_extra(fn, nest, w.per_step)
    rows = side_rows(fn, nest, kept)
    lazy = step_rows.lazy_updates(fn, nest, kept, rows)
    lazily = {v.carried for v in lazy.values()}
    after_nest = w.ex, w.spelling
    step_spelling(w, nest)
    body = recorded(fn, nest, w.spelling.names) + [f"{spelt(w, n)} = {w.ex(e)}" for n, e in nest.numbers]
    later = from_step_one(fn, nest, kept)
    # None where no step runs (one stacked from step 1 on: read back, `_read_back`)
    in_steps = {v for v in kept if layers(fn, v) in fn.saved_in_steps} - set(later)
    gated_starts = ragged_steps.gated_starts(fn, nest, kept)  # (bound where its loop runs: `ragged_steps`)
    where_none = kept_where_none(fn, nest, kept)
    where_steps = kept_where_steps(fn, nest, kept)
    merged = merged_rows(fn, nest, kept)
    body += [
        f"{spelt(w, v)} = {layers(fn, v)}[{step_index(fn, nest)}]"
        for v in kept
        if not maybe_none(fn, nest, v)
        and v not in later | rows.keys() | lazy.keys() | in_steps | gated_starts.keys() | where_none.keys()
        and v not in merged | where_steps.keys()
    ]
    ragged = ragged_steps.ragged_stacks(fn, nest, kept)
    body += [
        f"{spelt(w, v)} = None if {layers(fn, v)} is None else {layers(fn, v)}[{step_index(fn, nest)}]"
        for v in kept
        if (maybe_none(fn, nest, v) or v in in_steps)
        and v not in rows
        and v not in ragged | gated_starts.keys() | where_none.keys() | where_steps.keys()
    ]
    body += ragged_steps.step_lines(w, nest, kept)
    body += where_none_lines(w, nest, where_none)
    body += where_steps_lines(w, nest, where_steps)
    outer_once = w.once
    if w.mode != "main":  # each step's share of the extra outputs' gradients
        for v in kept:
            if v in rows or v in lazy or v in merged:  # read where its side runs (`rows_read`, `step_rows`)
                continue
            given = fn.grad_out(layers(fn, v))
            step = f"{given}[{step_index(fn, nest)}]"
            if v in ragged or v in ragged_steps.gated(fn, nest, kept) or v in gated_starts:  # its rows here
                body.append(ragged_steps.grad_out_line(w, nest, v, given))
                continue
            if v in later:  # step 0's value is the start, given no gradient of its own
                start = _given_start_zeros(w, nest.carried[v])
                step = f"{given}[{step_index(fn, nest)} - 1] if {step_index(fn, nest)} > 0 else {start}"
            if v in where_none or v in where_steps:  # none where its loop ran steps (none): given its row's
                step = f"0 if {given} is None else {step}"
            body.append(
                f"{fn.grad_out(v)} = " + (f"None if {given} is None else {step}" if maybe_none(fn, nest, v) else step)
            )
        w.once = w.once | set(kept)
    carried_grads = {c: w.state[w.acc(c)] for c in requiring}
    for c in requiring:  # the carried value's gradient is its next value's, at this step
        body += w.accumulate(nest.updates[c], w.acc(c), conditional=carried_grads[c] == "maybe")
    for name, first in nest.appended.items():
        items = [first, *nest.more.get(name, [])]  # `per` of them each step, after the heads
        for i, item in enumerate(items if name in parts else []):
            at = f"{len(items)} * {step_index(fn, nest)}" if len(items) > 1 else step_index(fn, nest)
            at = f"{at} + {i + len(nest.heads.get(name, []))}" if i + len(nest.heads.get(name, [])) else at
            assert isinstance(item, N.Name)
            for j in parts[name]:  # after the items of the loops before it (`Nest.before`)
                cut_at = fn.name(f"grad_{j.name}_parts")
                body += w.accumulate(item.id, f"{cut_at}[{w.after_earlier(nest, j, at)}]", conditional=False)
    if requiring:
        body.append(" = ".join(w.acc(c) for c in requiring) + " = None")
    for c in requiring:
        del w.state[w.acc(c)]
        # its value at the step, kept and returned: that extra output's gradient (not a value of the same name
        # returned once after the loop, whose gradient the loop's start took)
        if c in kept and c not in lazy and w.mode != "main":
            body += w.accumulate(c, fn.grad_out(c), conditional=False)
    # views of the inputs and parameters (`transpose(w_l[k], 0, 1)`): recomputed at each step, not kept
    # `x[t]`: a row of x's gradient per step; read by value, picked again from x at the step's top, as a view
    picks = step_picks.step_picks(nest, set(w.plan.leaves), w.plan.shapes)
    located = _leaf_views(nest, set(w.plan.leaves)) | picks
    views = {v: step for v, (step, _) in located.items()}
    w.view_loops |= step_picks.read_in_steps(w, nest, picks)
    w.views.update(views)
    w.kept_whole |= set(views)
    # a slice of a carried value whose size varies per step (`choice_slices`): computed again, after it is read
    again = choice_slices.carried_views(nest, w.plan.shapes, set(w.plan.leaves))
    w.views.update(again)
    w.kept_whole |= set(again)
    on_sides = side_views(w, nest)  # (computed again at the start of their side: `BackwardWriter.side_again`)
    # what the body reads, by step (the values after the loop are read as themselves, outside it)
    once, current = w.reads.once, w.current
    w.reads.once = w.current = set()
    # where the body's values are read by value, by its sides (a read after the loop is not a step's)
    sides_read, w.reads.sides = w.reads.sides, {}
    starts: dict[str, str] = {}
    read_back = _read_back(w, nest, kept, lazily, starts)
    body += list(read_back.values())
    body += end_lines(w, nest)
    body += merged_lines(w, nest, kept)
    again_at = len(body)
    here = fn.plan.segments.index(nest)
    for index, seg in reversed(list(enumerate(nest.segments))):
        body += rebound_before(fn, nest, index)
        if isinstance(seg, Straight):
            body += w.straight(step_picks.picked_out(w, seg, picks), where=f"{here}.{index}")
        elif isinstance(seg, Choice):
            before = (
                rows_read(w, nest, seg, 0, rows) + step_rows.backward_side(w, nest, lazy, seg, 0),
                rows_read(w, nest, seg, 1, rows) + step_rows.backward_side(w, nest, lazy, seg, 1),
            )
            body += w.choice(step_picks.picked_out(w, seg, picks), at=choice_key(fn, nest, index), before=before)
        elif isinstance(seg, Loop):
            body += inner_loop(w, nest, seg)
        w.picked.clear()
        w.current = w.reads.once
    body[again_at:again_at] = choice_slices_again(w, again)
    for v in on_sides:
        del w.views[v]
    w.recomputed -= set(on_sides)
    w.kept_whole -= set(on_sides)
    w.side_views = {}
    picked_rows = step_picks.rows_lists(w, picks)
    appended_rows, every_step = step_picks.step_rows(w, picks, picked_rows)
    body += appended_rows
    for c in requiring:  # every step gives the step before a gradient of its carried value
        if w.state.get(w.acc(c)) != "set":
            g = w.acc(c)
            # read back, of its update's gradient in the double backward (read as a value, it would be kept); in
            # a loop of choices per step, of its update's gradient (`step_rows.chosen_per_step`)
            back = c in read_back and w.mode != "main" or c in lazily or step_rows.chosen_per_step(nest)
            zeros = f"torch.zeros_like({w.acc(nest.updates[c])})" if back else _zeros(w, c)
            body.append(f"{g} = {zeros}" if w.state.get(g) is None else f"{g} = {zeros} if {g} is None else {g}")
            w.state[g] = "set"
    body += step_rows.own_rows_given(w, lazy)
    starts_read(w, starts)
    # a value of the body whose gradient its loops sum (a member read at every step): summed anew each step
    summed = sorted(w.acc(v) for v in inside if w.acc(v) in w.maybe_none and v not in nest.carried)
    segments_at = body.index(" = ".join(w.acc(c) for c in requiring) + " = None") if requiring else len(body)
    body[segments_at + 1 : segments_at + 1] = [" = ".join(summed) + " = None"] if summed else []
    recomputed = [s for v, s in views.items() if v in w.recomputed]
    for v in views:
        del w.views[v]
        w.view_loops.pop(v, None)
    w.recomputed -= set(views)
    w.kept_whole -= set(views)
    top_at = len(recorded(fn, nest)) + len(nest.numbers)
    view_lines: list[str] = []
    rebound = False
    for s in recomputed:  # a view reading a number a loop before it binds: as that loop left it
        prefix = rebound_before(fn, nest, located[s.var][1], s.expr)
        rebound |= bool(prefix)
        view_lines += prefix + step_picks.picked_again(w, nest, picks, s)
    if rebound:  # as the step starts again
        view_lines += recorded(fn, nest, w.spelling.names)[: len(nest.carried_numbers)]
        view_lines += [f"{spelt(w, n)} = {w.ex(e)}" for n, e in nest.numbers]
    body[top_at:top_at] = view_lines
    for v in inside:  # where each value of the body is read by value (`side_rows`)
        fn.step_sides.setdefault(v, set()).update(w.reads.sides.get(v, set()))
    for v, where in w.reads.sides.items():
        sides_read.setdefault(v, set()).update(where)
    w.reads.sides = sides_read
    read = w.reads.once | (w.reads.shapes & inside)
    fn.step_shape_reads |= w.reads.shapes & inside
    w.reads.by_value.setdefault(key(fn, nest), set()).update(w.reads.once & inside)
    w.reads.shapes -= inside
    w.reads.once, w.current = once, current
    once |= (read - inside) | read_after
    w.reads.per_step.setdefault(key(fn, nest), set()).update(read & inside)
    w.once = outer_once
    w.ex, w.spelling = after_nest
    for v in inside:  # the body's values' gradients are the step's own
        if w.acc(v) in w.state and v not in nest.carried:
            del w.state[w.acc(v)]
    head = f"for {step_head(fn, nest, w.ex, backward=True)}:"
    lines += [f"{row_counter(fn, v)} = 0 if {layers(fn, v)} is None else {layers(fn, v)}.shape[0]" for v in rows]
    lines += [
        f"{merged_row_counter(fn, v)} = 0 if {layers(fn, v)} is None else {layers(fn, v)}.shape[0]" for v in merged
    ]
    lines += [f"{r} = []" for pair in picked_rows.values() for r in pair]
    lines += ragged_steps.counters(fn, nest, kept)
    lines += step_rows.backward_start(fn, lazy)
    lines += with_spec_line([head], 0, fn.e.spec_path, nest.span.line)
    lines += ["    " + line for line in body]
    lines += step_picks.joined_rows(w, nest, picks, picked_rows, every_step)
    lines += step_rows.start_rows(w, nest, lazy)
    for c in requiring:  # the gradient of the value the carried one starts as
        if nest.carried[c] in w.plan.requires:
            lines += w.accumulate(nest.carried[c], w.acc(c), conditional=False)
    return lines


def saved_in_steps(fn: LoopFunction, reads: Reads, once: set[str]) -> dict[str, str]:
    """The extra outputs (of `once`) that backward reads by value only in the steps of a nest's loops, by the
    test under which setup_context saves them (`loop_starts.when_a_step_runs`, as for the inputs): a value a
    nest's carried value starts as (`h0 * 1.5`), or the stack over the outer steps of a value of its body
    (`h * 0.5`) that its inner loop starts from, read at its step 0. At an inner loop of no steps autograd
    keeps nothing of them; their extra outputs' zeros are made of their shapes on ctx. Not a value a loop
    carries (saved otherwise, `ends_in_buffers`), one kept as a leaf's, nor a start a carried value is read
    back from at the outer step after (`_read_back`)."""
    if fn.recomputing:
        return {}
    carried = {c for seg in fn.plan.segments if isinstance(seg, (Loop, Nest)) for c in seg.carried}
    read: dict[str, str] = {}  # the stack or value saved -> the value backward reads
    for nest in nests(fn.plan.segments):
        read |= {start: start for start in nest.carried.values()}
        kept = body_extra(fn, nest, fn.kept_per_step)
        rows = side_rows(fn, nest, kept)
        plain = set(kept) - set(nest.carried) - set(from_step_one(fn, nest, kept)) - rows.keys()
        plain -= set(step_rows.lazy_updates(fn, nest, kept, rows)) | stacked_shapes(fn, nest)
        plain -= set(kept_where_steps(fn, nest, kept))
        for c in nest.carried:  # a start a carried value is read back from at the step after (`_read_back`)
            if c not in fn.kept_per_step.get(key(fn, nest), set()) or c in kept:
                continue
            source = previous_update(fn, nest, c, kept, fn.kept_per_step)
            if source is not None and isinstance(source[1], Loop):
                plain.discard(source[1].carried[nest.updates[c]])
                plain -= chain_reads(fn, nest, c, kept)
        read |= {layers(fn, v): v for v in plain if not maybe_none(fn, nest, v)}
        # a carried value stacked from step 1 on, read at an inner loop's step 0 (`_read_back`)
        read |= {layers(fn, c): c for c in from_step_one(fn, nest, kept)}
    out: dict[str, str] = {}
    for saved, value in read.items():
        if saved == value and saved not in once or saved in carried or saved in fn.plan.leaves:
            continue
        if (runs := loop_starts.step_test(value, reads)) is not None:
            out[saved] = runs
    return out


def inner_loop(w: BackwardWriter, nest: Nest, loop: Loop) -> list[str]:
    """The backward of a loop of the nest's body, what its steps read marked as read in that loop's steps
    (`Reads.in_loops`), a step of which runs only where an outer step runs too: setup_context saves a value
    read only there under the test that both loops run a step (`loop_starts.when_a_step_runs`)."""
    k = w.fn.loops.index(loop)
    own, w.own_loop = w.own_loop, k
    lines = w.loop(loop)
    w.own_loop = own
    outer = f"range({', '.join(w.ex(b) for b in nest.bounds)})"
    if loop in ragged_steps.ragged_loops(nest):  # its count read at each outer step
        w.reads.trips[k] = ragged_steps.steps_running(nest, outer, w.reads.trips[k])
    else:
        w.reads.trips[k] = f"{outer} and {w.reads.trips[k]}"  # empty where either is
    return lines


def choice_slices_again(w: BackwardWriter, again: dict[str, Step]) -> list[str]:
    """The lines computing again the slices of `again` (`choice_slices.carried_views`) the step read, once the
    carried values are read back; they leave `w.views`."""
    lines = [line for v, s in again.items() if v in w.recomputed for line in w.fn.steps(Tape([s], [], [], set()), w.ex)]
    for v in again:
        del w.views[v]
    w.recomputed -= set(again)
    w.kept_whole -= set(again)
    return lines


def side_views(w: BackwardWriter, nest: Nest) -> dict[str, Step]:
    """The indexes by a bool mask on the sides of the nest's `Choice`s, and what the sides compute from them
    of varying shape (`choice_slices.side_masks`): views of `w` computed again at the start of their side
    where read (`BackwardWriter.side_again`); all of them."""
    sized = choice_slices.sized_outside_loops(nest, w.plan.shapes)
    by_side = choice_slices.side_masks(nest, sized)
    w.side_views = {(choice_key(w.fn, nest, index), k): chain for (index, k), chain in by_side.items()}
    out = {v: s for chain in by_side.values() for v, s in chain.items()}
    w.views.update(out)
    w.kept_whole |= set(out)
    return out


def side_rows(fn: LoopFunction, nest: Nest, kept: list[str]) -> dict[str, tuple[Choice, int]]:
    """The values of `kept` that backward reads on one side of a choice per step only (`step_choices`): a value
    that side binds and the other not, or one computed before it that no other place reads by value; by the
    choice and the side: kept in rows for the steps that ran that side only."""
    out: dict[str, tuple[Choice, int]] = {}
    updates = set(nest.updates.values()) | set(nest.carried)
    later = set(from_step_one(fn, nest, kept))
    for index, seg in enumerate(nest.segments):
        if not (isinstance(seg, Choice) and (seg.per_step or _on_step(nest, seg))):
            continue
        both = {m for m, values in seg.merged.items() if UNBOUND not in values}
        for k, tape in enumerate(seg.sides()):
            out |= {s.var: (seg, k) for s in tape.steps if s.var in kept and s.var not in both}
        out |= {v: (seg, k) for v, k in step_rows.merged_rows(fn, nest, kept, index).items()}
        where = {(choice_key(fn, nest, index), k): k for k in (0, 1)}
        before = {
            s.var for earlier in nest.segments[:index] if isinstance(earlier, Straight) for s in earlier.tape.steps
        }
        shaped = fn.step_shapes.get(key(fn, nest), set())
        for v in kept:
            sides = fn.step_sides.get(v, set())
            if v in before and len(sides) == 1 and None not in sides and v not in updates | later | shaped:
                side = next(iter(sides))
                if side in where:
                    out[v] = (seg, where[side])
    return out


def merged_rows(fn: LoopFunction, nest: Nest, kept: list[str]) -> dict[str, tuple[Choice, int, str]]:
    """The merged values of `kept` after an `if` tested at each outer step (`_on_step`) that one side computes
    and the other passes the nest's carried value on as (`h2` of `if k % 2 == 1 { h = h * s }`), where that
    carried value is read back at each outer step from the last steps of the loops that carry it
    (`loop_chain`): by the `if`, the side computing it and the carried value. Forward keeps the value in rows
    for the steps that ran that side (autograd keeps the carried value itself at the others), and at every
    step where those loops run no steps (the carried value at the step after is then read back from the
    rows, `chain_start`); backward reads it back as the carried value elsewhere (`merged_lines`)."""
    out: dict[str, tuple[Choice, int, str]] = {}
    names = {nest.var, *(n for n, _ in nest.numbers)}
    for loop in nest.loops():  # (a number a loop rebinds: not tested again after it)
        names -= {*loop.carried_numbers, *(n for n, _ in loop.numbers)}
    for seg in nest.segments:
        if not isinstance(seg, Choice) or seg.per_step or not _on_step(nest, seg):
            continue
        if not {n.id for n in walk(seg.cond) if isinstance(n, N.Name)} <= names:
            continue
        for v, values in seg.merged.items():
            passed = [c for c in values if c in nest.carried]
            if v not in kept or len(passed) != 1 or UNBOUND in values or values[0] == values[1]:
                continue
            c = passed[0]
            if c in kept or loop_chain(fn, nest, c, kept) is None:
                continue
            out[v] = (seg, 1 - values.index(c), c)
    return out


def merged_flag(fn: LoopFunction, value: str) -> str:
    """Forward's flag that this step's side computed `value` (`merged_rows`)."""
    return fn.name(f"{value}_computed", key=("merged rows",))


def merged_kept(fn: LoopFunction, nest: Nest, value: str, kept: list[str], ex: PyExpr | None = None) -> str:
    """The test that a step keeps a row of `value` (`merged_rows`): its side computed it (in backward, the
    `if`'s condition, spelt by `ex`), or the loops carrying the value its carried value passes on ran no
    steps."""
    seg, side, c = merged_rows(fn, nest, kept)[value]
    chain = loop_chain(fn, nest, c, kept)
    assert chain is not None
    stacks = " and ".join(f"{steps} is None" for steps, _ in chain[0])
    if ex is None:
        return f"{merged_flag(fn, value)} or {stacks}"
    test = ex(seg.cond)
    computed = test if side == 0 else f"not ({test})"
    none = " and ".join(f"{layers(fn, steps)} is None" for steps, _ in chain[0])
    return f"{computed} or {none}"


def merged_side_lines(fn: LoopFunction, merged: dict[str, tuple[Choice, int, str]], seg: Choice, k: int) -> list[str]:
    """Forward's lines at the end of side `k` of `seg`: whether it computed each merged value kept in rows."""
    return [f"{merged_flag(fn, v)} = {side == k}" for v, (choice, side, _) in merged.items() if choice is seg]


def merged_row_counter(fn: LoopFunction, value: str) -> str:
    """The rows of a merged value (`merged_rows`) not yet read back by backward's steps in reverse."""
    return fn.name(f"{value}_rows_left", key=("merged rows",))


def merged_lines(w: BackwardWriter, nest: Nest, kept: list[str]) -> list[str]:
    """Backward's lines at the head of a step binding each merged value kept in rows (`merged_rows`): its row
    where the step kept one (the last not yet read), else the carried value it passed on, read back; in the
    double backward, its share of the extra outputs' gradients (none where no row is kept)."""
    fn = w.fn
    lines: list[str] = []
    for v, (_, _, c) in merged_rows(fn, nest, kept).items():
        w.read(B.name(c))
        at, listed = merged_row_counter(fn, v), layers(fn, v)
        lines += [
            f"if {merged_kept(fn, nest, v, kept, w.ex)}:",
            f"    {at} -= 1",
            f"    {spelt(w, v)} = {listed}[{at}]",
        ]
        lines += ["else:", f"    {spelt(w, v)} = {spelt(w, c)}"]
        if w.mode != "main":
            given = fn.grad_out(listed)
            lines[-3:-2] = [lines[-3], f"    {fn.grad_out(v)} = 0 if {given} is None else {given}[{at}]"]
            lines.append(f"    {fn.grad_out(v)} = 0")
    return lines


def _on_step(nest: Nest, seg: Choice) -> bool:
    """Whether `seg`, an `if` of the nest's body, is tested at each outer step (its condition reads the outer
    loop's variable, `nest._on_step`): its sides' own values are kept in rows too (`side_rows`), not stacked
    with None at the steps that ran the other side."""
    return nest.var in {n.id for n in walk(seg.cond) if isinstance(n, N.Name)}


def row_counter(fn: LoopFunction, value: str) -> str:
    """The rows of `value` (a side's, `side_rows`) not yet read back by backward's steps in reverse."""
    return fn.name(f"{value}_rows_left", key=("rows",))


def rows_read(w: BackwardWriter, nest: Nest, seg: Choice, k: int, rows: dict[str, tuple[Choice, int]]) -> list[str]:
    """At the start of side `k` of `seg` in backward: each of its values kept in rows read back (the last row not
    yet read: backward runs the steps in reverse), and its share of the extra outputs' gradients."""
    lines: list[str] = []
    # a value only the other side binds, which this side does not pass on under its name either (its gradient's
    # share is read nowhere here, `BackwardWriter.choice`)
    passed = {name for name, values in seg.merged.items() if values[k] != UNBOUND}
    theirs = {s.var for s in seg.sides()[1 - k].steps} - {s.var for s in seg.sides()[k].steps} - passed
    for v, (choice, side) in rows.items():
        # not kept at this step: no share (but for one of `theirs`)
        if choice is seg and side != k and v not in theirs and w.mode != "main":
            given = w.fn.grad_out(layers(w.fn, v))
            lines.append(f"{w.fn.grad_out(v)} = 0 if {given} is None else {given}.new_zeros({given}.shape[1:])")
        if choice is not seg or side != k:
            continue
        at = row_counter(w.fn, v)
        lines += [f"{at} -= 1", f"{v} = {layers(w.fn, v)}[{at}]"]
        if w.mode != "main":
            given = w.fn.grad_out(layers(w.fn, v))
            lines.append(f"{w.fn.grad_out(v)} = None if {given} is None else {given}[{at}]")
    return lines


def _read_back(
    w: BackwardWriter, nest: Nest, kept: list[str], lazily: set[str], starts: dict[str, str]
) -> dict[str, str]:
    """Each carried value the body reads per step that is not kept itself, by name: the line binding it to its
    update at the step before, read back from what holds it (`previous_update`), its start at step 0. Not one
    kept lazily (`step_rows`: read where a side runs). The start of one read back from what holds it is read
    once the body is written (`starts`: by the carried value, `starts_read`)."""
    lines = {}
    later = from_step_one(w.fn, nest, kept)
    gated = [*ragged_steps.gated(w.fn, nest, kept), *ragged_steps.read_back(w.fn, nest, kept)]
    for c in (c for c in nest.carried if c not in lazily):
        if c in gated:  # kept at the outer steps its ragged loop reads it at only (`ragged_steps.gated`)
            starts[c] = nest.carried[c]
            lines[c] = ragged_steps.read_back_line(w, nest, c)
            continue
        source = None
        if c in w.per_step.get(key(w.fn, nest), set()) and c not in kept:
            source = previous_update(w.fn, nest, c, kept, w.per_step)
        if source is not None or c in later:
            starts[c] = nest.carried[c]
            start = w.ex(B.name(nest.carried[c]))
            value = previous_value(w.fn, nest, source or (c, None), w.ex)
            k = step_index(w.fn, nest)
            if source and isinstance(source[1], Loop):  # the loop's start where it ran no steps
                start = chain_start(w, nest, c, kept, start)
                value = f"{value} if {k} > 0 and {layers(w.fn, source[0])} is not None"
                lines[c] = f"{spelt(w, c)} = {value} else {start}"
            elif layers(w.fn, c) in w.fn.saved_in_steps:  # None where no inner step runs
                lines[c] = f"{spelt(w, c)} = {value} if {k} > 0 and {layers(w.fn, c)} is not None else {start}"
            else:
                lines[c] = f"{spelt(w, c)} = {value} if {k} > 0 else {start}"
    return lines


def starts_read(w: BackwardWriter, starts: dict[str, str]) -> None:
    """The starts of the carried values read back (`_read_back`, by carried value), read as the carried value
    is: where the body reads it only in its loops' steps (an RNN's `h` at t = 0), as read there (saved only
    where a step of them runs: `inner_loop`), else at the outer step."""
    own = w.own_loop
    for c, start in starts.items():
        loops = [] if c in w.reads.outside else sorted(w.reads.in_loops.get(c, set()))
        at: list[int | None] = [*loops] if loops else [None]
        for k in at:
            w.own_loop = k
            w.read(B.name(start))
    w.own_loop = own


def _last_zeros(w: BackwardWriter, nest: Nest, c: str) -> str:
    """Zeros of the carried value `c`'s last value's shape, for the gradient nothing after the loop gives it:
    where nothing after the loop reads that value (nor is it an output), of its start's shape (every step's
    value has it; backward reads the start at outer step 0 where it does not keep it per step), not saving
    the last value for its shape alone; the start read for its shape too (in the double backward, of a given
    gradient's dtype: not kept for it beside a copy of it, `step_rows`' row of the start)."""
    if c in w.fn.outputs or c in w.reads.once | w.reads.shapes:
        return _zeros(w, c, last=True)
    start = B.name(nest.carried[c])
    if (zeros := start_zeros(w, start.id)) is not None:
        return zeros
    if w.mode == "main":
        shape = B.call("shape_of", start)
        w.read(shape)
        return f"{w.plan.grads[0]}.new_zeros({w.ex(shape)})"
    if w.mode == "rare":  # of its shape too (kept on ctx where nothing reads it by value)
        shape = B.call("shape_of", start)
        w.read(shape)
        w.reads.given_shapes.add(start.id)
        return f"{w.fn.name('given')}.new_zeros({w.ex(shape)})"
    w.read(start)
    return f"torch.zeros_like({w.ex(start)})"


def start_zeros(w: BackwardWriter, start: str) -> str | None:
    """Zeros of the shape of `start`, an input or member a nest's carried value starts as (`_last_zeros`), by
    its shape on ctx (`LoopFunction.start_shapes`, written by `start_shape_lines`): not saved for that alone,
    where backward reads it by value only in the steps of loops (saved only where one runs, as autograd keeps
    nothing at an inner loop of no steps). None in a backward of both gradients at once, or where it may be
    absent."""
    fn = w.fn
    if w.mode not in ("main", "rare") or start not in fn.plan.leaves or start in fn.helper.maybe_absent:
        return None
    if start in fn.meta_leaves:
        return None
    fn.start_shapes.add(start)
    given = w.plan.grads[0] if w.mode == "main" else fn.name("given")
    return f"{given}.new_zeros({fn.names.ctx_shape(start)})"


def _given_start_zeros(w: BackwardWriter, start: str) -> str:
    """Zeros of the shape of `start`, the start of a carried value stacked from step 1 on, for the gradient
    given its step 0 (none: it is not returned): by its shape on ctx where setup_context saves it only where
    an inner step runs (`saved_in_steps`, `start_zeros`), else of it."""
    if start in w.fn.saved_in_steps and w.mode == "rare":
        return f"{w.fn.name('given')}.new_zeros({w.fn.names.ctx_shape(start)})"
    if (zeros := start_zeros(w, start)) is not None:
        return zeros
    return f"torch.zeros_like({w.ex(B.name(start))})"


def start_shape_lines(fn: LoopFunction) -> list[str]:
    """setup_context's lines keeping the shapes of `start_zeros`'s leaves on ctx (not one kept already)."""
    kept = fn.leaf_shapes | set(fn.presence_tested)
    return [f"{fn.names.ctx_shape(l)} = {l}.shape" for l in fn.plan.leaves if l in fn.start_shapes - kept]


def _zeros(w: BackwardWriter, c: str, last: bool = False) -> str:
    """Zeros of the carried value `c`'s shape: read for its shape alone in the main backward (kept as one
    element expanded, or on ctx), with the given gradient's dtype; the `last` value, an output, by its shape
    on ctx in the double backward (as `loop_backward` makes a loop's); else read as itself."""
    if last and w.mode == "rare" and c in w.fn.outputs:
        w.reads.output_shapes.add(c)
        return f"{w.fn.name('given')}.new_zeros({w.fn.names.ctx_shape(c)})"
    if w.mode == "main":
        shape = B.call("shape_of", B.name(c))
        w.read(shape)
        return f"{w.plan.grads[0]}.new_zeros({w.ex(shape)})"
    w.read(B.name(c))
    return f"torch.zeros_like({spelt(w, c)})"


def step_spelling(w: BackwardWriter, nest: Nest) -> None:
    """Backward's spelling in a step of the nest: each carried value under a name of its own (`h_at`; a number,
    `n_now`), bound per outer step, as a loop's step binds `h_t`; its own name keeps the last value, which the
    backward written after the nest's reads (the double backward's section after the main one's: `2 * grad_y_out * h`
    of `y = h * h` read the start otherwise)."""
    names = {c: step_name(w.fn, nest, c) for c in nest.carried}
    # a number of its own (recorded per step, `recorded`), not one its loops bind too (bound there as itself)
    numbers = {*nest.carried_numbers, *(n for n, _ in nest.numbers)}
    for loop in nest.loops():
        numbers -= {*loop.carried_numbers, *(n for n, _ in loop.numbers), *segment_reads(loop)}
    names |= {n: w.fn.name(f"{n}_now", key=("nest step", id(nest))) for n in sorted(numbers)}
    w.spelling = dataclasses.replace(w.spelling, names=w.spelling.names | names)
    w.ex = w.fn.helper.python(w.spelling)


def step_name(fn: LoopFunction, nest: Nest, carried: str) -> str:
    """The name of the carried value `carried` in a step of the nest's backward (`step_spelling`)."""
    return fn.name(f"{carried}_at", key=("nest step", id(nest)))


def spelt(w: BackwardWriter, value: str) -> str:
    """How backward writes `value` here (a nest's carried value in its step: `step_spelling`)."""
    return w.spelling.names.get(value, value)


def _leaf_views(nest: Nest, leaves: set[str]) -> dict[str, tuple[Step, int]]:
    """The steps of the body's straight segments that view the inputs and parameters (or such a view), and
    the index of their segment."""
    views: dict[str, tuple[Step, int]] = {}
    for index, seg in enumerate(nest.segments):
        for s in seg.tape.steps if isinstance(seg, Straight) else []:
            if s.op is not None and s.op.shape in VIEWS and loop_backward.operands(s) <= leaves | set(views):
                views[s.var] = (s, index)
    return views
