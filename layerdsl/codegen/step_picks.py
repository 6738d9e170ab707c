"""`x[t]` of an input in the body of a loop planned as a choice per step (`autodiff.step_choices`: a `Nest` of
no inner loop): picked as a plain loop picks it (`loops.Planner.picks`), not derived through `select`.

Derived through `select`, each step's gradient of `x[t]` is `select_backward` of x's whole shape, added to x's
gradient: O(T) elements a step, O(T²) a backward. Picked, the body's backward derives `x[t]` as a leaf of its
own (read again as `x[t]` where a step reads its value, kept nowhere), each step appends its gradient (one row)
and the row's index to lists, and after the loop they are written into one gradient of x's shape
(`index_add` into zeros; a `range(T)` whose every step gives one row of `x[t]` or `x[T - 1 - t]`: the rows
stacked, as a plain loop's). A row only one side reads is appended at the steps that ran that side. In a loop
over pairs of steps (`autodiff.nest_pairs`), a row at either variable computed from the pair's (`z[j]`, `x[k]`)
is picked too (`pair_index_within`), its rows added at their indices; each picked input there is saved from
the first step running a side that picks it (`_pair_reads`: `j0 * K` where the side turns on `j` alone).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from layerdsl.autodiff.loops import Choice, Straight, picked_backward, picked_forward
from layerdsl.autodiff.tape import Step, Tape
from layerdsl.codegen import loop_backward
from layerdsl.codegen.step_rows import pair_side_at, side_at
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.semantics.shapes import dim_text, position

if TYPE_CHECKING:
    from layerdsl.autodiff.nest import Nest
    from layerdsl.codegen.loop_backward import BackwardWriter


def step_picks(nest: Nest, leaves: set[str], shapes: dict) -> dict[str, tuple[Step, int]]:
    """The `x[t]` (or `x[T - 1 - t]`) of an input or parameter `x` in the straight segments and the sides of a
    nest of choices per step, whose dim the loop's range stays within (`range(T)`, `range(0, T, 2)` over x's
    dim of size T: the pick is valid at every step, so backward may take it again at a step's top), by var;
    with the index of its segment. Not a value a side leaves in a merged local, nor one a step appends."""
    if nest.loops() or not any(isinstance(seg, Choice) and seg.per_step for seg in nest.segments):
        return {}
    start = nest.bounds[0] if len(nest.bounds) > 1 else B.num(0)
    stop = nest.bounds[1] if len(nest.bounds) > 1 else nest.bounds[0]
    step = nest.bounds[2] if len(nest.bounds) > 2 else B.num(1)
    if not all(isinstance(b, N.Num) and int(b.value) >= k for b, k in ((start, 0), (step, 1))):
        return {}
    count = dim_text(stop)
    held = set(nest.updates.values()) | set(nest.carried)
    for seg in nest.segments:
        if isinstance(seg, Choice):
            held |= set(seg.merged) | {v for values in seg.merged.values() for v in values}
    items = [*nest.appended.values(), *(i for more in nest.more.values() for i in more)]
    held |= {i.id for i in items if isinstance(i, N.Name)}
    out: dict[str, tuple[Step, int]] = {}
    for index, seg in enumerate(nest.segments):
        tapes = [seg.tape] if isinstance(seg, Straight) else list(seg.sides()) if isinstance(seg, Choice) else []
        for s in (s for tape in tapes for s in tape.steps):
            if s.op is None or s.op.name != "select" or s.var in held:
                continue
            src, dim, at = s.args["input"], s.args["dim"], s.args["index"]
            if not (isinstance(src, N.Name) and src.id in leaves and isinstance(dim, N.Num)):
                continue
            within = count if picked_forward(at, nest.var) or picked_backward(at, nest.var, count) else None
            within = within or pair_index_within(nest, at)
            if within is None:
                continue
            # (a dim before an input's `...` counted from the start: 0 of `[T, ..., d]` is T)
            p = position(shapes.get(src.id), int(dim.value))
            if p is None or shapes[src.id][p] != within:
                continue
            out[s.var] = (s, index)
    return out


def pair_index_within(nest: Nest, at: N.Expr) -> str | None:
    """The dim `at` stays within where it is a variable of a loop over pairs of steps (`autodiff.nest_pairs`:
    `j = j_k // maximum(K, 0)` over `range(maximum(J, 0) * maximum(K, 0))`, J's; `k = j_k % maximum(K, 0)`,
    K's), each range from 0; None for another index."""
    if not (isinstance(at, N.Name) and len(nest.bounds) == 1):
        return None
    counts = _clamped_counts(nest.bounds[0])
    value = dict(nest.numbers).get(at.id)
    if counts is None or not (isinstance(value, N.BinOp) and value.op in ("//", "%")):
        return None
    left, right = value.left, value.right
    if not (isinstance(left, N.Name) and left.id == nest.var and spec_text(right) == spec_text(counts[1])):
        return None
    picked = counts[0] if value.op == "//" else counts[1]
    assert isinstance(picked, N.Call)
    return dim_text(picked.args[0])


def _clamped_counts(stop: N.Expr) -> tuple[N.Expr, N.Expr] | None:
    """`maximum(J, 0)` and `maximum(K, 0)` of a stop `maximum(J, 0) * maximum(K, 0)`; None for another."""
    if not (isinstance(stop, N.BinOp) and stop.op == "*"):
        return None
    for count in (stop.left, stop.right):
        if not (isinstance(count, N.Call) and count.func == "maximum" and len(count.args) == 2):
            return None
        zero = count.args[1]
        if not (isinstance(zero, N.Num) and zero.value == 0):
            return None
    return stop.left, stop.right


def read_in_steps(w: BackwardWriter, nest: Nest, picks: dict[str, tuple[Step, int]]) -> dict[str, int]:
    """By pick: the key under which backward's reads of it (of x, where the step reads its value, picked again
    from x) count as the nest's steps', whose trip (`Reads.trips`) is the steps from the first that runs a
    segment holding a pick (a side's, found from the condition at each step where that is known: `t % 2 ==
    1` from step 1): setup_context saves x only where such a step runs (`loop_starts.when_a_step_runs`), as
    autograd keeps nothing of it otherwise."""
    if not picks:
        return {}
    if _pair_outer(nest) is not None:
        return _pair_reads(w, nest, picks)
    step = _int_bound(nest, 2, 1)  # (an int, `step_picks`)
    stop = nest.bounds[1] if len(nest.bounds) > 1 else nest.bounds[0]
    first = _first_of(nest, picks)
    at = steps_key(w.fn, nest)
    w.reads.trips[at] = f"range({first}, {w.ex(stop)}{f', {step}' if step != 1 else ''})"
    return dict.fromkeys(picks, at)


def picked_again(w: BackwardWriter, nest: Nest, picks: dict[str, tuple[Step, int]], view: Step) -> list[str]:
    """The line binding `view` again at the top of a step of backward: a pick of `picks` (`x[t]`) None where x
    is (saved only from the first step reading it on, `read_in_steps`: a step before it takes a side that does
    not read it); any other view as itself."""
    lines = w.fn.steps(Tape([view], [], [], set()), w.ex)
    if view.var in picks and _pair_outer(nest) is not None:
        if _pair_first(nest, _of_source(picks, _source(view))) == 0:
            return lines
    elif view.var not in picks or _first_of(nest, picks) == _int_bound(nest, 0, 0):
        return lines
    source = w.ex(B.name(_source(view)))
    code, _, comment = lines[-1].partition("  # ")
    return [*lines[:-1], f"{code} if {source} is not None else None" + (f"  # {comment}" if comment else "")]


def _first_of(nest: Nest, picks: dict[str, tuple[Step, int]]) -> int:
    """The first step that runs a segment holding one of `picks` (`_first_step`)."""
    start, step = _int_bound(nest, 0, 0), _int_bound(nest, 2, 1)  # (ints, `step_picks`)
    return min(_first_step(nest, s, index, start, step) for s, index in picks.values())


def _pair_outer(nest: Nest) -> str | None:
    """The outer variable of a loop over pairs of steps (`j = j_k // maximum(K, 0)`, `pair_index_within`)."""
    for name, value in nest.numbers:
        if isinstance(value, N.BinOp) and value.op == "//" and pair_index_within(nest, B.name(name)) is not None:
            return name
    return None


def _of_source(picks: dict[str, tuple[Step, int]], src: str) -> dict[str, tuple[Step, int]]:
    return {p: v for p, v in picks.items() if _source(v[0]) == src}


def _source_key(w: BackwardWriter, nest: Nest, picks: dict[str, tuple[Step, int]], src: str) -> int:
    """The key of the reads of `src` picked in a loop over pairs of steps: one per picked input (`steps_key`'s,
    then further down), whose trips start apart (`_pair_reads`)."""
    return steps_key(w.fn, nest) - (1 << 24) * sorted({_source(s) for s, _ in picks.values()}).index(src)


def _pair_reads(w: BackwardWriter, nest: Nest, picks: dict[str, tuple[Step, int]]) -> dict[str, int]:
    """`read_in_steps` in a loop over pairs of steps: a key per picked input, its trip from the first step
    running a side that picks it (`_pair_first`: `j0 * maximum(K, 0)` of a side taken from `j = j0` on)."""
    out: dict[str, int] = {}
    for src in sorted({_source(s) for s, _ in picks.values()}):
        mine = _of_source(picks, src)
        at = _source_key(w, nest, picks, src)
        first = _pair_first(nest, mine)
        w.reads.trips[at] = f"range({first if isinstance(first, int) else w.ex(first)}, {w.ex(nest.bounds[0])})"
        out |= dict.fromkeys(mine, at)
    return out


def _pair_first(nest: Nest, picks: dict[str, tuple[Step, int]]) -> int | N.Expr:
    """The first step that runs a side holding one of `picks` in a loop over pairs of steps: where each is taken
    first at `j = j0` (its condition known from `j` alone), `j0 * maximum(K, 0)`; else 0."""
    firsts = [pair_first_step(nest, s, index) for s, index in picks.values()]
    texts = {spec_text(f) for f in firsts if f is not None}
    return firsts[0] if firsts[0] is not None and len(texts) == 1 and None not in firsts else 0


def pair_first_step(nest: Nest, pick: Step, index: int, tries: int = 16) -> N.Expr | None:
    """In a loop over pairs of steps whose side at `index` (holding `pick`) is known from the outer variable
    `j` alone and taken first at j0 > 0 (within `tries`): its first step, `j0 * maximum(K, 0)`; else None."""
    seg, outer = nest.segments[index], _pair_outer(nest)
    counts = _clamped_counts(nest.bounds[0])
    if not (isinstance(seg, Choice) and outer is not None and counts is not None):
        return None
    side = 0 if pick in seg.then.steps else 1
    for j in range(tries):
        taken = pair_side_at(nest, seg, outer, j)
        if taken is None:
            return None
        if taken == side:
            return None if j == 0 else B.int_valued(N.BinOp(counts[1].span, "*", B.num(j), counts[1]))
    return None


def _int_bound(nest: Nest, at: int, otherwise: int) -> int:
    """The int the nest's range has at `at` of its three bounds (start, stop, step), or `otherwise` unwritten."""
    if len(nest.bounds) <= at or len(nest.bounds) == 1 and at == 0:
        return otherwise
    bound = nest.bounds[at]
    assert isinstance(bound, N.Num)
    return int(bound.value)


def steps_key(fn, nest: Nest) -> int:
    """The key of `read_in_steps`' reads (apart from the loops', 0 on, and the nests', -1 down)."""
    from layerdsl.codegen import function_nest as F

    return -(1 << 20) + F.key(fn, nest)


def _first_step(nest: Nest, pick: Step, index: int, start: int, step: int, tries: int = 16) -> int:
    """The variable's value at the first step that runs the segment at `index` holding `pick`: a side of a
    choice per step as `side_at` finds it (the first value where unknown, or not found soon)."""
    seg = nest.segments[index]
    if not isinstance(seg, Choice):
        return start
    side = 0 if pick in seg.then.steps else 1
    for t in range(start, start + step * tries, step):
        taken = side_at(nest, seg, t)
        if taken is None:
            return start
        if taken == side:
            return t
    return start


def picked_out(w: BackwardWriter, seg, picks: dict[str, tuple[Step, int]]):
    """`seg` (a straight segment or a choice) with its picks as leaves of its tapes, not steps: backward derives
    each step's gradient of `x[t]`, not of x (a pick kept per step is given its extra output's gradient where
    it was taken out, `BackwardWriter.picked`)."""
    if isinstance(seg, Straight):
        return dataclasses.replace(seg, tape=_without(w, seg.tape, picks))
    if isinstance(seg, Choice):
        return dataclasses.replace(seg, then=_without(w, seg.then, picks), orelse=_without(w, seg.orelse, picks))
    return seg


def _without(w: BackwardWriter, tape: Tape, picks: dict[str, tuple[Step, int]]) -> Tape:
    own = [s.var for s in tape.steps if s.var in picks]
    if not own:
        return tape
    differentiable = {p for p in own if _source(picks[p][0]) in tape.differentiable}
    out = dataclasses.replace(
        tape,
        steps=[s for s in tape.steps if s.var not in picks],
        leaves=[*tape.leaves, *own],
        differentiable=tape.differentiable | differentiable,
    )
    w.picked[id(out)] = set(own)
    return out


def _source(step: Step) -> str:
    src = step.args["input"]
    assert isinstance(src, N.Name)
    return src.id


def _group(step: Step) -> tuple[str, int]:
    dim = step.args["dim"]
    assert isinstance(dim, N.Num)
    return _source(step), int(dim.value)


def rows_lists(w: BackwardWriter, picks: dict[str, tuple[Step, int]]) -> dict[tuple[str, int], tuple[str, str]]:
    """By picked value and dim: the lists of its gradient's rows and of their indices."""
    out: dict[tuple[str, int], tuple[str, str]] = {}
    for step, _ in picks.values():
        src, _dim = group = _group(step)
        if group not in out:
            out[group] = (w.fn.name(f"grad_{src}_rows"), w.fn.name(f"{src}_rows_at"))
    return out


def step_rows(
    w: BackwardWriter, picks: dict[str, tuple[Step, int]], lists: dict[tuple[str, int], tuple[str, str]]
) -> tuple[list[str], bool]:
    """The end of a backward step: each pick's gradient the step gave appended as a row (and its index); and
    whether every pick gave one at every step."""
    by_guard: dict[str | None, list[str]] = {}
    always = True
    for p, (step, _) in picks.items():
        st = w.state.get(w.acc(p))
        if st is None:
            always = False
            continue
        rows, at = lists[_group(step)]
        append = [f"{rows}.append({w.acc(p)})", f"{at}.append({w.ex(step.args['index'])})"]
        if st == "maybe":
            always = False
            append = [f"if {w.acc(p)} is not None:", *("    " + line for line in append)]
        by_guard.setdefault(w.guard([p]), []).extend(append)
    return [line for guard, append in by_guard.items() for line in loop_backward.under(guard, append)], always


def joined_rows(
    w: BackwardWriter,
    nest: Nest,
    picks: dict[str, tuple[Step, int]],
    lists: dict[tuple[str, int], tuple[str, str]],
    always: bool,
) -> list[str]:
    """After the loop: each picked value's rows written into one gradient of its shape, added to its gradient.
    A `range(T)` whose every step gives one row of each `x[t]` (or `x[T - 1 - t]`): the rows stacked in the
    steps' order, as a plain loop's; else added at their indices into zeros."""
    lines: list[str] = []
    for (src, dim), (rows, at) in lists.items():
        group = [s for s, _ in picks.values() if _group(s) == (src, dim)]
        whole = w.acc(src) if w.state.get(w.acc(src)) is None else w.fn.name(f"grad_{src}_picked")
        one_a_step = len(group) == 1 and pair_index_within(nest, group[0].args["index"]) is None  # (not `j`)
        if always and len(nest.bounds) == 1 and one_a_step:
            in_order = f"{rows}[::-1]" if isinstance(group[0].args["index"], N.Name) else rows
            value = f"torch.stack({in_order}, dim={dim})"
        else:
            shape = B.call("shape_of", B.name(src))
            key = _source_key(w, nest, picks, src) if _pair_outer(nest) is not None else steps_key(w.fn, nest)
            own, w.own_loop = w.own_loop, key  # (only where a step gave a row)
            w.read(shape)
            w.own_loop = own
            zeros = f"{rows}[0].new_zeros({w.ex(shape)})"
            index = f"torch.tensor({at}, dtype=torch.long, device={rows}[0].device)"
            value = f"{zeros}.index_add({dim}, {index}, torch.stack({rows}, dim={dim}))"
        taken = w.accumulate(src, whole, conditional=True)
        lines += [f"if {rows}:", f"    {whole} = {value}", *("    " + t for t in taken)]
    return lines
