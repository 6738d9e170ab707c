"""Number locals of a loop kept as one (its count known only when forward runs): one name per value.

The Function computes a loop body's number locals once per step, and its backward computes them again
where it reads them, from the loop's variable and the numbers bound outside it. A number the body carries
from step to step (`n = n + 1`), or that the loop leaves bound for after it (`n = t`, then `x[n]`), or that
shadows one bound before the loop, takes a name of its own in the loop (`n1`, `NumberNames`): the loop
starts it as the value before (`n1 = n`), so after the loop it holds the last step's value, or the value
before when the loop ran no step, as in Python. Backward runs the numbers' loop again in its prelude, a
Python loop over ints, recording the carried ones' values at the start of each step (`Loop.carried_numbers`),
and reads step t's record where it runs step t. Numbers the forward binds after such a loop from what it
leaves (`m = n1 * 2`) are `late`: forward computes them where they stand, not before its first segment.

A loop holding a loop (a `Nest`) is named alike (`NumberNames.nest`): a number it binds that was bound
before takes a name of its own, started as the value before (not where none reads that value,
`fresh_each_step`: a split piece's variable, `l = l_step + l_at`); backward's prelude runs its numbers again,
recording the carried ones at the start of each outer step and of each step of its loops
(`codegen.function_nest.replay`). Its body's numbers are computed at the start of each outer step: one bound
after a statement of the body that reads it, or binds what it reads, is refused (`_check_nest`).

A slice whose size varies from step to step (`h[:, :k]` with `k = t % 2`, `x[:, a:a + k]` of a growing `k`,
`h[:t]`) gives step values whose shape changes from step to step, which cannot be kept in one buffer per
value: `sized_per_step` names them (and what the body computes from them), and the Function's backward
computes them again from what the step keeps (`codegen.loop_backward.BackwardWriter.loop`). Such a slice
in the body of a loop holding a loop outside its inner loop, or in a loop with a choice per step, is checked
once the loop is planned (`autodiff/choice_slices.py`: refused here, at the slice, unless backward can slice
again; `check_masks`: an index by a bool mask there where backward cannot index again,
`choice_slices.masks_again`); in the inner loop one sized by an int of the outer step varies too
(`varying_per_step`). A carried value or an appended item (kept at one shape) whose shape varies is refused
(`check_sized_per_step`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from layerdsl.autodiff.shapes import step_shape
from layerdsl.autodiff.tape import NotDerivable, Step, Tape
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.ir.visit import map_children, statements, walk
from layerdsl.semantics.evaluate import NotConstant, evaluate
from layerdsl.semantics.shapes import Shape, constant, poly, poly_add, poly_text, position, text_poly

if TYPE_CHECKING:
    from layerdsl.autodiff.loops import Loop

HINT = (
    "compute the number from the loop's variable in each step (`n = t + 1`), or write a backward block, or"
    " write the count in the spec (up to 64 steps are unrolled)"
)


@dataclass
class LoopNumbers:
    """What renaming gave one loop: its statement as planned, and its numbers' names."""

    loop: N.For
    starts: dict[str, str] = field(default_factory=dict)  # a renamed number -> the name it starts as
    carried: list[str] = field(default_factory=list)  # renamed numbers a step reads before binding


