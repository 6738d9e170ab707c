"""A loop whose body holds a loop (`for k in range(layers) { ... for t in range(T) { ... } ... }`), both
of counts known only when forward runs: a `Nest` segment, whose body is segments of its own.

The outer loop's body is planned as a forward is (`loops.Planner`): straight runs of statements and the
loops inside it, each on its own tape. What it carries from one step to the next (an RNN's `x`, the layer's
input, then its output) has a name of its own, as a loop's carried value has, and keeps its shape from step
to step (the values each step keeps for backward are stacked over the steps, `codegen.function_nest`; a body's
loop whose count changes from one outer step to the next keeps its own joined end to end instead,
`codegen.ragged_steps`: one such loop in the body, its count known as the outer step starts). What
each step appends to a list made before the loop (an RNN's `finals.append(h)`) is one item per step, joined
after the loop by `stack()` as a loop's items are.

The Function runs the body once per step, keeping what its backward reads per step (a body's loop's stacks
too, with a leading dim of the outer steps), and its backward runs the body's backward for k = n - 1, ...,
0, each step's saved values picked from the stacks, the carried values' gradients carried from step to step.

A loop whose body is one loop holding a loop, or one loop of a choice per step, comes here as one loop over
the pairs of their steps (`nest_pairs`); one whose body holds more than that loop is refused (`planned_nest`,
saying why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from layerdsl.autodiff import choice_slices, loops, step_choices
from layerdsl.autodiff.loop_ints import (
    carried_by,
    check_choice_numbers,
    check_masks,
    check_sized_per_step,
    varying_per_step,
)
from layerdsl.autodiff.loop_split import unsplit_reason
from layerdsl.autodiff.nest_pairs import unpaired_reason
from layerdsl.autodiff.tape import NotDerivable, Step, Tape
from layerdsl.autodiff.unroll import lists_renamed
from layerdsl.diagnostics import Span
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import walk

if TYPE_CHECKING:
    from layerdsl.autodiff.loops import Join, Loop, Planner, Segment


@dataclass
class Nest:
    """`for var in range(bounds) { body }` whose body holds a loop: the body as segments."""

    var: str
    bounds: list[N.Expr]
    span: Span
    segments: list[Segment]
    carried: dict[str, str]  # the name a carried value has across steps -> the value it starts as
    updates: dict[str, str]  # carried name -> the body's value holding its next value
    appended: dict[str, N.Expr]  # list local (made before the loop) -> the value each step appends to it
    numbers: list[tuple[str, N.Expr]] = field(default_factory=list)  # number locals of the body (per step)
    joins: list[Join] = field(default_factory=list)
    heads: dict[str, list[str]] = field(default_factory=dict)  # list local -> the values appended before it
    more: dict[str, list[N.Expr]] = field(default_factory=dict)  # list local -> what each step appends after
    # carried name -> its spec local, whose shape the plan does not know to stay: checked at each step
    shapes_checked: dict[str, str] = field(default_factory=dict)
    # numbers named apart in it (`loop_ints.NumberNames.nest`): each one's start (`n1 = n`), those a step reads
    # before binding (backward runs the numbers again, recording these per step), and how many of the
    # forward's numbers outside loops come before it
    number_starts: dict[str, str] = field(default_factory=dict)
    carried_numbers: list[str] = field(default_factory=list)
    numbers_at: int = 0
    # a list appended to by loops in a row, one of them this (`loops.Loop.before` and the fields after it)
    before: dict[str, list[list[N.Expr]]] = field(default_factory=dict)
    before_per: dict[str, list[int]] = field(default_factory=dict)
    continued: set[str] = field(default_factory=set)
    later_joins: list[Join] = field(default_factory=list)
    # the index in `segments` of the loop whose count changes from one outer step to the next (`ragged_steps`)
    ragged: list[int] = field(default_factory=list)

    def tapes(self) -> list[Tape]:
        return segment_tapes(self.segments)

    def steps(self) -> list[Step]:
        return [s for t in self.tapes() for s in t.steps]

    def loops(self) -> list[Loop]:
        """The loops of the body (and of the nests in it), in order."""
        out: list[Loop] = []
        for seg in self.segments:
            out += seg.loops() if isinstance(seg, Nest) else [seg] if isinstance(seg, loops.Loop) else []
        return out

    def values(self) -> set[str]:
        """The names the body binds: its steps', its loops' carried values and joins, its nests' alike, its
        `if`s' merged locals."""
        out = {s.var for s in self.steps()} | set(self.carried)
        for seg in self.segments:
            if isinstance(seg, loops.Choice):
                out |= set(seg.merged)
            if isinstance(seg, (loops.Loop, Nest)):
                out |= set(seg.carried) | {j.name for j in seg.joins}
            if isinstance(seg, Nest):
                out |= seg.values()
        return out


