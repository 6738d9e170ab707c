"""The plan of a `@function` layer whose forward keeps a loop: the body derived once, run in reverse.

A loop whose trip count is known only when forward runs (a constructor argument, an input's size) or is
longer than `unroll.MAX_UNROLLED` stays a loop. The forward is cut at its loops into segments: straight
runs of statements (`Straight`) and loops (`Loop`). Each is linearized on its own tape, whose leaves are
the layer's inputs and parameters and the values of earlier segments it reads (by the name that holds
them), so each derives by reverse mode as a straight-line forward does:

- a straight segment's outputs are the values later segments read (and, for the last, the layer's);
- a loop's body has as leaves the values it carries from step to step (`h` in `h = tanh(h @ w + x)`, by
  a name of their own) and the values it reads from outside; its outputs are the carried values' updates
  and what each step appends to a list. After the loop, `stack(outputs, dim = d)` and `cat(outputs, ...)`
  are values of their own (`Join`), whose gradient is cut back into one per step.

A forward of more combinations of `if`s on configuration values than `MAX_BRANCH_PLANS` is cut at
its `if`s too: each is a `Choice`, a tape per side from the values before it, the locals either side binds
merged under one name each, so that independent `if`s add rather than multiply.

The Function (`codegen.function_loops`) runs the body once per step, keeping what its backward reads per
step, and its backward runs the body's derived backward for t = T - 1, ..., 0, carrying the carried
values' gradients and summing those of the values read from outside.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Union

from layerdsl.autodiff import loop_buffers, nest, step_choices
from layerdsl.autodiff.loop_choices import chosen_side, self_decided
from layerdsl.autodiff.loop_ints import (
    NumberNames,
    check_loop_numbers,
    check_sized_per_step,
    steady_carried_shapes,
    steady_shape,
)
from layerdsl.autodiff.loop_lists import (
    ItemRead,
    alike,
    counted_items,
    item_read,
    mark_item_read,
    nonnegative_int,
    refuse_items_in_loop,
    refuse_lists_read_while_growing,
    stacked_shape,
    uneven_steps,
    unit_slices,
)
from layerdsl.autodiff.loop_members import without_members
from layerdsl.autodiff.loop_split import split_loops, stop_at_most, unsplit_reason
from layerdsl.autodiff.reverse import derive
from layerdsl.autodiff.shapes import carried_shapes, reshaped_after_first_step, step_shape
from layerdsl.autodiff.tape import Linearizer, NotDerivable, Step, Tape, reserved_names
from layerdsl.diagnostics import Span
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import and_terms, spec_text
from layerdsl.ir.visit import map_children, walk
from layerdsl.semantics.shapes import Shape, declared_shape, dim_text

HINT = "write the loop's body without it, or drop @function (autograd derives the loop)"
# sides of one Function (a product over independent `if`s) before each `if` is a `Choice` of its own; the
# shipped specs have at most 12
MAX_BRANCH_PLANS = 32
CHOICE_HINT = "write a backward block, or choose with where(cond, a, b)"
# what a side of a `Choice` leaves in a local it does not bind (the Function binds it to None)
UNBOUND = "None"


@dataclass
class Join:
    """`stack(L, dim = d)` or `cat(L, dim = d)` of a list a loop appends to, as the value `name`."""

    name: str
    func: str  # "stack" or "cat"
    dim: N.Expr
    items: str  # the list local
    heads: list[str] = field(default_factory=list)  # the values appended before the loop, in order
    # the `of_step`-th item each step appends only, the heads and the step's others left out (a stack of
    # them, `Planner.cat_of_steps`)
    of_step: int | None = None
    # what the loops before its own that append to the list append each step (`Loop.before`)
    earlier: list[N.Expr] = field(default_factory=list)
    # `L[i]` read as an item of it where the list may hold too few items (`loop_lists.mark_item_read`)
    item: ItemRead | None = None
    # a stack of the `of_step`-th items of one loop of those in a row appending to the list only, not of the
    # loops before or after it: its place among them (`Planner.cat_by_loops`)
    alone: int | None = None


@dataclass
class Straight:
    """Statements between loops, as one tape (outputs: what later segments read, or the layer's)."""

    tape: Tape
    returns: bool = False  # its outputs start with the layer's (it holds the `return`)


@dataclass
class Loop:
    """`for var in range(bounds) { body }`, the body as one tape."""

    var: str
    bounds: list[N.Expr]
    span: Span
    tape: Tape  # leaves: the layer's, the carried values, the values read from outside
    carried: dict[str, str]  # the name a carried value has across steps -> the value it starts as
    updates: dict[str, str]  # carried name -> the body's var holding its next value
    appended: dict[str, N.Expr]  # list local -> the value each step appends to it
    joins: list[Join] = field(default_factory=list)
    numbers: list[tuple[str, N.Expr]] = field(default_factory=list)  # number locals of the body (per step)
    picks: dict[str, Step] = field(default_factory=dict)  # leaves of the body: `x[t]` of x from outside
    # carried name -> its spec local, whose shape each step must keep: the body reads its sizes as its first
    # value's (`For.shapes_kept`)
    shapes_kept: dict[str, str] = field(default_factory=dict)
    heads: dict[str, list[str]] = field(default_factory=dict)  # list local -> the values appended before it
    more: dict[str, list[N.Expr]] = field(default_factory=dict)  # list local -> what each step appends after `appended`
    # numbers named apart in the loop (`loop_ints`): each one's start (`n1 = n`), those a step reads before
    # binding (backward runs the numbers again, recording these per step), and how many of the forward's
    # numbers outside loops come before it
    number_starts: dict[str, str] = field(default_factory=dict)
    carried_numbers: list[str] = field(default_factory=list)
    numbers_at: int = 0
    varying_outside: set[str] = field(default_factory=set)  # in a nest: numbers that differ per outer step
    # a list appended to by loops in a row (a loop split where its `if`s turn, `loop_split`), one Python list:
    # list local -> the bounds of the loops before this one that append to it (its items come after theirs)
    before: dict[str, list[list[N.Expr]]] = field(default_factory=dict)
    # list local -> the items a step appends to it, of each loop of `before` (1 but for `more`)
    before_per: dict[str, list[int]] = field(default_factory=dict)
    continued: set[str] = field(default_factory=set)  # the lists a later loop appends to after this one
    later_joins: list[Join] = field(default_factory=list)  # joins after a later loop of the lists it continues
    # buffer -> the carried name holding its value (`update b = ...` in the body, `loop_buffers`): after the
    # loop, the new value the Function returns
    buffers: dict[str, str] = field(default_factory=dict)
    carried_locals: dict[str, str] = field(default_factory=dict)  # carried name -> its spec local (or buffer)


@dataclass
class Choice:
    """`if cond { ... } else { ... }` on configuration values, each side one tape (outputs: the values it
    leaves in `merged`). The Function runs the side the condition picks, in forward and in backward."""

    cond: N.Expr  # over arguments, lets, `training` and dims
    span: Span
    then: Tape
    orelse: Tape
    merged: dict[str, tuple[str, str]]  # the name after the `if` -> the value each side leaves in it
    returned: list[str] = field(default_factory=list)  # the merged names of the outputs, when both sides return
    per_step: bool = False  # its side may change from step to step of the loop it is in (`step_choices`)

    def sides(self) -> tuple[Tape, Tape]:
        return self.then, self.orelse


Segment = Union[Straight, Loop, Choice, "nest.Nest"]


def segment_steps(seg: Segment) -> list[Step]:
    """Every step of a segment (both sides of a `Choice`, the body of a `Nest`)."""
    if isinstance(seg, nest.Nest):
        return seg.steps()
    if isinstance(seg, Choice):
        return seg.then.steps + seg.orelse.steps
    return seg.tape.steps


@dataclass
class LoopPlan:
    """A forward with loops, as segments; the layer's leaves and outputs, as a straight plan has them."""

    segments: list[Segment]
    outputs: list[N.Expr]
    grads: list[str]  # the incoming gradients, one per output
    leaves: list[str]
    differentiable: set[str]
    numbers: list[tuple[str, N.Expr]]  # number locals outside loops (from dims and arguments)
    shapes: dict[str, Shape]
    requires: set[str]  # values that may need a gradient (computed from a differentiable leaf)
    late: set[str] = field(default_factory=set)  # numbers a loop leaves, and those computed from them after it


def on_arguments(cond: N.Expr, optional: frozenset[str] = frozenset()) -> bool:
    """Whether `cond` reads only arguments, lets and `training`, or is whether an optional input (of
    `optional`) is given (`hx != none`): the same at every step of a loop."""
    tested = presence(cond)
    if tested is not None:
        return tested[0] in optional
    if isinstance(cond, N.BoolOp):  # a tuple input's test: `hx_0 != none and hx_1 != none` (`autodiff.inputs`)
        return on_arguments(cond.left, optional) and on_arguments(cond.right, optional)
    return all(n.ref in (N.Ref.ARG, N.Ref.LET, N.Ref.TRAINING) for n in walk(cond) if isinstance(n, N.Name))


def presence(cond: N.Expr) -> tuple[str, bool] | None:
    """`(m, True)` for `m != none`, `(m, False)` for `m == none`; None for another condition."""
    if isinstance(cond, N.Compare) and len(cond.ops) == 1 and cond.ops[0] in ("!=", "=="):
        names = [o for o in cond.operands if isinstance(o, N.Name)]
        if len(names) == 1 and any(isinstance(o, N.NoneLit) for o in cond.operands):
            return names[0].id, cond.ops[0] == "!="
    return None


def choice_alone(stmt: N.If) -> bool:
    """Whether `stmt`'s sides hold only statements a `Choice` takes: no loop, append, `return` or `if`."""
    return not any(isinstance(s, N.For | N.Append | N.Return | N.If) for s in walk_stmts(stmt.body + stmt.orelse))


def unswitched(layer: N.Layer, choices: bool = False) -> N.Layer:
    """`layer` with each `if` on arguments inside a loop's body taken out of the loop, the loop written on
    each side (`for t { a; if relu { h = relu(p) } else { h = tanh(p) } }` is `if relu { for t { a; h =
    relu(p) } } else { for t { a; h = tanh(p) } }`): the condition is the same at every step, and a
    forward that branches on arguments chooses one side's Function (`plan._branch_plan`). A loop whose `if`s
    compare its variable with a bound it does not change is first split there (`loop_split`). `choices`: an `if`
    of a loop holding a loop that `choice_alone` takes stays in its body (a `Choice` of the `Nest`)."""
    assert layer.forward is not None
    optional = frozenset(i.name for i in layer.forward.inputs if i.optional)
    split = split_loops(layer.forward.body, _names_in_use(layer))  # `if t == 0` in a loop: loops in a row
    body = _unswitched(split, optional, choices)
    if body is layer.forward.body:
        return layer
    return layer.with_body(body)


def _names_in_use(layer: N.Layer) -> set[str]:
    """The names `layer`'s forward reads or binds, and those its Function reserves."""
    assert layer.forward is not None
    bound = {s.target for s in walk(layer.forward) if isinstance(s, N.Assign | N.Append)}
    bound |= {t for s in walk(layer.forward) if isinstance(s, N.Unpack) for t, _ in s.targets}
    return bound | _names(layer.forward) | reserved_names(layer)


def _unswitched(body: list[N.Stmt], optional: frozenset[str], choices: bool = False) -> list[N.Stmt]:
    out: list[N.Stmt] = []
    changed = False
    for stmt in body:
        new = _unswitched_loop(stmt, optional, choices) if isinstance(stmt, N.For) else stmt
        if isinstance(stmt, N.If):
            then, orelse = _unswitched(stmt.body, optional, choices), _unswitched(stmt.orelse, optional, choices)
            if then is not stmt.body or orelse is not stmt.orelse:
                new = dataclasses.replace(stmt, body=then, orelse=orelse)
        changed |= new is not stmt
        out.append(new)
    return out if changed else body


def _unswitched_loop(loop: N.For, optional: frozenset[str], choices: bool = False) -> N.Stmt:
    """`loop`, or an `if` on arguments of its body around two copies of it (each with one side)."""
    body = self_decided(_unswitched(loop.body, optional, choices))
    kept = choices and any(isinstance(s, N.For) for s in walk_stmts(body))  # a `Nest`'s `Choice`s stay
    at = _switch(body, optional, kept)
    if at is None or _copies(body, optional, MAX_BRANCH_PLANS, kept) > MAX_BRANCH_PLANS:  # the body keeps its `if`s
        return loop if body is loop.body else dataclasses.replace(loop, body=body)
    branch = body[at]
    assert isinstance(branch, N.If)
    sides = [chosen_side(body, at, holds) for holds in (True, False)]  # its other tests decided (`loop_choices`)
    then, orelse = (_unswitched_loop(dataclasses.replace(loop, body=side), optional, choices) for side in sides)
    return dataclasses.replace(branch, body=[then], orelse=[orelse])


def _switch(body: list[N.Stmt], optional: frozenset[str], kept: bool = False) -> int | None:
    """Where the first `if` on arguments of a loop's body is (None: it has none); `kept`: not one that
    `choice_alone` takes."""
    return next(
        (
            k
            for k, s in enumerate(body)
            if isinstance(s, N.If) and on_arguments(s.cond, optional) and not (kept and choice_alone(s))
        ),
        None,
    )


def _copies(body: list[N.Stmt], optional: frozenset[str], limit: int, kept: bool = False) -> int:
    """How many copies of a loop taking its body's `if`s on arguments out would make (counted up to just past
    `limit`: independent `if`s multiply)."""
    at = _switch(body, optional, kept)
    if at is None:
        return 1
    branch = body[at]
    assert isinstance(branch, N.If)
    count = 0
    for holds in (True, False):
        count += _copies(chosen_side(body, at, holds), optional, limit - count, kept)
        if count > limit:
            break
    return count


def member_choice(layer: N.Layer, optional: set[str], decided: bool = False) -> tuple[N.Expr, N.Layer, N.Layer] | None:
    """For a forward with loops reading an optional member built when arguments say (`param b: [d] if
    bias`): `b != none`, the layer with the members of that condition built (required), and the layer
    without them (`h @ w + b` read as `h @ w`); None when it reads no such member. A forward with loops
    branches on the condition, each side a loop Function with no optional member. `decided`: each
    `if` testing that condition (`if bias`, `if not bias`) is the side it picks in either layer."""
    assert layer.forward is not None
    read = {n.id for s in layer.forward.body for n in walk(s) if isinstance(n, N.Name)}
    member = next((t for t in layer.tensors if t.name in optional and t.name in read and t.cond is not None), None)
    maybe_none = frozenset(a.name for a in layer.args if a.maybe_none)  # `param b: [d] if init != none`
    if member is None or member.cond is None or not on_arguments(member.cond, maybe_none):
        return None
    key = spec_text(member.cond)
    chosen = {t.name for t in layer.tensors if t.cond is not None and spec_text(t.cond) == key}
    built = [dataclasses.replace(t, cond=None) if t.name in chosen else t for t in layer.tensors]
    decide = (lambda b, holds: _decided(b, member.cond, holds)) if decided else (lambda b, holds: b)
    with_members = layer.with_body(decide(layer.forward.body, True), tensors=built)
    body = without_members(decide(layer.forward.body, False), chosen)  # `if` sides reading them left out
    without = layer.with_body(body)
    name = B.name(member.name, member.span, member.kind)
    none = N.NoneLit(member.span)
    none.kind = N.Kind.NONE
    built_test = N.Compare(member.span, ["!="], [name, none])  # the module passes None for a member not built
    built_test.kind = N.Kind.BOOL
    return built_test, with_members, without


def input_choice(layer: N.Layer, name: str) -> tuple[N.Expr, N.Layer, N.Layer]:
    """For a forward with loops reading the optional input `name` outside the `if`s testing it (`h + g` of
    `g: [B, d]? = none`): `g != none`, the layer as it runs with `g` given, and as it runs without it (each
    `if g != none` the side it picks, `h + g` read as `h`, `loop_members.without_members`). The Function
    branches on whether it was given, each side a loop Function reading it as any tensor or not at all."""
    assert layer.forward is not None
    read = next(n for n in walk(layer.forward) if isinstance(n, N.Name) and n.id == name)
    given = B.name(name, read.span, N.Ref.INPUT)
    none = N.NoneLit(read.span)
    none.kind = N.Kind.NONE
    test = N.Compare(read.span, ["!="], [given, none])
    test.kind = N.Kind.BOOL
    body = layer.forward.body
    absent = without_members(_presence_decided(body, name, False), {name})
    return test, layer.with_body(_presence_decided(body, name, True)), layer.with_body(absent)


def _presence_decided(body: list[N.Stmt], name: str, given: bool) -> list[N.Stmt]:
    """`body` with each `if name != none` (or `== none`) as the side it takes when `name` is `given`."""
    out: list[N.Stmt] = []
    for s in body:
        tested = presence(s.cond) if isinstance(s, N.If) else None
        if isinstance(s, N.If) and tested is not None and tested[0] == name:
            out += _presence_decided(s.body if tested[1] == given else s.orelse, name, given)
        elif isinstance(s, N.If):
            then, orelse = _presence_decided(s.body, name, given), _presence_decided(s.orelse, name, given)
            out.append(dataclasses.replace(s, body=then, orelse=orelse))
        elif isinstance(s, N.For):
            out.append(dataclasses.replace(s, body=_presence_decided(s.body, name, given)))
        else:
            out.append(s)
    return out


def proves(side_cond: N.Expr, holds: bool, cond: N.Expr) -> bool:
    """Whether the side of `if side_cond` that runs when it `holds` proves `cond` (a member's condition):
    the same condition (`if bias` of `... if bias`), or its `not` on the other side."""
    if isinstance(cond, N.Not) and not holds:
        return spec_text(cond.operand) == spec_text(side_cond)
    if not holds:
        return False
    if isinstance(side_cond, N.BoolOp) and side_cond.op == "and":  # `if norm_first and bias`
        return spec_text(cond) == spec_text(side_cond) or any(proves(t, True, cond) for t in _operands(side_cond))
    return spec_text(cond) == spec_text(side_cond)


def _operands(cond: N.BoolOp) -> tuple[N.Expr, N.Expr]:
    return cond.left, cond.right


def _decided(body: list[N.Stmt], cond: N.Expr, holds: bool) -> list[N.Stmt]:
    """`body` with each `if` whose sides test `cond` as the side that runs when `cond` `holds`."""
    out: list[N.Stmt] = []
    for s in body:
        if isinstance(s, N.If) and (proves(s.cond, True, cond) or proves(s.cond, False, cond)):
            out += _decided(s.body if proves(s.cond, True, cond) == holds else s.orelse, cond, holds)
        elif isinstance(s, N.If):
            out.append(
                dataclasses.replace(s, body=_decided(s.body, cond, holds), orelse=_decided(s.orelse, cond, holds))
            )
        else:
            out.append(s)
    return out


def has_loop(body: list[N.Stmt]) -> bool:
    return any(isinstance(s, N.For) for s in body)


def plan_loops(
    layer: N.Layer,
    optional: set[str],
    grads_for: Callable[[Tape], list[str]],
    conditions: Callable[[N.If, list[N.Stmt]], N.Expr] | None = None,
) -> LoopPlan:
    """The segments of `layer`'s forward (its loops kept, `unroll.prepared_forward`). `grads_for(tape)`:
    the names of the incoming gradients of a tape's outputs (around the names of its values).
    `conditions(if_stmt, before)`: an `if`'s condition as the Function evaluates it, when the forward's
    `if`s on configuration values are segments of their own (`Choice`)."""
    layer = step_choices.with_sides_flattened(layer)  # a side's numbers and nested `if`s at the body's top
    assert layer.forward is not None
    check_loop_numbers(layer.forward.body)
    refuse_lists_read_while_growing(layer.forward.body)
    return Planner(layer, optional, conditions).run(grads_for)


class Planner:
    def __init__(
        self, layer: N.Layer, optional: set[str], conditions: Callable[[N.If, list[N.Stmt]], N.Expr] | None = None
    ):
        assert layer.forward is not None
        self.layer = layer
        self.conditions = conditions
        self.forward: N.Forward = layer.forward
        self.optional = optional
        self.alias: dict[str, str] = {}  # spec local -> the value name holding it now
        self.lists: set[str] = set()
        self.loops: dict[str, Loop | nest.Nest] = {}  # list local -> the loop appending to it
        self.collecting: dict[str, list[Loop | nest.Nest]] = {}  # list local -> the loops in a row appending to it
        # the loop variables and lists are Python names of the Function too
        self.taken: set[str] = reserved_names(layer)
        self.taken |= {s.var for s in walk_stmts(self.forward.body) if isinstance(s, N.For)}
        self.taken |= {s.target for s in walk_stmts(self.forward.body) if isinstance(s, N.Append)}
        self.shapes: dict[str, Shape] = {
            i.name: declared_shape(i.shape, i.name, own_group=True) for i in self.forward.inputs
        }
        self.shapes.update({t.name: declared_shape(t.shape, t.name) for t in layer.tensors})
        self.leaves = [i.name for i in self.forward.inputs] + [t.name for t in layer.tensors]
        self.differentiable = {i.name for i in self.forward.inputs if i.dtype == "float"}
        self.differentiable |= {t.name for t in layer.params}
        self.requires = set(self.differentiable)
        self.numbers: list[tuple[str, N.Expr]] = []
        self.heads: dict[str, list[str]] = {}  # list local -> the locals holding what is appended before its loop
        self.number_names = NumberNames(self.fresh)  # number locals a loop binds, named apart (`loop_ints`)
        self.buffer_values: dict[str, str] = {}  # an updated buffer -> the value holding its new value now

    def run(self, grads_for) -> LoopPlan:
        segments: list[Segment] = []
        chunk: list[N.Stmt] = []
        for at, stmt in enumerate(self.forward.body):
            if isinstance(stmt, N.For) and not nest.as_nest(stmt):
                numbered = self.number_names.loop(stmt, self.forward.body[at + 1 :])
                stmt = numbered.loop
            else:  # a loop holding a loop: its reads (`loop_ints` refuses numbers it carries or leaves)
                after = read_before_bound(self.forward.body[at + 1 :]) if isinstance(stmt, N.For) else None
                stmt = self.number_names.statement(stmt, after)
            if isinstance(stmt, N.If) and self.conditions is not None:
                if chunk:
                    segments.append(self.straight(chunk))
                    chunk = []
                later = read_before_bound(self.forward.body[at + 1 :])
                choice = self.choice(stmt, self.conditions(stmt, self.forward.body[:at]), later)
                segments.append(choice)
                if choice.returned:  # the rest of the forward is its other side (`plan.returns_closed`)
                    chunk = [N.Return(stmt.span, [B.name(n, stmt.span) for n in choice.returned])]
                    break
            elif isinstance(stmt, N.For):
                if chunk:
                    segments.append(self.straight(chunk))
                    chunk = []
                planned = self.loop(stmt)
                if not nest.as_nest(stmt):
                    loop = planned[-1]
                    assert isinstance(loop, Loop)
                    loop.number_starts, loop.carried_numbers = numbered.starts, numbered.carried
                    loop.numbers_at = len(self.numbers)
                    check_sized_per_step(loop, self.shapes)  # (its steps' values of their own shape: recomputed)
                    self.shapes.update(steady_carried_shapes(loop, self.shapes))
                segments += planned
            elif isinstance(stmt, N.Assign) and isinstance(stmt.value, N.ListExpr) and not stmt.value.items:
                self.lists.add(stmt.target)
            elif _listed_for_a_loop(stmt, self.forward.body[at + 1 :]):
                assert isinstance(stmt, N.Assign) and isinstance(stmt.value, N.ListExpr)
                self.lists.add(stmt.target)  # `L = [a, b]`: as `L = []`, then its items appended before the loop
                chunk += [self.head(N.Append(v.span, stmt.target, stmt.target_span, v)) for v in stmt.value.items]
            elif isinstance(stmt, N.Append) and stmt.target in self.lists and stmt.target not in self.loops:
                chunk.append(self.head(stmt))  # an item before the loop's, or of a list no loop appends to
            elif isinstance(stmt, N.Append):
                raise NotDerivable(
                    stmt.span,
                    "a derived backward collects a list's values in the loop that appends to it (this append"
                    " is outside a loop whose count is known only when forward runs)",
                    HINT,
                )
            else:
                chunk.append(stmt)
        segments.append(self.straight(chunk, returns=True))
        last = segments[-1]
        assert isinstance(last, Straight)
        outputs = last.tape.outputs
        every = Tape([s for seg in segments for s in segment_steps(seg)], outputs, sorted(self.shapes), set())
        plan = LoopPlan(
            segments,
            outputs,
            grads_for(every),
            self.leaves,
            self.differentiable,
            self.numbers,
            self.shapes,
            self.requires,
            self.number_names.late,
        )
        _check_derivable(plan)
        return plan

    def head(self, stmt: N.Append) -> N.Assign:
        """`L.append(v)` before the loop that appends to L (a family's first step on its own, `autodiff.peel`),
        as a local of its own: the first items of what L is joined into."""
        local = self.fresh(f"{stmt.target}_head")
        self.heads.setdefault(stmt.target, []).append(local)
        return N.Assign(stmt.span, local, stmt.target_span, stmt.value)

    # ---------------------------------------------------------------- straight segments

    def straight(self, stmts: list[N.Stmt], returns: bool = False) -> Straight:
        stmts = [self.joined(s) for s in stmts]
        for n in (n for s in stmts for n in walk(s)):
            if isinstance(n, N.Name) and n.id in self.loops:
                raise NotDerivable(
                    n.span,
                    f"a derived backward reads the list '{n.id}', which a loop whose count is known only when"
                    " forward runs appends to, through stack() or cat() only",
                    f"stack({n.id}, dim = ...) and index that",
                )
            if isinstance(n, N.Name) and n.id in self.heads:  # appended to outside loops (in a loop unrolled)
                raise NotDerivable(
                    n.span,
                    f"a derived backward through loops reads the list '{n.id}' by stack() or cat() only",
                    f"stack({n.id}, dim = ...) and index that",
                )
        lin = self.linearizer(stmts, dict(self.alias))
        tape = lin.run()
        self.optional_unread(tape, self.optional)
        for s in tape.steps:
            self.taken.add(s.var)
        self.numbers += tape.numbers
        self.alias.update(tape.env)
        self.buffer_values.update(tape.updates)
        read = self.pseudo_leaves(tape)
        tape = self.finished(tape, read, tape.outputs if returns else [])
        return Straight(tape, returns)

    def joined(self, stmt: N.Stmt) -> N.Stmt:
        """`stmt` with `stack(L, dim = d)` / `cat(L, dim = d)` of a loop's list as the value they join."""

        def go(e):
            read = item_read(e, set(self.loops), self.item_shapes, self.heads_read, self.items_count)
            e, spec = map_children(read, go), e
            mark_item_read(spec, read, e, lambda name: self.loops[name].joins)
            if isinstance(e, N.Call) and e.func in ("stack", "cat") and e.args:
                listed = e.args[0]
                if isinstance(listed, N.Name) and listed.id in self.heads and listed.id not in self.loops:
                    # appended to outside loops only (in a loop unrolled): its items so far
                    e.args = [_items(self.heads[listed.id], listed), *e.args[1:]]
                if isinstance(listed, N.Name) and listed.id in self.loops:
                    dim = e.args[1] if len(e.args) > 1 else next((k.value for k in e.kwargs if k.name == "dim"), None)
                    heads = self.loops[listed.id].heads.get(listed.id, [])
                    owner = self.loops[listed.id]
                    several = listed.id in owner.more or listed.id in owner.before
                    if (heads or several) and e.func == "cat":
                        return self.cat_of_steps(e, listed, dim or B.num(0), heads)
                    join = Join(self.fresh(f"{e.func}ed_{listed.id}"), e.func, dim or B.num(0), listed.id, heads)
                    return self.join_name(join, e.span)
            return e

        return go(stmt)

    def heads_read(self, name: str) -> list[str]:
        """The values appended to the list `name` before its loops, read by their own names."""
        heads = self.loops[name].heads.get(name, [])
        self.alias.update({h: h for h in heads})
        return heads

    def items_count(self, name: str) -> N.Expr | None:
        """The count of the items the loops in a row append to the list `name`, one a step each: the stop of
        a loop over `range(S)` or `range(0, S)`, or of the last of a loop's pieces split where its `if`s turn
        (`loop_split`: `range(0, t_at)`, `range(t_at, S)` of `t_at = minimum(1, S)`), an S proven >= 0
        (`loop_lists.counted_items`); None otherwise."""
        loops = self.collecting.get(name) or [self.loops[name]]
        if any(isinstance(loop, nest.Nest) and not _choices_per_step(loop) for loop in loops):
            return None
        return counted_items(loops, name, self.forward.body)

    def item_shapes(self, name: str) -> list[Shape]:
        """The shapes of every item the list `name` may hold after its loops: appended before them, and each
        step's of each loop in a row appending to it (`loop_lists.item_read`)."""
        owner = self.loops[name]
        items: list[N.Expr] = [B.name(h) for h in owner.heads.get(name, [])]
        for loop in self.collecting.get(name) or [owner]:
            items += [loop.appended[name], *loop.more.get(name, [])]
        return [self.shapes.get(v.id) if isinstance(v, N.Name) else None for v in items]

    def join_name(self, join: Join, span: Span) -> N.Name:
        """`join` recorded on its loop, as the name of the value it is."""
        self.loops[join.items].joins.append(join)
        collecting = self.collecting.get(join.items, [])
        for earlier in collecting[:-1] if collecting and collecting[-1] is self.loops[join.items] else []:
            earlier.later_joins.append(join)  # theirs are its first items
            join.earlier += [earlier.appended[join.items], *earlier.more.get(join.items, [])]
        self.shapes[join.name] = _joined_shape(join, self.loops[join.items], self.shapes)
        self.requires.add(join.name)
        self.alias[join.name] = join.name
        return B.name(join.name, span)

    def cat_of_steps(self, e: N.Call, listed: N.Name, dim: N.Expr, heads: list[str]) -> N.Expr:
        """`cat(L, dim = d)` of a list with items before its loop or several per step, as
        `cat([heads..., flatten(cat([S0, S1, ...], dim = d + 1), d, d + 1)], dim = d)` of Si, the i-th item of
        each step stacked at d (`d - 1` for a d < 0): backward cuts each Si's gradient as stack()'s, and the
        heads' is the cat's own."""
        loop, d = self.loops[listed.id], _int_value(dim)
        why = _not_stacked(loop, listed.id, self.shapes) or (None if d is not None else "its dim is not a number")
        collecting = self.collecting.get(listed.id, [])
        why = why or uneven_steps(collecting, listed.id, _with_steady_items(collecting, listed.id, self.shapes))
        if why is not None and d is not None and alike(self.item_shapes(listed.id)):
            return self.cat_as_stack(e, listed, d, heads)  # every item of one shape (`loop_lists.alike`)
        if why is not None and d is not None and (by_loops := self.cat_by_loops(e, listed, d, heads)) is not None:
            return by_loops
        if why is not None or d is None:
            raise NotDerivable(
                e.span,
                f"cannot derive through this cat() yet: '{listed.id}' gets items before the loop that appends to"
                f" it or several per step, and {why}",
                f"stack({listed.id}, dim = ...) and reshape, or drop @function",
            )
        at = d if d >= 0 else d - 1
        stacks: list[N.Expr] = []
        for i in range(1 + len(loop.more.get(listed.id, []))):
            join = Join(self.fresh(f"stacked_{listed.id}"), "stack", B.num(at), listed.id, of_step=i)
            stacks.append(self.join_name(join, e.span))
        steps = stacks[0] if len(stacks) == 1 else _cat(stacks, B.num(at + 1), e)
        steps = B.call("flatten", steps, B.num(at), B.num(at + 1), span=e.span)
        if not heads:
            return steps
        self.alias.update({h: h for h in heads})
        return _cat([*_items(heads, listed).items, steps], dim, e)

    def cat_by_loops(self, e: N.Call, listed: N.Name, d: int, heads: list[str]) -> N.Expr | None:
        """`cat(L, dim = d)` of a list loops in a row append to, unlike counts of items a step or items of
        unlike shapes at one place of a step, as `cat([heads..., P0, P1, ...], dim = d)` of Pk, the items of the
        k-th loop: `flatten(cat([S0, S1, ...], dim = d + 1), d, d + 1)` of Si, the i-th item of each of its steps
        stacked at d (`d - 1` for a d < 0, `Join.alone`), cut out of the list by the counts of the loops
        before it and their items a step (`Loop.before_per`). None where a loop holds a loop, or what a step
        appends has a shape known only when forward runs."""
        name = listed.id
        collecting = self.collecting.get(name, [])
        if not collecting or collecting[-1] is not self.loops[name]:
            return None
        shapes = _with_steady_items(collecting, name, self.shapes)
        if any(isinstance(loop, nest.Nest) or _not_stacked(loop, name, shapes) for loop in collecting):
            return None
        at = d if d >= 0 else d - 1
        pieces: list[N.Expr] = []
        for k, loop in enumerate(collecting):
            assert isinstance(loop, Loop)
            stacks: list[N.Expr] = []
            for i, item in enumerate([loop.appended[name], *loop.more.get(name, [])]):
                join = Join(self.fresh(f"stacked_{name}"), "stack", B.num(at), name, of_step=i, alone=k)
                stacks.append(self.join_name(join, e.span))
                assert isinstance(item, N.Name)  # (`_not_stacked`)
                self.shapes[join.name] = stacked_shape(shapes.get(item.id), at, f"_steps_{join.name}")
            steps = stacks[0] if len(stacks) == 1 else _cat(stacks, B.num(at + 1), e)
            pieces.append(B.call("flatten", steps, B.num(at), B.num(at + 1), span=e.span))
        self.alias.update({h: h for h in heads})
        return _cat([*_items(heads, listed).items, *pieces], B.num(d), e)

    def cat_as_stack(self, e: N.Call, listed: N.Name, d: int, heads: list[str]) -> N.Expr:
        """`cat(L, dim = d)` of a list whose items all have one shape, as `flatten(stack(L, dim = d), d, d + 1)`
        (`d - 1` and `d` for a d < 0): a stack's join, whose gradient each loop appending to L cuts its
        items' of (however many a step, a loop holding a loop among them)."""
        at = d if d >= 0 else d - 1
        self.alias.update({h: h for h in heads})
        join = Join(self.fresh(f"stacked_{listed.id}"), "stack", B.num(at), listed.id, heads)
        stacked = self.join_name(join, e.span)
        return B.call("flatten", stacked, B.num(at), B.num(at + 1), span=e.span)

    # ---------------------------------------------------------------- `if`s on configuration values

    def choice(self, stmt: N.If, cond: N.Expr, later: set[str]) -> Choice:
        """Each side of `stmt` as a tape from the values before it; the locals either side binds merged
        (`later`: the names the statements after it may read before binding them, `read_before_bound`)."""
        returning = _checked_sides(stmt)
        before = dict(self.alias)
        sides = _side_bodies(stmt, cond, self.layer.tensors)
        tapes = [self.side_tape(stmt, body, given, before) for body, given in sides]
        merged, names = self.merged_locals(tapes, before, later)
        returned = self.merged_returns(stmt, tapes, merged, names) if returning else []
        finished = [self.finished_side(tape, [values[k] for values in merged.values()]) for k, tape in enumerate(tapes)]
        self.bind_merged(merged, names)
        return Choice(cond, stmt.span, finished[0], finished[1], merged, returned)

    def side_tape(self, stmt: N.If, body: list[N.Stmt], given: frozenset[str], before: dict[str, str]) -> Tape:
        """One side of `stmt` linearized from the values before it (`given`: the optional inputs its
        condition proves given, which it may read)."""
        tape = self.linearizer(body, dict(before), given=given).run()
        self.optional_unread(tape, self.optional - given)
        if tape.numbers:
            raise NotDerivable(
                stmt.span,
                f"a derived backward takes this `if` on its own (more than {MAX_BRANCH_PLANS} combinations of"
                " branches): its sides bind numbers (not derived yet)",
                "compute the number before the `if`, or write a backward block",
            )
        self.taken |= {s.var for s in tape.steps}
        return tape

    def merged_locals(
        self, tapes: list[Tape], before: dict[str, str], later: set[str]
    ) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
        """The locals the sides bind (and not both to the value before): the value each side leaves, by a
        fresh name; and that name, by local. A local one side binds is read after the `if` only where that
        side ran (by an `if` nested in it, `nested_ifs`): None when the other side ran."""
        then_env, else_env = tapes[0].env, tapes[1].env
        merged: dict[str, tuple[str, str]] = {}
        names: dict[str, str] = {}
        for local in dict.fromkeys([*then_env, *else_env]):
            if (local not in then_env or local not in else_env) and local not in later:
                continue
            then, orelse = then_env.get(local, UNBOUND), else_env.get(local, UNBOUND)
            if then == before.get(local) == orelse:
                continue
            names[local] = self.fresh(local)
            merged[names[local]] = (then, orelse)
        return merged, names

    def merged_returns(
        self, stmt: N.If, tapes: list[Tape], merged: dict[str, tuple[str, str]], names: dict[str, str]
    ) -> list[str]:
        """The outputs both sides return, merged as `out`, `out1`, ... (added to `merged` and `names`)."""
        if any(not (side and isinstance(side[-1], N.Return)) for side in (stmt.body, stmt.orelse)) or any(
            not isinstance(o, N.Name) for t in tapes for o in t.outputs
        ):
            raise NotDerivable(
                stmt.span,
                f"a derived backward takes this `if` on its own (more than {MAX_BRANCH_PLANS} combinations of"
                " branches): one side returns and the other does not, or it returns what is not a tensor"
                " (not derived yet)",
                CHOICE_HINT,
            )
        returned = []
        for then, orelse in zip(tapes[0].outputs, tapes[1].outputs):
            assert isinstance(then, N.Name) and isinstance(orelse, N.Name)
            returned.append(self.fresh("out"))
            merged[returned[-1]] = (then.id, orelse.id)
            names[returned[-1]] = returned[-1]
        return returned

    def finished_side(self, tape: Tape, left: list[str]) -> Tape:
        """A side's tape with the values it leaves in the merged names (`left`) as its outputs."""
        outputs: list[N.Expr] = [B.name(v) for v in left if v != UNBOUND]
        read = self.pseudo_leaves(dataclasses.replace(tape, outputs=outputs))
        return self.finished(tape, read, outputs)

    def bind_merged(self, merged: dict[str, tuple[str, str]], names: dict[str, str]) -> None:
        """Each merged local by its merged name from here on: the shape both sides agree on, and needing a
        gradient if either side's value does."""
        for local, name in names.items():
            first, second = merged[name]
            shapes = [self.shapes.get(v) for v in (first, second) if v != UNBOUND]
            self.shapes[name] = shapes[0] if all(shape == shapes[0] for shape in shapes) else None
            if first in self.requires or second in self.requires:
                self.requires.add(name)
            self.alias[local] = name

    def optional_unread(self, tape: Tape, optional: set[str] | frozenset[str]) -> None:
        """NotDerivable where a segment of an `if` reads an optional input that no `if` proves given."""
        if self.conditions is None:  # a forward with loops refuses them before (`plan._loop_plan`)
            return
        for step in tape.steps:
            read = sorted(step.reads & set(optional))
            if read:
                raise NotDerivable(
                    step.expr.span,
                    f"a derived backward reads the optional input '{read[0]}' only inside"
                    f" `if {read[0]} != none {{ ... }}`",
                    f"test `{read[0]} != none` around this use (or write a backward block)",
                )

    # ---------------------------------------------------------------- loops

    def loop(self, stmt: N.For) -> list[Segment]:
        it = stmt.iter
        if not (isinstance(it, N.Call) and it.func == "range"):
            raise NotDerivable(it.span, "a derived backward cannot go through a loop over sub-layers", HINT)
        if nest.as_nest(stmt):
            return nest.planned_nest(self, stmt)
        for s in walk_stmts(stmt.body):
            if isinstance(s, N.If):
                why, hint = _if_in_loop_refusal(s.cond, stmt, frozenset(self.optional))
                raise NotDerivable(
                    s.span,
                    "cannot derive through this `if` yet: it is in the body of a loop whose count is known only"
                    f" when forward runs{why}",
                    hint,
                )
            if isinstance(s, N.Append) and s.target not in self.lists:
                raise NotDerivable(
                    s.span, "a derived backward through this loop collects into a list made empty before it", HINT
                )
            if isinstance(s, N.Assign) and isinstance(s.value, N.ListExpr):
                raise NotDerivable(s.span, "a derived backward collects into a list made before the loop", HINT)
        assigned = {s.target for s in stmt.body if isinstance(s, N.Assign) and s.value.kind == "tensor"}
        assigned |= {t for s in stmt.body if isinstance(s, N.Unpack) for t, _ in s.targets}
        carried = {local: self.fresh(local) for local in self.alias if local in assigned}
        buffers = {b: self.fresh(b) for b in loop_buffers.updated_in_body(stmt)}  # carried too (`loop_buffers`)
        env = dict(self.alias) | carried
        refuse_items_in_loop(stmt, set(self.loops))  # `outs[-1]` of an earlier loop's list (`loop_lists`)
        lin = self.linearizer(self.unit_sliced(stmt), env, loop_var=stmt.var)
        lin.lists = {name: [] for name in self.lists}
        lin.updates |= buffers  # a step reads the value the step before left
        tape, next_values = loop_buffers.carried_buffers(lin.run(), buffers, self.fresh)
        for s in tape.steps:
            self.taken.add(s.var)
        appended: dict[str, N.Expr] = {}
        more: dict[str, list[N.Expr]] = {}  # a step's second item on (a bidirectional layer's two states)
        for name, items in lin.lists.items():
            if items:
                appended[name] = items[0]
            if len(items) > 1:
                more[name] = items[1:]
        heads = {name: [self.alias[h] for h in self.heads.pop(name)] for name in appended if name in self.heads}
        updates = {carried[local]: tape.env[local] for local in carried}
        updates |= {c: next_values[b] for b, c in buffers.items()}
        firsts = {c: self.alias[local] for local, c in carried.items()}
        firsts |= {c: self.buffer_values.get(b, b) for b, c in buffers.items()}
        starts = {name: self.shapes.get(first) for name, first in firsts.items()}
        self.shapes.update(carried_shapes(tape.steps, starts, updates, self.shapes))
        locals_ = {c: local for local, c in carried.items()} | {c: b for b, c in buffers.items()}
        _check_carried_shapes(tape, starts, updates, self.shapes, locals_, stmt.span)
        hoisted, tape = self.hoisted(tape, set(carried.values()) | set(buffers.values()) | {stmt.var})
        picks = self.picks(tape, it, stmt.var)
        tape = dataclasses.replace(tape, steps=[s for s in tape.steps if s.var not in picks])
        # A carried value needs a gradient if it starts as one that does, or a step computes it from one.
        self.requires |= {c for local, c in carried.items() if self.alias[local] in self.requires}
        for _ in range(len(carried) + 1):
            self.requires = _requiring(tape, self.requires)
            self.requires |= {c for c, v in updates.items() if v in self.requires}
        outputs = [B.name(v) for v in updates.values()] + list(appended.values())
        outputs += [item for items in more.values() for item in items]
        read = self.pseudo_leaves(dataclasses.replace(tape, outputs=outputs))  # `h = w`: w's gradient too
        tape = self.finished(tape, read | set(carried.values()) | set(buffers.values()) | set(picks), outputs)
        loop = Loop(
            stmt.var,
            list(it.args),
            it.span,
            tape,
            firsts,
            updates,
            appended,
            numbers=list(tape.numbers),
            picks=picks,
            shapes_kept={carried[local]: local for local in stmt.shapes_kept if local in carried},
            heads=heads,
            more=more,
            buffers=buffers,
            carried_locals=locals_,
        )
        self.buffer_values |= buffers  # after the loop, the carried name holds the last step's value
        for name in appended:
            if name in self.loops:
                self.continue_list(loop, name)
            self.collecting.setdefault(name, []).append(loop)
            self.loops[name] = loop
        for local, c in carried.items():
            self.alias[local] = c  # after the loop, the carried name holds the last step's value
        return [hoisted, loop] if hoisted is not None else [loop]

    def unit_sliced(self, stmt: N.For) -> list[N.Stmt]:
        """`stmt`'s body with `x[t:t + 1]` over the loop's count as `unsqueeze(x[t], 0)` (`loop_lists`)."""
        return unit_slices(
            stmt,
            lambda name: self.shapes.get(self.alias.get(name, name)),
            lambda e: nonnegative_int(e, self.forward.body),
            lambda stop, dim: stop_at_most(stop, dim, self.forward.body),
        )

    def continue_list(self, loop: Loop | nest.Nest, name: str) -> None:
        """`loop` appending to the list `name` after an earlier loop did (either may hold a loop): the same
        list, its items after the earlier loops' (the heads first), each loop's items a step recorded."""
        earlier = self.loops[name]
        loop.heads[name] = list(earlier.heads.get(name, []))
        loop.before[name] = [*earlier.before.get(name, []), list(earlier.bounds)]
        loop.before_per[name] = [*earlier.before_per.get(name, []), 1 + len(earlier.more.get(name, []))]
        earlier.continued.add(name)

    def hoisted(self, tape: Tape, variant: set[str]) -> tuple[Straight | None, Tape]:
        """The steps of a loop's body that every step computes alike (from no carried value, no loop
        variable, nothing drawn at random), as a straight segment before the loop; and the rest."""
        variant = variant | {n for n, _ in tape.numbers}
        hoisted, kept = [], []
        for s in tape.steps:
            if s.reads & variant or s.op is not None and s.op.cost == "random":
                variant.add(s.var)
                kept.append(s)
            else:
                hoisted.append(s)
        if not hoisted:
            return None, tape
        before = dataclasses.replace(tape, steps=hoisted, numbers=[], outputs=[], env={})
        straight = Straight(self.finished(before, self.pseudo_leaves(before), []))
        return straight, dataclasses.replace(tape, steps=kept)

    def picks(self, tape: Tape, it: N.Call, var: str) -> dict[str, Step]:
        """The body's `x[t]` (or `x[T - 1 - t]`, a reverse direction's) of a value from outside the loop whose
        dim the loop runs over, all of it (`for t in range(T)` over `[T, B, n]`, or `[..., T, n]` at dim -2):
        each step's gradient of it is one slice of x's."""
        if len(it.args) != 1:
            return {}
        count = _count_dim(list(it.args))
        inside = {s.var for s in tape.steps}
        out: dict[str, Step] = {}
        for s in tape.steps:
            if s.op is None or s.op.name != "select":
                continue
            src, dim, index = s.args["input"], s.args["dim"], s.args["index"]
            if not (picked_forward(index, var) or picked_backward(index, var, count)) or not isinstance(src, N.Name):
                continue
            shape = self.shapes.get(src.id)
            if src.id in inside or shape is None or not isinstance(dim, N.Num):
                continue
            at = int(dim.value)
            after = len(shape) - 1 - shape.index("...") if "..." in shape else len(shape)
            if "..." in shape and not -after <= at < 0:
                continue  # only a dim after the `...` group, counted from the end
            if -len(shape) <= at < len(shape) and shape[at] == count:
                out[s.var] = s
                self.shapes[s.var] = step_shape(s, self.shapes)
                if src.id in self.requires:
                    self.requires.add(s.var)
        return out

    # ---------------------------------------------------------------- shared

    def linearizer(
        self, stmts: list[N.Stmt], env: dict[str, str], loop_var: str | None = None, given: frozenset[str] = frozenset()
    ) -> Linearizer:
        """`given`: the optional inputs the `if`s around `stmts` prove given."""
        forward = dataclasses.replace(self.forward, body=stmts)
        layer = dataclasses.replace(self.layer, forward=forward, backward=None)
        lin = Linearizer(layer, self.optional - given)
        lin.taken |= self.taken | set(env.values()) | ({loop_var} if loop_var else set())
        lin.env = dict(env)
        lin.updates = dict(self.buffer_values)  # a buffer updated before: its new value (no gradient)
        return lin

    def pseudo_leaves(self, tape: Tape) -> set[str]:
        """The values of earlier segments that `tape` reads (leaves besides the layer's)."""
        own = {s.var for s in tape.steps} | set(self.leaves)
        names = {n for s in tape.steps for n in s.reads}
        names |= {n.id for o in tape.outputs for n in walk(o) if isinstance(n, N.Name)}
        values = set(self.alias.values()) | set(self.shapes)
        return {n for n in names if n not in own and n in values}

    def finished(self, tape: Tape, read: set[str], outputs: list[N.Expr]) -> Tape:
        """`tape` with the values it reads from earlier segments as leaves, and the given outputs."""
        extra = sorted(read - set(self.leaves))
        shapes = dict(self.shapes)
        for s in tape.steps:
            shapes[s.var] = step_shape(s, shapes)
        self.shapes.update({s.var: shapes[s.var] for s in tape.steps})
        requires = self.requires | {v for v in extra if v in self.requires}
        diff = set(self.differentiable) | {v for v in extra if v in requires}
        tape = dataclasses.replace(
            tape, leaves=self.leaves + extra, differentiable=diff, outputs=list(outputs), shapes=shapes
        )
        self.requires |= _requiring(tape, self.requires)
        return tape

    def fresh(self, hint: str) -> str:
        name, k = hint, 1
        while name in self.taken or name in self.shapes:
            name, k = f"{hint}{k}", k + 1
        self.taken.add(name)
        return name


def _checked_sides(stmt: N.If) -> bool:
    """Whether a side of `stmt` ends in a `return`; NotDerivable at a statement a side cannot hold yet."""
    last = {id(side[-1]) for side in (stmt.body, stmt.orelse) if side and isinstance(side[-1], N.Return)}
    for s in walk_stmts(stmt.body + stmt.orelse):
        if isinstance(s, N.Stmt) and type(s) in _NOT_IN_A_SIDE and id(s) not in last:
            what, hint = _NOT_IN_A_SIDE[type(s)]
            raise NotDerivable(
                s.span,
                f"a derived backward through more than {MAX_BRANCH_PLANS} combinations of `if` branches takes"
                f" each `if` on its own: {what} is not derived that way yet",
                hint,
            )
    return bool(last)


# what a side of an `if` taken on its own cannot hold yet, and the hint
_NOT_IN_A_SIDE: dict[type, tuple[str, str]] = {
    N.If: (
        "an `if` inside a side of one (a nested `if`)",
        "test both conditions in one `if` after it (`if a and b { ... }`), or write a backward block",
    ),
    N.For: ("a loop inside one", CHOICE_HINT),
    N.Return: ("a `return` before the end of one's side", "return at the end of the side, or write a backward block"),
    N.Append: ("an append inside one", CHOICE_HINT),
}


def _side_bodies(stmt: N.If, cond: N.Expr, tensors: list[N.Tensor]) -> list[tuple[list[N.Stmt], frozenset[str]]]:
    """Each side's statements, with the optional input the condition proves given there (`if m != none`)
    and the optional members it proves built (`if bias` of `param b: [n] if bias`)."""
    tested = presence(cond)
    out = []
    for holds, body in ((True, stmt.body), (False, stmt.orelse)):
        given = {tested[0]} if tested is not None and tested[1] == holds else set()
        if holds:  # `if m != none and ...`
            given |= {t[0] for t in map(presence, and_terms(cond)) if t is not None and t[1]}
        given |= {t.name for t in tensors if t.cond is not None and proves(stmt.cond, holds, t.cond)}
        out.append((body, frozenset(given)))
    return out


def _requiring(tape: Tape, requires: set[str]) -> set[str]:
    """The steps of `tape` computed from a value in `requires` by an op with a derivative."""
    out = set(requires)
    for step in tape.steps:
        if step.op is None or not step.op.grads:
            continue
        operands = [i for a in step.args.values() for i in (a.items if isinstance(a, N.ListExpr) else [a])]
        if any(isinstance(a, N.Name) and a.id in out for a in operands):
            out.add(step.var)
    return out


def _check_derivable(plan: LoopPlan) -> None:
    """Derive each segment once, so that what cannot be derived is reported at plan time."""
    for seg in plan.segments:
        for tape in (
            seg.sides() if isinstance(seg, Choice) else seg.tapes() if isinstance(seg, nest.Nest) else [seg.tape]
        ):
            derive(tape, [f"_g{k}" for k in range(len(tape.outputs))])


def _choices_per_step(loop: nest.Nest) -> bool:
    """Whether the nest `loop` is a loop choosing a side per step (`step_choices`: a nest of no inner loop),
    whose steps append one item each as a loop's do."""
    return not any(isinstance(seg, (Loop, nest.Nest)) for seg in loop.segments)


def _items(locals_: list[str], listed: N.Name) -> N.ListExpr:
    """The list `listed` as the locals holding its items (`[finals_head, finals_head_]`)."""
    items: list[N.Expr] = []
    for local in locals_:
        item = B.name(local, listed.span)
        item.ref, item.kind = N.Ref.LOCAL, N.Kind.TENSOR
        items.append(item)
    out = N.ListExpr(listed.span, items)
    out.kind = listed.kind
    return out


def picked_forward(index: N.Expr, var: str) -> bool:
    """`x[t]` of the loop's variable."""
    return isinstance(index, N.Name) and index.id == var


def picked_backward(index: N.Expr, var: str, count: str | None) -> bool:
    """`x[T - 1 - t]` of the loop's variable over `range(T)`: the steps in reverse."""
    return count is not None and spec_text(index) == f"{count} - 1 - {var}"


def read_before_bound(body: list[N.Stmt], after: frozenset[str] = frozenset()) -> set[str]:
    """The names `body` may read before binding them (`after`: those read after it): a local an `if` binds
    on one side only and `body` binds before each read is not merged (LSTM's `h0, c0 = hx`)."""
    live = set(after)
    for stmt in reversed(body):
        if isinstance(stmt, N.Return):
            live = _names(stmt)
        elif isinstance(stmt, (N.Assign, N.Unpack)):
            live -= {stmt.target} if isinstance(stmt, N.Assign) else {t for t, _ in stmt.targets}
            live |= _names(stmt.value)
        elif isinstance(stmt, N.If):
            sides = [read_before_bound(side, frozenset(live)) for side in (stmt.body, stmt.orelse)]
            live = _names(stmt.cond) | sides[0] | sides[1]
        elif isinstance(stmt, N.For):  # none or more steps, each may read what a step before bound
            while (more := read_before_bound(stmt.body, frozenset(live)) | _names(stmt.iter)) - live:
                live |= more
        else:
            live |= _names(stmt)
    return live


def _names(node: N.Node) -> set[str]:
    return {n.id for n in walk(node) if isinstance(n, N.Name)}


def walk_stmts(body: list[N.Stmt]):
    """Every statement of `body`, in loops' bodies too."""
    for s in body:
        yield s
        if isinstance(s, N.For):
            yield from walk_stmts(s.body)
        elif isinstance(s, N.If):
            yield from walk_stmts(s.body)
            yield from walk_stmts(s.orelse)


def _joined_shape(join: Join, loop: Loop | nest.Nest, shapes: dict[str, Shape]) -> Shape:
    """`stack(L, dim = d)`'s shape: an item's with a dim of the step count at d (`_steps`, no dim of
    the spec); None for `cat`, an item of unknown shape, or a dim among or before an item's `...` group
    (`stack(L, dim = -2)` of [..., n] items is [..., T, n])."""
    item = loop.appended.get(join.items)
    shape = shapes.get(item.id) if isinstance(item, N.Name) else None
    d = join.dim
    if join.func != "stack" or shape is None or not isinstance(d, N.Num):
        return None
    at = int(d.value) if int(d.value) >= 0 else len(shape) + 1 + int(d.value)
    if "..." in shape and (int(d.value) >= 0 or at <= shape.index("...")):  # a dim after the `...` group only
        return None
    count = _count_dim(loop.bounds) or "_steps"  # `range(T)`: T items (a later loop over T picks them)
    # items before the loop's (appended before it, or by loops before it), or several per step: a count of its own
    if join.heads or join.items in loop.more or join.items in loop.before:
        count = f"_steps_{join.name}"
    return (*shape[:at], count, *shape[at:]) if 0 <= at <= len(shape) else None


def _cat(items: list[N.Expr], dim: N.Expr, at: N.Call) -> N.Call:
    """`cat(items, dim = dim)`, where the call `at` is written."""
    listed = N.ListExpr(at.span, items)
    listed.kind = N.Kind.LIST
    out = N.Call(at.span, "cat", at.func_span, [listed], [N.Keyword("dim", dim, at.span)])
    out.kind = N.Kind.TENSOR
    return out


def _listed_for_a_loop(stmt: N.Stmt, after: list[N.Stmt]) -> bool:
    """Whether `stmt` is `L = [a, ...]` of a list a loop after it appends to (its items are the heads of
    what that loop's appends join)."""
    if not isinstance(stmt, N.Assign) or not isinstance(stmt.value, N.ListExpr) or not stmt.value.items:
        return False
    loops = [s for s in after if isinstance(s, N.For)]
    return any(isinstance(s, N.Append) and s.target == stmt.target for loop in loops for s in walk_stmts(loop.body))


def _int_value(e: N.Expr) -> int | None:
    """The int `e` writes (`-1`: a minus of a number), else None."""
    if isinstance(e, N.UnaryOp) and e.op == "-" and (inner := _int_value(e.operand)) is not None:
        return -inner
    return int(e.value) if isinstance(e, N.Num) and isinstance(e.value, int) else None


def _not_stacked(loop: Loop | nest.Nest, items: str, shapes: dict[str, Shape]) -> str | None:
    """Why the items each step appends to `items` cannot be stacked step by step: a shape known only when
    forward runs (a carried value growing each step), or a loop holding a loop; None when they can."""
    if isinstance(loop, nest.Nest):
        return "the loop appending to it holds a loop whose count is known only when forward runs"
    each = [loop.appended[items], *loop.more.get(items, [])]
    if any(not isinstance(v, N.Name) or (shapes.get(v.id) or steady_shape(loop, v.id, shapes)) is None for v in each):
        return "the size of what a step appends to it is known only when forward runs (it may differ from step to step)"
    return None


def _with_steady_items(loops: list, items: str, shapes: dict[str, Shape]) -> dict[str, Shape]:
    """`shapes`, with the shape of each item `loops` append to `items` that the plan does not know but that
    is the same at every step (`loop_ints.steady_shape`: a step summing a slice of a varying size)."""
    out = dict(shapes)
    for loop in loops:
        for v in [loop.appended[items], *loop.more.get(items, [])] if isinstance(loop, Loop) else []:
            if isinstance(v, N.Name) and out.get(v.id) is None:
                out[v.id] = steady_shape(loop, v.id, shapes)
    return out


def _count_dim(bounds: list[N.Expr]) -> str | None:
    """The dim a loop over `range(count)` makes of its steps, as shapes write it; None for another range."""
    return dim_text(bounds[0]) if len(bounds) == 1 else None


def _if_in_loop_refusal(cond: N.Expr, loop: N.For, optional: frozenset[str]) -> tuple[str, str]:
    """Why an `if` in the body of a loop kept as one is refused (after the message), and the hint: too many
    copies of the loop, a test of its variable the loop is not split at (`loop_split`), or a condition on
    values that differ from step to step."""
    hint = "choose with where(cond, a, b), or put the `if` around the loop"
    per_step = step_choices.refusal(loop)
    if per_step is not None and not on_arguments(cond, optional):
        return per_step  # not a choice per step (`step_choices`), nor split where it turns (`loop_split`)
    if on_arguments(cond, optional):
        return (
            f" (taking the body's `if`s on arguments out of it would make more than {MAX_BRANCH_PLANS} copies of"
            f" the loop){per_step[0] if per_step else ''}",
            per_step[1] if per_step else hint,
        )
    return unsplit_reason(loop, cond) or ("", hint)


def _check_carried_shapes(
    tape: Tape,
    starts: dict[str, Shape],
    updates: dict[str, str],
    shapes: dict[str, Shape],
    locals_: dict[str, str],
    span: Span,
) -> None:
    """Refuse a carried value whose shape changes at every step: the Function keeps each carried value's
    steps at one shape (the start may be smaller: `h = new_zeros(x, [H])` then `[B, H]`). `locals_`: each
    carried name's spec local; `span`: the loop's."""
    for carried, taken in reshaped_after_first_step(tape.steps, starts, updates, shapes).items():
        step = tape.step(updates[carried])
        shown = " -> ".join(f"[{', '.join(map(str, shape or ()))}]" for shape in taken[:2])
        raise NotDerivable(
            step.expr.span if step is not None else span,
            f"a derived backward keeps the steps of a value a loop carries at one shape, but '{locals_[carried]}'"
            f" changes shape at every step ({shown}, ...; not derived yet)",
            "give it the same shape at every step, or drop @function (autograd derives the loop)",
        )