class NumberNames:
    """The current name of each number local, along a forward's top-level statements (`Planner.run`)."""

    def __init__(self, fresh: Callable[[str], str]):
        self.fresh = fresh
        self.names: dict[str, str] = {}  # spec local -> the name holding it now, where it was renamed
        self.bound: set[str] = set()  # number locals bound so far by a top-level statement or a loop
        self.late: set[str] = set()  # names a loop binds, and numbers computed after it from them
        self.nests: dict[int, LoopNumbers] = {}  # id of a loop holding a loop as renamed -> its numbers

    def statement(self, stmt: N.Stmt, after: set[str] | None = None) -> N.Stmt:
        """A top-level statement other than a kept loop: its reads renamed; a number rebinding a renamed
        one bound anew under a fresh name. `after`: the names the statements after it may read before
        binding them (a loop holding a loop's: `nest`), None where not known."""
        if isinstance(stmt, N.For):
            return self.nest(stmt, after)
        out = renamed(stmt, self.names)
        if isinstance(stmt, N.Assign) and isinstance(out, N.Assign) and out.value.kind in N.NUMBERS:
            if stmt.target in self.names or stmt.target in self.late:  # (forward computes a late one in place)
                out.target = self.names[stmt.target] = self.fresh(stmt.target)
            if _names(out.value) & self.late:
                self.late.add(out.target)
            self.bound.add(stmt.target)
        return out

    def loop(self, loop: N.For, rest: list[N.Stmt]) -> LoopNumbers:
        """`loop` with the numbers it binds that it carries, leaves for `rest` or shadows named apart."""
        body_numbers = [s.target for s in statements(loop.body) if isinstance(s, N.Assign) and _binds_number(s)]
        carried = _read_before_bound(loop.body) & set(body_numbers)
        later = {n.id for s in rest for n in walk(s) if isinstance(n, N.Name)}
        own: dict[str, str] = {}
        for b in dict.fromkeys(body_numbers):
            if b in carried or b in later or b in self.bound:
                own[b] = self.fresh(b)
        outer = renamed(loop.iter, self.names)
        inner = renamed(loop, {**self.names, **own})
        assert isinstance(inner, N.For)
        inner.iter = outer
        if not any(isinstance(s, N.If | N.For) for s in inner.body):  # (an `if` left is refused by the planner)
            inner.body = self.in_order(inner.body, {own.get(b, b) for b in carried})
        starts = {new: self.names.get(b, b) for b, new in own.items() if b in self.bound}
        self.names.update(own)
        self.bound |= set(body_numbers)
        self.late |= set(own.values())
        return LoopNumbers(inner, starts, [own[b] for b in dict.fromkeys(body_numbers) if b in carried])

    def nest(self, loop: N.For, after: set[str] | None = None) -> N.For:
        """A loop holding a loop, with each number it binds that was bound before named apart (started as the
        value before, `nests`, unless `fresh_each_step`: none reads the value before), and each inner loop's
        body in order (`in_order`). What it binds is `late`: the numbers after it computed from them are
        computed where they stand. `after`: the names the statements after it may read before binding them
        (None: any)."""
        bound_here = [s.target for s in statements(loop.body) if isinstance(s, N.Assign) and _binds_number(s)]
        own = {b: self.fresh(b) for b in dict.fromkeys(bound_here) if b in self.bound or b in self.names}
        names = {b: new for b, new in self.names.items() if b not in bound_here}
        out = copy.copy(renamed(loop, {**names, **own}))
        assert isinstance(out, N.For)
        out.body = [self.inner_in_order(s) for s in out.body]
        starts = {new: self.names.get(b, b) for b, new in own.items() if not fresh_each_step(loop, b, after)}
        self.nests[id(out)] = LoopNumbers(out, starts, sorted(carried_by(out)))
        self.names.update(own)
        self.bound |= set(bound_here)
        self.late |= {own.get(b, b) for b in bound_here}
        return out

    def inner_in_order(self, stmt: N.Stmt) -> N.Stmt:
        """`stmt`, where it is a loop in a loop's body, with its body in order (`in_order`)."""
        if not isinstance(stmt, N.For) or any(isinstance(s, N.If | N.For) for s in stmt.body):
            return stmt
        body = self.in_order(stmt.body, carried_by(stmt))
        if body is stmt.body:
            return stmt
        out = copy.copy(stmt)
        out.body = body
        return out

    def in_order(self, body: list[N.Stmt], carried: set[str]) -> list[N.Stmt]:
        """`body` with each number binding but a name's last under a fresh name, and each read under the
        name holding the value there: the Function computes a step's numbers first, in order, before its
        tensors. A `carried` number a tensor statement reads before the step rebinds it reads a copy of the
        step's start bound first (`n2 = n1`)."""
        last = {s.target: k for k, s in enumerate(body) if isinstance(s, N.Assign) and _binds_number(s)}
        kinds = {s.target: s.value.kind for s in body if isinstance(s, N.Assign) and _binds_number(s)}
        now: dict[str, str] = {}  # a number -> the name holding its value at this point of the step
        starts: dict[str, N.Assign] = {}  # a carried number -> the copy of its start
        out: list[N.Stmt] = []
        for k, s in enumerate(body):
            if not (isinstance(s, N.Assign) and _binds_number(s)):
                for name in _names(s) & carried:
                    if name not in now and k < last.get(name, -1) and name not in starts:
                        read = N.Name(s.span, name)
                        read.ref, read.kind = N.Ref.LOCAL, kinds[name]
                        starts[name] = N.Assign(s.span, self.fresh(name), s.span, read)
                early = {n: starts[n].target for n in starts if n not in now}
                out.append(renamed(s, {**now, **early}))
                continue
            bound = copy.copy(renamed(s, now))
            assert isinstance(bound, N.Assign)
            bound.target = s.target if k == last[s.target] else self.fresh(s.target)
            now[s.target] = bound.target
            out.append(bound)
        if not starts and out == body:
            return body
        return [*starts.values(), *out]