def segment_tapes(segments: list) -> list[Tape]:
    """The tapes of `segments`: a straight run's or a loop's, each side of a choice, a nest's own."""
    out: list[Tape] = []
    for seg in segments:
        out += (
            seg.tapes() if isinstance(seg, Nest) else list(seg.sides()) if isinstance(seg, loops.Choice) else [seg.tape]
        )
    return out


def holds_loop(loop: N.For) -> bool:
    return any(isinstance(s, N.For) for s in walk(loop) if s is not loop)


def as_nest(loop: N.For) -> bool:
    """Whether `loop` is planned as a `Nest`: it holds a loop, or an `if` whose side may change from step to
    step (`step_choices`: a choice per step)."""
    return holds_loop(loop) or step_choices.steps_choose(loop)


def planned_nest(p: Planner, stmt: N.For) -> list[Segment]:
    """The segment of a loop whose body holds a loop (`p`: the forward's planner, whose names, shapes and
    aliases the body's segments share)."""
    it = stmt.iter
    assert isinstance(it, N.Call)
    _check_one_ragged(stmt)
    for s in stmt.body:
        if isinstance(s, N.For) and not holds_loop(s) and step_choices.steps_choose(s):
            branch = next(b for b in s.body if isinstance(b, N.If))
            raise NotDerivable(
                branch.span,
                "cannot derive through this `if` yet: it is in the body of a loop inside another loop, each of a"
                " count known only when forward runs, and its side may change from step to step (a choice per"
                " step is derived in a loop holding no loop, or in the body of a loop whose body is that loop"
                " alone, only)",
                "compute both sides and choose with where(cond, a, b), or drop @function (autograd derives the"
                " loops)",
            )
        if isinstance(s, N.For) and not holds_loop(s):
            _check_count_fixed(stmt, s)
        if isinstance(s, N.For) and holds_loop(s):  # not paired with the outer loop (`nest_pairs`)
            why, hint = unpaired_reason(stmt, s)
            raise NotDerivable(
                s.span,
                "cannot derive through this loop yet: it holds a loop and is inside another loop, each of a count"
                f" known only when forward runs{why}",
                hint,
            )
        per_step = step_choices.steps_choose(stmt)
        on_step = isinstance(s, N.If) and loops.choice_alone(s) and _on_step(p, stmt, s)
        if isinstance(s, N.If) and not (p.conditions is not None and loops.choice_alone(s)) and not per_step:
            if on_step:  # an `if` of its own, tested at each outer step
                continue
            why, hint = unsplit_reason(stmt, s.cond) or (
                "",
                "put the `if` inside the inner loop or around the outer one, or drop @function",
            )
            raise NotDerivable(
                s.span,
                "cannot derive through this `if` yet: it is in the body of a loop holding a loop, both of"
                f" counts known only when forward runs{why}",
                hint,
            )
    per_step = step_choices.steps_choose(stmt)
    if per_step:
        check_choice_numbers(stmt)  # (its slices once planned: `choice_slices.check`)
    body = _lists_of_its_own(step_choices.tail_joined(stmt, p.forward).body if per_step else stmt.body, p)
    locals_ = _carried_locals(body, set(p.alias))
    carried = {local: p.fresh(local) for local in locals_}
    starts = {c: p.alias[local] for local, c in carried.items()}
    no_gradient = _buffer_locals(p)
    for local, c in carried.items():
        p.alias[local] = c
        p.shapes[c] = p.shapes.get(starts[c])
        if (
            local not in no_gradient
        ):  # the body's tapes derive its gradient (it starts as, or becomes, one that needs it)
            p.requires.add(c)
    outer_lists = set(p.lists)
    numbers_before = len(p.numbers)
    appended: dict[str, N.Expr] = {}
    segments: list[Segment] = []
    ragged: list[int] = []
    chunk: list[N.Stmt] = []
    items: dict[str, list[str]] = {}  # outer list -> the locals holding what a step appends to it
    read = {n.id for n in walk(p.forward) if isinstance(n, N.Name)}  # what merged locals may be read by
    for s in body:
        if isinstance(s, N.For):
            if chunk:
                straight = p.straight(chunk)
                segments.append(straight)  # (a slice of varying size there: what it keeps steady, known)
                p.shapes.update(choice_slices.steady_outer_shapes(stmt, straight, p.shapes))
                chunk = []
            _no_outer_items(s, outer_lists)
            planned = p.loop(s)
            if isinstance(planned[-1], loops.Loop):  # backward reads its carried numbers as recorded
                planned[-1].carried_numbers = sorted(carried_by(s))
                planned[-1].varying_outside = varying_per_step(stmt)  # (its values of a size of their own)
                check_sized_per_step(planned[-1], p.shapes)
                _check_ragged_shapes(p, stmt, s, planned[-1])
            if isinstance(planned[-1], loops.Loop) and _count_varying(stmt, s):
                ragged.append(len(segments) + len(planned) - 1)
            segments += planned
        elif isinstance(s, N.If):  # on configuration values, holding no loop: an `if` of its own
            if chunk:
                segments.append(p.straight(chunk))
                chunk = []
            if per_step:  # evaluated at every step (`step_choices`)
                segments.append(step_choices.merged_as_own(p.choice(s, s.cond, read)))
            elif _on_step(p, stmt, s) and loops.choice_alone(s):  # tested at each outer step
                segments.append(p.choice(s, s.cond, read))
            else:
                assert p.conditions is not None
                segments.append(p.choice(s, p.conditions(s, []), read))
        elif isinstance(s, N.Assign) and isinstance(s.value, N.ListExpr) and not s.value.items:
            if s.target in outer_lists:
                raise NotDerivable(s.span, "a derived backward collects into a list made before the loop", loops.HINT)
            p.lists.add(s.target)
        elif isinstance(s, N.Append) and s.target in outer_lists:
            items.setdefault(s.target, []).append(p.fresh(f"{s.target}_item"))
            chunk.append(N.Assign(s.span, items[s.target][-1], s.target_span, s.value))
        elif isinstance(s, N.Append):
            raise NotDerivable(s.span, "a derived backward collects into a list made empty before the loop", loops.HINT)
        else:
            chunk.append(s)
    if chunk:
        segments.append(p.straight(chunk))
    # (one in the body's straight code or sides, once planned: `choice_slices.check` and `check_nest`)
    outside = [seg for seg in segments if not isinstance(seg, loops.Loop | loops.Straight | loops.Choice)]
    check_masks(segment_tapes(outside), per_step)
    more: dict[str, list[N.Expr]] = {}
    for name, held in items.items():
        items_held: list[N.Expr] = [_item(p.alias[local], stmt.span) for local in held]
        appended[name], *rest = items_held
        if rest:
            more[name] = rest
    updates = {c: p.alias[local] for local, c in carried.items()}
    shapes_checked: dict[str, str] = {}
    for local, c in carried.items():
        start, after = p.shapes.get(c), p.shapes.get(updates[c])
        if start is None or start != after:  # checked at each step (`codegen.function_nest`)
            shapes_checked[c] = local
            p.shapes[c] = None
        p.alias[local] = c  # after the loop, the carried name holds the last step's value
    numbers = p.numbers[numbers_before:]
    del p.numbers[numbers_before:]
    heads = {name: [p.alias[h] for h in p.heads.pop(name)] for name in appended if name in p.heads}
    nest = Nest(stmt.var, list(it.args), it.span, segments, starts, updates, appended, numbers)
    nest.heads, nest.more, nest.shapes_checked = heads, more, shapes_checked
    nest.ragged = ragged
    numbered = p.number_names.nests.get(id(stmt))
    if numbered is not None:
        nest.number_starts, nest.carried_numbers = numbered.starts, numbered.carried
    nest.numbers_at = numbers_before
    if per_step:
        choice_slices.check(stmt, nest, p.shapes, set(p.leaves))
    else:
        choice_slices.check_nest(stmt, nest, p.shapes, set(p.leaves))
    for name in appended:
        if name in p.loops:  # a loop before it appends to the list too: its items after that loop's
            p.continue_list(nest, name)
        p.collecting.setdefault(name, []).append(nest)
        p.loops[name] = nest
    return [nest]