def renamed(node, names: dict[str, str]):
    """`node` (left as it was) with each number local of `names` read or bound under its new name."""
    if not names:
        return node

    def go(e):
        e = map_children(e, go)
        if isinstance(e, N.Name) and e.id in names and e.ref == N.Ref.LOCAL and e.kind in N.NUMBERS:
            e.id = names[e.id]
        elif isinstance(e, N.Assign) and e.target in names and e.value.kind in N.NUMBERS:
            e.target = names[e.target]
        return e

    return go(node)


def fresh_each_step(loop: N.For, number: str, after: set[str] | None) -> bool:
    """Whether no one reads the value `number` had before `loop` (a loop holding a loop): each step binds it
    at its top level before anything of the step reads or binds it, and the statements after the loop do
    not read it before binding it (`after`; None: they may). So a split piece's variable (`l = l_step +
    l_at`, `loop_split._from_zero`) needs no start: the loop variable is seen in its body only."""
    if after is None or number in after:
        return False
    for s in loop.body:
        if isinstance(s, N.Assign) and s.target == number and _binds_number(s):
            return number not in _names(s.value)
        if number in _names(s) or number in {b.target for b in statements([s]) if isinstance(b, N.Assign)}:
            return False
    return False


def carried_by(loop: N.For) -> set[str]:
    """The numbers `loop` binds that a step reads before binding them (the step before's value)."""
    bound = {s.target for s in statements(loop.body) if isinstance(s, N.Assign) and _binds_number(s)}
    return _read_before_bound(loop.body) & bound


def _binds_number(s: N.Stmt) -> bool:
    return isinstance(s, N.Assign) and s.value.kind in N.NUMBERS


def _read_before_bound(body: list[N.Stmt]) -> set[str]:
    """The number locals a step of `body` reads before binding them (a block's own reads: its count's)."""
    bound: set[str] = set()
    read: set[str] = set()
    for s in statements(body):
        read |= _own_reads(s) - bound
        if _binds_number(s):
            assert isinstance(s, N.Assign)
            bound.add(s.target)
    return read


def check_loop_numbers(body: list[N.Stmt]) -> None:
    """NotDerivable at a number a loop holding a loop binds after a statement of its body that reads it
    (`_check_nest`). (A slice in such a loop whose size varies from step to step: `choice_slices.check_nest`,
    once the loop is planned.)"""
    for stmt in body:
        if isinstance(stmt, N.For) and any(isinstance(s, N.For) for s in statements(stmt.body)):
            _check_nest(stmt)  # (its slices once planned: `choice_slices.check_nest`)
        elif isinstance(stmt, N.If):
            check_loop_numbers(stmt.body)
            check_loop_numbers(stmt.orelse)


def _check_nest(loop: N.For, per_step: bool = False) -> None:
    """A loop holding a loop (or `per_step`: one with a choice per step): its loops' slices fixed in size, and
    each number its body binds bound before anything of the step reads it or binds what it reads (the Function
    computes a step's numbers first)."""
    for at, stmt in enumerate(loop.body):
        if not (isinstance(stmt, N.Assign) and _binds_number(stmt)):
            continue
        for before in loop.body[:at]:
            if isinstance(before, N.Assign) and _binds_number(before):
                continue
            binds = {s.target for s in statements([before]) if isinstance(s, N.Assign)}
            if isinstance(before, N.For):
                binds.add(before.var)
            if stmt.target in _names(before) or binds & _names(stmt.value):
                # (per step, the number is named apart already: `NumberNames.loop`)
                what = "picks a side of its `if` at each step" if per_step else "holds a loop"
                number = "this number" if per_step else f"the number '{stmt.target}'"
                raise NotDerivable(
                    stmt.span,
                    f"cannot derive through {number} yet: the loop over '{loop.var}' {what},"
                    " and the Function computes the numbers its body binds at the start of each step, but"
                    " a statement before this one reads it or binds what it reads",
                    "bind it at the start of the loop's body"
                    + (" (before the `if`)" if per_step else " (or in the inner loop)")
                    + ", or write a backward block",
                )


def check_varying_slices(loop: N.For, per_step: bool = False) -> None:
    """NotDerivable at a slice in `loop`'s body (a loop holding a loop, or `per_step`: one with a choice per
    step, `step_choices`) whose size varies from step to step."""
    numbers = [(s.target, s.value) for s in statements(loop.body) if isinstance(s, N.Assign) and _binds_number(s)]
    carried = _read_before_bound(loop.body) & {n for n, _ in numbers}
    varying = _varying(loop.var, numbers, carried)
    for s in _own_statements(loop.body):
        for e in walk(s):
            if isinstance(e, N.Subscript):
                for item in e.items:
                    if isinstance(item, N.Slice) and not _fixed_size(item, varying):
                        by = sorted(_names_of(item) & varying)[0]
                        through = "" if by == loop.var else f" through '{by}'"
                        if per_step:
                            raise _varying_in_a_choice(item.span, spec_text(e.value), loop.var, through)
                        raise NotDerivable(
                            item.span,
                            f"cannot derive through this slice of `{spec_text(e.value)}` yet: its size depends"
                            f" on the loop's variable '{loop.var}'{through}, so the step's values change shape"
                            " from step to step, which a loop holding a loop does not derive through yet outside"
                            " the loop it holds",
                            "slice by bounds whose difference is the same in every step (`h[:, k:k + 2]`), or"
                            " slice in the inner loop,"
                            " or write the inner loop's count in the spec (up to 64 steps are unrolled), or"
                            " write a backward block",
                        )


def check_choice_numbers(loop: N.For) -> None:
    """NotDerivable in the body of `loop`, a loop with a choice per step (`step_choices`, planned as a nest of no
    inner loop), at a number bound after a statement that reads it (`if t > n` before `n = n + 1`: the
    Function computes a step's numbers first). Its slices are checked once the body is planned
    (`choice_slices.check`)."""
    _check_nest(loop, per_step=True)


def _varying_in_a_choice(span, sliced: str, var: str, through: str) -> NotDerivable:
    return NotDerivable(
        span,
        f"cannot derive through this slice of `{sliced}` yet: its size depends on the loop's variable"
        f" '{var}'{through}, so the step's values change shape from step to step, which a loop whose `if`"
        " picks a side at each step does not derive through yet",
        "slice by bounds whose difference is the same in every step (`h[:, k:k + 2]`), or compute both sides"
        " and choose with where(cond, a, b), or write a backward block, or drop @function",
    )


def _own_statements(body: list[N.Stmt]):
    """The statements of `body` and of its `if`s, not those of its loops (nor a loop's count)."""
    for s in body:
        if isinstance(s, N.If):
            yield s.cond
            yield from _own_statements(s.body)
            yield from _own_statements(s.orelse)
        elif not isinstance(s, N.For):
            yield s


def varying_per_step(loop: N.For) -> set[str]:
    """The numbers of a loop holding a loop that may differ from one of its steps to the next: its variable,
    those it carries, and those computed from one (an inner loop's values sized by one change size with it)."""
    numbers = [(s.target, s.value) for s in statements(loop.body) if isinstance(s, N.Assign) and _binds_number(s)]
    return _varying(loop.var, numbers, _read_before_bound(loop.body) & {n for n, _ in numbers})