def _count_varying(nest: N.For, loop: N.For) -> set[str]:
    """The numbers that `loop`'s count, a loop of the body of `nest`, reads that may differ from one outer step
    to the next (`loop_ints.varying_per_step`)."""
    it = loop.iter
    bounds = it.args if isinstance(it, N.Call) and it.func == "range" else [it]
    read = {n.id for e in bounds for n in walk(e) if isinstance(n, N.Name)}
    return read & varying_per_step(nest)


def _check_count_fixed(nest: N.For, loop: N.For) -> None:
    """NotDerivable at `loop`, a loop of the body of `nest`, whose count reads a number that may differ from one
    outer step to the next (`_count_varying`), other than one known at the outer step's start
    (`_known_at_step_start`): backward counts the loop's steps again there, to cut the step's rows from the
    buffers of its values kept per step over all the outer steps (`codegen.ragged_steps`)."""
    varying = _count_varying(nest, loop) - _known_at_step_start(nest, loop)
    if varying:
        raise NotDerivable(
            loop.iter.span,
            "cannot derive through this loop yet: it is in the body of a loop holding a loop, and its count (or a"
            f" bound where an `if` on its variable splits it) reads `{sorted(varying)[0]}`, which may change from"
            " one outer step to the next and is not known as the outer step starts (a number the outer loop"
            " carries, or one bound by a loop of its body or after this loop), where backward counts this loop's"
            " steps again to find the values they kept",
            "loop over a count the outer loop does not change and skip the steps past the bound with"
            " where(t < n, next, h), or write the counts in the spec (up to 64 steps are unrolled), or drop"
            " @function",
        )