def check_masks(tapes: list[Tape], per_step: bool = False) -> None:
    """NotDerivable at an index by a bool mask in the body of a loop holding a loop, outside its loops, or of
    one with a choice per step (`per_step`) (`tapes`: where backward cannot index again,
    `choice_slices.masks_again`): the values stacked over its steps keep one shape."""
    for tape in tapes:
        for s in tape.steps:
            if s.by_mask and per_step:
                raise NotDerivable(
                    s.expr.span,
                    "cannot derive through this index by a bool mask yet: it is in the body of a loop whose `if`"
                    " picks a side at each step, and how many elements it picks may differ from step to step,"
                    " which the values kept per step cannot",
                    "pick with where(mask, x, 0) (`sum(where(mask, x, 0))` sums what the mask picks), or compute"
                    " both sides and choose with where(cond, a, b), or drop @function",
                )
            if s.by_mask:
                raise NotDerivable(
                    s.expr.span,
                    "cannot derive through this index by a bool mask yet: it is in the body of a loop holding a"
                    " loop, outside the inner loop, and how many elements it picks may differ from step to step,"
                    " which the values kept per outer step cannot",
                    "pick with where(mask, x, 0) (`sum(where(mask, x, 0))` sums what the mask picks), or move it"
                    " into the inner loop, or write the count in the spec (up to 64 steps are unrolled)",
                )


def sized_per_step(loop: Loop, shapes: dict[str, Shape]) -> set[str]:
    """The values of `loop`'s body whose shape may change from step to step: a slice whose size varies
    (`h[:, :k]`, `k = t % 2`), an index by a bool mask (`x[x > 1]`, as long as the mask has True elements),
    and what the body computes from one, unless its shape, found with each such slice's size as the
    difference of its bounds, reads no varying number (`cat` of `h[:, :k]` and `h[:, k:]`, `h[:, :k] @ w[:k]`:
    the clamping of both bounds alike) or is a reduction's to a scalar (`sum(x[x > 1])`). Not a carried
    value's next value nor an item appended to a list (the steps keep those at one shape: `check_sized_per_step`
    refuses one that may not). `shapes`: the plan's."""
    return sized_and_fixed(loop, shapes)[0]


def check_sized_per_step(loop: Loop, shapes: dict[str, Shape]) -> None:
    """NotDerivable at a step of `loop` whose value the steps keep at one shape (a carried value's next
    value, an item appended to a list) but whose shape may change from step to step (`sized_per_step`)."""
    for s in sized_and_fixed(loop, shapes)[1]:
        what = "an item appended to a list" if s.var not in loop.updates.values() else "a value the loop carries"
        raise NotDerivable(
            s.expr.span,
            f"cannot derive through this value yet: it is {what}, and its shape may change from step to step"
            " (it is computed from a slice whose size varies, or an index by a bool mask), which the Function"
            " keeps at one shape over the steps",
            "keep the shape the same in every step (slice by bounds whose difference is the same, or pick with"
            " where(mask, x, 0)), or write the count in the spec (up to 64 steps are unrolled), or write a"
            " backward block",
        )


def sized_and_fixed(loop: Loop, shapes: dict[str, Shape]) -> tuple[set[str], list[Step]]:
    """`sized_per_step`'s values, and the steps of carried values' next values and appended items that
    would be among them (`check_sized_per_step`)."""
    return sized_steps(
        BodyFacts(
            var=loop.var,
            numbers=loop.numbers,
            varying_numbers=set(loop.carried_numbers) | loop.varying_outside,
            kept=kept_at_one_shape(loop.updates, loop.appended, loop.more),
            carried=loop.carried,
            steps=[*loop.picks.values(), *loop.tape.steps],
        ),
        shapes,
    )


@dataclass(frozen=True)
class BodyFacts:
    """What `sized_steps` reads of a loop's body: its variable, its numbers (and those it carries or that
    vary for another reason), the values kept at one shape over the steps, its carried values (name to
    start) and its steps in order."""

    var: str
    numbers: list[tuple[str, N.Expr]]
    varying_numbers: set[str]
    kept: set[str]
    carried: dict[str, str]
    steps: list[Step]


def kept_at_one_shape(updates: dict[str, str], appended: dict[str, N.Expr], more: dict[str, list[N.Expr]]) -> set[str]:
    """The values a loop's steps keep at one shape: carried values' next values and appended items."""
    kept = set(updates.values()) | {e.id for e in appended.values() if isinstance(e, N.Name)}
    return kept | {e.id for items in more.values() for e in items if isinstance(e, N.Name)}


def sized_steps(body: BodyFacts, shapes: dict[str, Shape]) -> tuple[set[str], list[Step]]:
    """The values of `body` whose shape may change from step to step (`sized_per_step`), and the steps kept
    at one shape that would be among them."""
    varying = _varying(body.var, body.numbers, body.varying_numbers)
    local = dict(shapes) | {c: shapes.get(start) for c, start in body.carried.items()}
    out: set[str] = set()
    kept_at_one: list[Step] = []
    masked: set[str] = set()  # of a size an index by a bool mask gives (data): no shape the plan knows
    for s in body.steps:
        start, end, by = (s.args.get(k) for k in ("start", "end", "step"))
        sliced = s.op is not None and s.op.name == "slice" and not _fixed_bounds(start, end, by, varying)
        local[s.var] = _slice_shape(s, local) if sliced else step_shape(s, local)
        shape = local[s.var]
        named = shape is not None and any(set(re.findall(r"[A-Za-z_]\w*", str(d))) & varying for d in shape)
        if s.by_mask or s.reads & masked and shape is None:
            masked.add(s.var)
        if not (sliced or s.by_mask or s.reads & out and (shape is None or named)):
            continue
        if s.var not in body.kept:
            out.add(s.var)
        elif sliced or s.var in masked or named:  # (one of no shape the plan knows otherwise: as before)
            kept_at_one.append(s)
    return out, kept_at_one


def steady_shape(loop: Loop, name: str, shapes: dict[str, Shape]) -> Shape:
    """The shape of `name`, a value of `loop`'s body, found with each slice's size the difference of its
    bounds (`sum(x[:t + 1], dim = 0)` is [B, d]), where it reads no number that varies from step to step
    (the same at every step); None otherwise."""
    varying = _varying(loop.var, loop.numbers, set(loop.carried_numbers))
    shape = next((shape for s, shape, _ in _step_shapes(loop, shapes, varying) if s.var == name), None)
    if shape is None or any(set(re.findall(r"[A-Za-z_]\w*", str(d))) & varying for d in shape):
        return None
    return shape


def steady_carried_shapes(loop: Loop, shapes: dict[str, Shape]) -> dict[str, Shape]:
    """The shapes of `loop`'s carried values that the plan does not know because a step slices by bounds
    whose difference varies (`h = tanh(h @ w + sum(x[:t + 1], dim = 0))`), where each step's next value
    keeps its start's shape (`steady_shape`): a later loop starting from one then knows its own shapes (the
    cat of a list a split loop appends to needs them)."""
    out: dict[str, Shape] = {}
    for c, update in loop.updates.items():
        start = shapes.get(loop.carried[c])
        if shapes.get(c) is None and start is not None and steady_shape(loop, update, shapes) == start:
            out[c] = start
    return out


def steady_step_shapes(steps: list[Step], shapes: dict[str, Shape], varying: set[str]) -> dict[str, Shape]:
    """The shapes of `steps` (straight code of a loop's body) that the plan does not know because a step
    slices by bounds whose difference reads a number of `varying` (`sum(x[:i + 1], dim = 0)` is [B, d]), found
    with each such slice's size the difference of its bounds, where the shape reads no number of `varying`
    (the same at every step)."""
    local = dict(shapes)
    out: dict[str, Shape] = {}
    for s in steps:
        start, end, by = (s.args.get(k) for k in ("start", "end", "step"))
        sliced = s.op is not None and s.op.name == "slice" and not _fixed_bounds(start, end, by, varying)
        local[s.var] = _slice_shape(s, local) if sliced else step_shape(s, local)
        shape = local[s.var]
        if shapes.get(s.var) is None and shape is not None:
            if not any(set(re.findall(r"[A-Za-z_]\w*", str(d))) & varying for d in shape):
                out[s.var] = shape
    return out