def _check_one_ragged(nest: N.For) -> None:
    """NotDerivable at the second loop of the body of `nest` whose count may change from one outer step to the
    next (`_count_varying`; the pieces of a loop split where its `if` on its variable turns, `loop_split`): what
    such loops in a row start from at each outer step is kept per step, more than autograd keeps."""
    ragged = [s for s in nest.body if isinstance(s, N.For) and not holds_loop(s) and _count_varying(nest, s)]
    if len(ragged) > 1:
        varying = sorted(_count_varying(nest, ragged[1]))[0]
        raise NotDerivable(
            ragged[1].iter.span,
            "cannot derive through this loop yet: it is in the body of a loop holding a loop, and its count (or a"
            f" bound where an `if` on its variable splits it) reads `{varying}`, which may change from one outer"
            " step to the next, as another loop's of the body does (loops in a row: what each starts from would"
            " be kept at every outer step, more than autograd keeps)",
            "loop over a count the outer loop does not change and skip the steps past the bound with"
            " where(t < n, next, h), or write the counts in the spec (up to 64 steps are unrolled), or drop"
            " @function",
        )


def _known_at_step_start(nest: N.For, loop: N.For) -> set[str]:
    """The numbers whose value at `loop` (a loop of the body of `nest`) backward knows at the head of an outer
    step: the outer loop's variable, and the ints its body binds once, at its top level before `loop`, from
    those, from what the body does not bind, and from nothing it binds after (not a number it carries)."""
    rebound = [t for s in loops.walk_stmts(nest.body) if isinstance(s, (N.Assign, N.Unpack)) for t in _targets(s)]
    known = {nest.var} - set(rebound)
    bound = set(rebound) | {nest.var}
    for s in nest.body:
        if s is loop:
            break
        if isinstance(s, N.Assign) and s.value.kind == N.Kind.INT and rebound.count(s.target) == 1:
            read = {n.id for n in walk(s.value) if isinstance(n, N.Name)}
            if read & bound <= known:
                known.add(s.target)
    return known