def _step_shapes(loop: Loop, shapes: dict[str, Shape], varying: set[str]):
    """Each step of `loop`'s body (its picks first), its shape with a slice's size the difference of its
    bounds, and whether it is a slice whose size varies from step to step."""
    local = dict(shapes) | {c: shapes.get(start) for c, start in loop.carried.items()}
    for s in [*loop.picks.values(), *loop.tape.steps]:
        start, end, by = (s.args.get(k) for k in ("start", "end", "step"))
        sliced = s.op is not None and s.op.name == "slice" and not _fixed_bounds(start, end, by, varying)
        local[s.var] = _slice_shape(s, local) if sliced else step_shape(s, local)
        yield s, local[s.var], sliced


def _slice_shape(s: Step, shapes: dict[str, Shape]) -> Shape:
    """A slice's shape with its size the difference of its bounds (`k` of `h[:, :k]`, `d - k` of `h[:, k:]`),
    None where it has a step or its input's shape is unknown."""
    inp, dim, lower, upper, step = (s.args.get(k) for k in ("input", "dim", "start", "end", "step"))
    shape = shapes.get(inp.id) if isinstance(inp, N.Name) else None
    by_one = isinstance(step, N.Num) and step.value == 1
    at = position(shape, dim.value) if isinstance(dim, N.Num) and type(dim.value) is int else None
    if shape is None or at is None or not by_one:
        return None
    stop = text_poly(shape[at]) if upper is None or isinstance(upper, N.NoneLit) else poly(upper)
    start = constant(0) if lower is None or isinstance(lower, N.NoneLit) else poly(lower)
    return shape[:at] + (poly_text(poly_add(stop, start, -1)),) + shape[at + 1 :]


def _varying(var: str, numbers: list[tuple[str, N.Expr]], carried: set[str]) -> set[str]:
    """The numbers of a loop's body that may differ from step to step: its variable, those it carries, and
    those computed from one of them."""
    varying = {var} | carried
    for _ in range(len(numbers) + 1):
        varying |= {n for n, e in numbers if _names(e) & varying}
    return varying


def _names(node: N.Node) -> set[str]:
    return {n.id for n in walk(node) if isinstance(n, N.Name)}


def _names_of(item: N.Slice) -> set[str]:
    return {n for b in (item.lower, item.upper, item.step) if b is not None for n in _names(b)}


def _own_reads(stmt: N.Stmt) -> set[str]:
    """The names a statement reads itself (a block's: its condition's or its count's, not its body's)."""
    if isinstance(stmt, N.For):
        return _names(stmt.iter)
    if isinstance(stmt, N.If):
        return _names(stmt.cond)
    return _names(stmt)


def _fixed_size(item: N.Slice, varying: set[str]) -> bool:
    return _fixed_bounds(item.lower, item.upper, item.step, varying)


def _fixed_bounds(lower: N.Expr | None, upper: N.Expr | None, step: N.Expr | None, varying: set[str]) -> bool:
    """Whether a slice takes as many elements at every step: no bound reads a varying number, or its
    upper bound is its lower plus what none does (`k:k + 2`). (A bound left out: None or `none`.)"""
    lower, upper, step = (None if isinstance(b, N.NoneLit) else b for b in (lower, upper, step))
    if not {n for b in (lower, upper, step) if b is not None for n in _names(b)} & varying:
        return True
    if step is not None and _names(step) & varying or lower is None or upper is None:
        return False
    if (
        isinstance(upper, N.BinOp)
        and upper.op == "+"
        and spec_text(upper.left) == spec_text(lower)
        and not _names(upper.right) & varying
    ):
        return True
    return _same_difference(lower, upper, varying)


def _same_difference(lower: N.Expr, upper: N.Expr, varying: set[str]) -> bool:
    """Whether `upper - lower` is the same whatever the varying numbers are (`t * d:(t + 1) * d`): the
    same at a few values of them, for a few values of the other names (a polynomial identity test)."""
    names = sorted(_names(lower) | _names(upper))
    for others in (3, 7):
        sizes = set()
        for value in range(4):
            env = {n: value if n in varying else others + k for k, n in enumerate(names)}
            try:
                sizes.add(evaluate(upper, env) - evaluate(lower, env))
            except (NotConstant, TypeError, ValueError, ArithmeticError):
                return False
        if len(sizes) != 1:
            return False
    return True