def _check_ragged_shapes(p: Planner, nest: N.For, stmt: N.For, loop: Loop) -> None:
    """NotDerivable at `stmt` (planned as `loop`), a loop of the body of `nest` whose count changes from one
    outer step to the next, where a value it carries may have another shape at its start than the steps make
    of it: its per-step values are joined over the outer steps (`codegen.ragged_steps`), at one shape."""
    if not _count_varying(nest, stmt):
        return
    for c, update in loop.updates.items():
        start, after = p.shapes.get(c), p.shapes.get(update)
        if start is None or start != after:
            raise NotDerivable(
                stmt.iter.span,
                "cannot derive through this loop yet: it is in the body of a loop holding a loop, its count may"
                " change from one outer step to the next, and a value it carries may change shape at its first"
                " step (its values kept per step are joined over the outer steps, at one shape)",
                "give the carried value its shape before the loop (`h = expand(h0, [B, d])`), or loop over a count"
                " the outer loop does not change and skip the steps past the bound with where(t < n, next, h), or"
                " drop @function",
            )


def _buffer_locals(p: Planner) -> set[str]:
    """The locals that carry a buffer's value (`loop_buffers.as_carried_locals`): no gradient flows into them."""
    from layerdsl.autodiff.loop_buffers import buffer_locals

    return buffer_locals(p.forward)


def _on_step(p: Planner, loop: N.For, s: N.If) -> bool:
    """Whether `s`'s condition tests the loop's variable (`k % 2 == 0`) and otherwise only arguments: a
    `Choice` of the body, which the Function tests again at each outer step, in forward and in backward."""
    names = {n.id for n in walk(s.cond) if isinstance(n, N.Name)}
    return loop.var in names and names <= {a.name for a in p.layer.args} | {loop.var}


def _carried_locals(body: list[N.Stmt], defined: set[str]) -> list[str]:
    """The locals defined before the loop that its body reads before it binds them (at its top level)."""
    out: list[str] = []
    bound: set[str] = set()
    for s in body:
        read = {n.id for n in walk(s) if isinstance(n, N.Name)} - bound
        if isinstance(s, N.Assign):
            read = {n.id for n in walk(s.value) if isinstance(n, N.Name)} - bound
            targets = {s.target}
        elif isinstance(s, N.Unpack):
            targets = {t for t, _ in s.targets}
        else:
            targets = set()
        out += [r for r in sorted(read) if r in defined and r not in out]
        bound |= targets
    assigned = {t for s in loops.walk_stmts(body) if isinstance(s, (N.Assign, N.Unpack)) for t in _targets(s)}
    return [local for local in out if local in assigned]


def _targets(s: N.Assign | N.Unpack) -> list[str]:
    return [s.target] if isinstance(s, N.Assign) else [t for t, _ in s.targets]


def _item(var: str, span: Span) -> N.Name:
    item = B.name(var, span)
    item.ref, item.kind = N.Ref.LOCAL, N.Kind.TENSOR
    return item


def _no_outer_items(inner: N.For, outer_lists: set[str]) -> None:
    """Refuse `inner`, a loop in a nest's body, appending to a list made before the nest: its join after the
    nest was planned as of one run of `inner` (the last outer step's items only, a silently short list)."""
    for s in walk(inner):
        if isinstance(s, N.Append) and s.target in outer_lists:
            raise NotDerivable(
                s.span,
                f"cannot derive through this append yet: it appends to the list '{s.target}', made before the loop"
                " holding this loop, each of a count known only when forward runs (the items of every outer step"
                " in one list: not derived yet)",
                f"make a list in the outer loop's body, and append its stack to '{s.target}' there, or drop"
                " @function",
            )


def _lists_of_its_own(body: list[N.Stmt], p: Planner) -> list[N.Stmt]:
    """`body` with each list it makes empty (`outputs = []`) under a name of its own where a list of that name
    was made before (a family's first step, written before the loop, `autodiff.peel`)."""
    again = [s.target for s in body if isinstance(s, N.Assign) and _empty_list(s.value) and s.target in p.lists]
    if not again:
        return body
    names = {name: p.fresh(name) for name in again}
    return [lists_renamed(s, names) for s in body]


def _empty_list(e: N.Expr) -> bool:
    return isinstance(e, N.ListExpr) and not e.items
