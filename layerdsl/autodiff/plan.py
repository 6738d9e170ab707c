"""Derivation as a stage: for each `@function` layer, the plan of its backward.

A plan holds what the Function emitter writes out: the tape of the forward (with static shapes), the
backward's incoming gradients, and the backward itself, derived by reverse mode or written in the spec.
What cannot be derived is reported here as located diagnostics, so `layerdsl check` finds it without
emitting anything: every independent one of every layer (a value that cannot be derived goes on as opaque,
and the branches of an `if` are each checked).

A forward with `if`s on configuration values (arguments, lets, `training`, dims, flag inputs) is planned
once per branch: a `BranchPlan` holds the condition and the plan of each side, and the Function chooses the
same side in forward, setup_context and backward. Each side is a straight-line forward, derived as any other.
Past MAX_BRANCH_PLANS combinations, each `if` is a segment of its own instead (`loops.Choice`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass

from layerdsl.autodiff.eval_dropout import calls_dropout_in_a_loop, split_on_training, training
from layerdsl.autodiff.inline import Inlined, LayerNotGiven, counted_inlining
from layerdsl.autodiff.inputs import with_tuples_split, without_callable_sides
from layerdsl.autodiff.local_sizes import sub_requires_dropped
from layerdsl.autodiff.loop_buffers import carries_its_updates, with_carried_locals
from layerdsl.autodiff.loop_members import members_to_choose, read_outside_ifs
from layerdsl.autodiff.loops import (
    CHOICE_HINT,
    MAX_BRANCH_PLANS,
    UNBOUND,
    Choice,
    LoopPlan,
    choice_alone,
    has_loop,
    input_choice,
    member_choice,
    on_arguments,
    plan_loops,
    proves,
    unswitched,
    walk_stmts,
)
from layerdsl.autodiff.member_locals import members_as_locals
from layerdsl.autodiff.nest import Nest
from layerdsl.autodiff.nest_pairs import with_loops_paired
from layerdsl.autodiff.nested_ifs import (
    MAX_SIZE_SIDES,
    flattened,
    measures_a_local,
    member_reads_chosen,
    sizes_by_side,
    unfollowed_size,
)
from layerdsl.autodiff.operation_count import MAX_TAPE_STEPS, TooManyOperations, too_long
from layerdsl.autodiff.peel import rest_under_first
from layerdsl.autodiff.reverse import Backward, GradStmt, derive
from layerdsl.autodiff.shapes import infer_shapes
from layerdsl.autodiff.sub_calls import CallPlan, composed_plan, functions_to_add, save_inputs_refused
from layerdsl.autodiff.sub_functions import deriving_sub
from layerdsl.autodiff.sub_requires import decided_checks, reads_unfollowed, unchecked_origins
from layerdsl.autodiff.tape import Linearizer, NotDerivable, Tape, refusal
from layerdsl.autodiff.unroll import Measured, measured_names, prepared_forward
from layerdsl.diagnostics import Diagnostic, Span
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import and_terms, spec_text
from layerdsl.ir.visit import clone, map_children, statements, walk
from layerdsl.language.naming import fresh_name
from layerdsl.language.ops import OPS
from layerdsl.semantics.scopes import Namespace


@dataclass
class BackwardPlan:
    """What one `@function` layer's autograd.Function computes, before it is written as Python."""

    tape: Tape  # the forward as single operations, with static shapes
    grads: list[str]  # the backward's incoming gradients, one per output, as the backward names them
    incoming: dict[str, str]  # each incoming gradient -> the forward value it is the gradient of
    # Reverse mode from the outputs' gradients; None when the spec writes the backward. The emitter may
    # derive again with the gradients of intermediates it returns too (to save them): those go through the
    # same steps, so what could not be derived has been reported here.
    derived: Backward | None
    written: list[GradStmt]  # the spec's backward block over tape vars; empty when derived


@dataclass
class BranchPlan:
    """A forward that branches on configuration values: the plan of each side of its first `if`."""

    cond: N.Expr  # over arguments, lets, `training` and dims (number locals written out)
    then: Plan
    orelse: Plan

    def sides(self) -> list[BackwardPlan]:
        """Every straight-line plan, then-sides first."""
        return [p for side in (self.then, self.orelse) for p in straight_plans(side)]


Plan = BackwardPlan | BranchPlan | LoopPlan | CallPlan  # CallPlan: the subs' Functions composed (`sub_calls`)


def straight_plans(plan: Plan) -> list[BackwardPlan]:
    """The straight-line plans of `plan`: itself, or every side of its branches (none for a loop's, nor for
    the composition of its subs' Functions)."""
    if isinstance(plan, LoopPlan | CallPlan):
        return []
    return plan.sides() if isinstance(plan, BranchPlan) else [plan]


def plan_backwards(
    files: list[N.SpecFile], layers: Mapping[str, N.Layer] | None = None
) -> tuple[dict[str, Plan], list[Diagnostic]]:
    """The plan of every `@function` layer, by layer name (`Namespace.key`: `folder/Name` for a name also
    defined in a shallower folder), and every problem that keeps one from being derived (each location once:
    a sub-layer's problem is not repeated by each layer that uses it). `layers`: every layer a sub may be
    built from (by default, those of `files` each file's folder sees)."""
    plans: dict[str, Plan] = {}
    problems: list[Diagnostic] = []
    reported: set[tuple[str, int, int, str]] = set()
    namespace = Namespace(layer for f in files for layer in f.layers)
    deriving: dict[int, bool] = {}  # id of a sub's layer -> whether its own backward derives
    for f in files:
        for layer in f.layers:
            if not layer.is_function:
                continue
            seen = layers if layers is not None else namespace.visible(f.path)
            inlined = Inlined(layer)
            try:
                inlined = counted_inlining(layer, seen)  # subs' forwards written into this one
                plans[namespace.key(layer)] = plan_inlined(inlined)
            except LayerNotGiven:  # the checker reports the sub's layer
                continue
            except NotDerivable as exc:
                if isinstance(exc, TooManyOperations):  # counted before inlining: the sub it is in
                    inlined = Inlined(layer, origins=exc.origins)
                # a forward that only calls subs whose own backwards derive: their Functions composed
                if (composed := composed_instead(layer, seen, deriving)) is not None:
                    if (refused := save_inputs_refused(composed)) is None:
                        plans[namespace.key(layer)] = composed
                    else:
                        problems.append(
                            Diagnostic(layer.path, refused.span, refused.message, refused.hint, source=f.source)
                        )
                    continue
                derives = functools.partial(_derives, layers=seen, deriving=deriving)
                composable = composed_plan(layer, seen, derives, assumed=True)
                for p in exc.every():
                    message, hint = as_layers_problem(p, layer, inlined, seen, deriving)
                    if composable is not None:  # `@function` on the layers it calls too: their Functions composed
                        names = functions_to_add(composable)
                        theirs = f"{names[0]}'s" if len(names) == 1 else "theirs"
                        hint += f"; or put @function on {' and '.join(names)} too, and {layer.name}'s Function runs {theirs}"
                    if (layer.path, p.span.line, p.span.col, message) not in reported:
                        reported.add((layer.path, p.span.line, p.span.col, message))
                        problems.append(Diagnostic(layer.path, p.span, message, hint, source=f.source))
    return plans, problems


def plan_inlined(inlined: Inlined) -> Plan:
    """The plan of a `@function` layer whose subs are inlined (`inline_subs`), as `gen` plans it: the subs'
    `require`s left out but those on computed values the Function checks (`sub_requires`), or all of them
    where the plan cannot follow the sizes those read."""
    unchecked = unchecked_origins(inlined.layer, inlined.origins)
    try:
        plan = _fewest_ways(sub_requires_dropped(inlined.layer, unchecked))
    except NotDerivable as exc:
        if not reads_unfollowed(inlined.layer, [p.span for p in exc.every()]):
            raise
        plan = _fewest_ways(sub_requires_dropped(inlined.layer, inlined.origins))  # derived without the checks
    return plan


def _fewest_ways(layer: N.Layer) -> Plan:
    """`plan_backward(layer)`; where a forward with loops is refused (its ways hold more loops holding loops
    than MAX_NEST_COPIES, or are more than MAX_BRANCH_PLANS), the plan whose forward keeps the `if`s around
    no loop as `if`s of their own (`loops.Choice`), branching only on those around one (an optional member
    added to a value read through a local such an `if` binds, `member_locals`; the loop over a family's
    members from 1 on inside the `if n > 0` of its first step, `peel.rest_under_first`): the first refusal
    stands where that is refused too."""
    try:
        plan = plan_backward(layer)
        _check_nest_copies(plan)
        plan = _with_eval_side(layer, plan)
    except NotDerivable as exc:
        assert layer.forward is not None
        stmts = list(walk_stmts(layer.forward.body))
        if not any(isinstance(s, N.For) for s in stmts) or not any(
            isinstance(s, N.If) and choice_alone(s) for s in stmts
        ):
            raise
        try:
            plan = plan_backward(layer, choices=True)
            _check_nest_copies(plan)
            _check_carried_bound(plan)
        except NotDerivable:
            raise exc from None
    return plan


def _check_carried_bound(plan: Plan) -> None:
    """NotDerivable where a loop holding a loop carries a local that an `if` of its own before it binds on one
    side only and the nest may read before binding it (`loops.read_before_bound`; LSTM's `h0, c0 = hx` under
    `if hx != none` is bound again before each read): None where the other side ran, which the Function would
    stack over the outer steps and give a gradient (not derived yet)."""
    for side in _loop_sides(plan):
        unbound = {UNBOUND}  # and the merged locals taking it, in order
        for seg in side.segments:
            if isinstance(seg, Choice):
                unbound |= {m for m, values in seg.merged.items() if unbound & set(values)}
            if isinstance(seg, Nest) and (carried := sorted(set(seg.carried.values()) & unbound)):
                raise NotDerivable(
                    seg.span,
                    f"cannot derive through this loop holding a loop yet: it carries '{carried[0]}', which an `if`"
                    " before it binds on one side only",
                    "bind it on both sides, or drop @function (autograd derives it)",
                )


def _loop_sides(plan: Plan) -> list[LoopPlan]:
    """The ways through the plan's branches that are loop Functions."""
    if isinstance(plan, BranchPlan):
        return _loop_sides(plan.then) + _loop_sides(plan.orelse)
    return [plan] if isinstance(plan, LoopPlan) else []


# The ways through a forward's `if`s on arguments that may each hold a loop holding a loop: each way is a
# copy of the two loops in the Function's forward and backward (RNN's 96 ways would be 130,000 lines).
MAX_NEST_COPIES = 8


class TooManyNests(NotDerivable):
    """More copies of a loop holding a loop than MAX_NEST_COPIES: raised as soon as the ways planned so far
    make them (the other sides of the `if`s around are not planned: RNN's 96 ways took half a minute)."""


def _check_nest_copies(plan: Plan, room: int = MAX_NEST_COPIES) -> None:
    """TooManyNests where `plan` holds more loops holding loops than `room` (what the ways planned before
    it leave of MAX_NEST_COPIES)."""
    if len(nests := _nests(plan)) > room:
        raise TooManyNests(
            nests[0].span,
            "cannot derive through this loop holding a loop yet: the `if`s on arguments of this forward make"
            f" more than {MAX_NEST_COPIES} ways through it, and the Function would write the two loops out on"
            " each",
            "drop @function (autograd derives it), or write the layer with fewer `if`s on arguments",
        )


def _nests(plan: Plan) -> list[Nest]:
    """The loops holding loops of every way through the plan's branches."""
    return [s for side in _loop_sides(plan) for s in side.segments if isinstance(s, Nest)]


def as_layers_problem(
    p: NotDerivable, layer: N.Layer, inlined: Inlined, layers: Mapping[str, N.Layer], deriving: dict[int, bool]
) -> tuple[str, str]:
    """The message and hint of a problem of `layer`'s inlined forward: one in a sub's statements names the
    sub, and where that sub's layer derives on its own, the hint says to put `@function` there.
    `deriving`: what is known of which layers derive (filled in as it is found)."""
    if p.span not in inlined.origins:
        return p.message, p.hint
    message = f"{p.message} (in {inlined.origins[p.span]}, inlined into '{layer.name}')"
    return message, _sub_function_hint(layer, p.span, layers, deriving, p.hint)


def _sub_function_hint(
    layer: N.Layer, span: Span, layers: Mapping[str, N.Layer], deriving: dict[int, bool], hint: str
) -> str:
    """`hint`, and where a sub's layer holding `span` derives on its own, the way out through it."""
    sub = deriving_sub(layer, span, layers, lambda sub: _derives(sub, layers, deriving))
    if sub is None:
        return hint
    way = f"put @function on {sub.name} instead of {layer.name}: its backward derives, and each call runs its Function"
    return f"{way}; or {hint}" if hint else way


def composed_instead(layer: N.Layer, layers: Mapping[str, N.Layer], deriving: dict[int, bool]) -> CallPlan | None:
    """The plan of a layer whose inlined forward is refused as the calls of its subs' Functions, where it only
    calls `@function` subs that derive (`sub_calls`); `deriving`: what is known of which layers derive."""
    return composed_plan(layer, layers, functools.partial(_derives, layers=layers, deriving=deriving))


def _derives(sub: N.Layer, layers: Mapping[str, N.Layer], deriving: dict[int, bool]) -> bool:
    """Whether `sub`'s own backward derives (its subs inlined); `deriving` keeps what is known."""
    if id(sub) not in deriving:
        try:
            plan_inlined(counted_inlining(sub, layers))
            deriving[id(sub)] = True
        except (NotDerivable, LayerNotGiven):
            deriving[id(sub)] = False
    return deriving[id(sub)]


def plan_backward(
    layer: N.Layer,
    given: frozenset[str] = frozenset(),
    known: Facts = (),
    measured: Measured | None = None,
    room: int = MAX_NEST_COPIES,
    choices: bool = False,
    eval_side: bool = False,
) -> Plan:
    """One `@function` layer's plan; raises NotDerivable for what the derivation cannot go through (the
    first problem, carrying the others: `NotDerivable.every`). `given`: the optional inputs and members that the `if`s
    choosing this side prove given; `known`: what their conditions prove (a later `if` they decide has one
    side only); `measured`: the sizes the whole forward measures, by name (`unroll.prepared_forward`);
    `room`: how many loops holding loops its ways may hold (TooManyNests past it, `_check_nest_copies`);
    `choices`: a forward with loops branches only on the `if`s holding a loop (or an append, a `return`, an
    `if`), each other `if` a segment of its own (`loops.Choice`); `eval_side`: a loop calling `dropout` on
    either side of an `if training` (`eval_dropout`)."""
    assert layer.forward is not None, "the parser reports a layer without forward"
    # tuple inputs as tensors, sides calling a callable argument dropped, loops unrolled, sizes named
    layer = without_callable_sides(with_tuples_split(layer))
    measured = measured_names(layer) if measured is None else measured
    layer = prepared_forward(layer, measured)
    if choices and layer.forward is not None:  # `if n > 0 { first step }` holding the loop over the rest (`peel`)
        layer = layer.with_body(rest_under_first(layer.forward.body))
    layer = unswitched(layer, choices)  # an `if` on arguments in a loop's body: around two copies of the loop
    layer = with_loops_paired(layer)  # a loop over a loop holding a loop: one loop over their pairs of steps
    if eval_side:  # a loop's dropouts: none in eval
        layer = _split_on_training(layer, known, choices)
    assert layer.forward is not None
    if choices:  # a size of a local an `if` of its own binds, as the sizes of the inputs on each side
        layer = layer.with_body(sizes_by_side(layer.forward.body, layer, measured))
    assert layer.forward is not None
    if layer.backward is None and (branch := _first_if(layer.forward.body, choices)) is not None:
        # counted before any side is derived: independent `if`s multiply (a derivation per side)
        if side_count(layer.forward.body, known, MAX_BRANCH_PLANS, choices) > MAX_BRANCH_PLANS:
            return _segmented_plan(layer, branch[1], given, measured)
        return _branch_plan(layer, branch, given, known, measured, room, choices)
    if has_loop(layer.forward.body):  # a member the `if`s around this side prove built is no loop's choice
        given |= {t.name for t in layer.tensors if t.cond is not None and _truth(t.cond, known) is True}
    return _straight_plan(layer, given, choices, measured)


def _with_eval_side(layer: N.Layer, plan: Plan) -> Plan:
    """The plan of `layer` whose loops calling `dropout` are split on `training` (`eval_dropout`), where it
    derives; else `plan`. Tried only once the forward as written derives: a refused one is not planned twice."""
    assert layer.forward is not None
    if not calls_dropout_in_a_loop(layer.forward.body):
        return plan
    try:
        split = plan_backward(layer, eval_side=True)
        _check_nest_copies(split)
    except NotDerivable:
        return plan
    return split


def _split_on_training(layer: N.Layer, known: Facts, choices: bool) -> N.Layer:
    """`layer` with each loop that calls `dropout` on either side of an `if training` (`eval_dropout`),
    where the `if`s around this side leave `training` open and the sides stay at most MAX_BRANCH_PLANS."""
    assert layer.forward is not None
    body = split_on_training(layer.forward.body)
    if body is layer.forward.body or _truth(training(layer.forward.span), known) is not None:
        return layer
    if side_count(body, known, MAX_BRANCH_PLANS, choices) > MAX_BRANCH_PLANS:
        return layer
    return layer.with_body(body)


def _too_long(layer: N.Layer, tape: Tape) -> NotDerivable:
    """The refusal of a tape longer than MAX_TAPE_STEPS (`operation_count.too_long`)."""
    return too_long(layer, [s.expr.span for s in tape.steps])


def _straight_plan(
    layer: N.Layer, given: frozenset[str], choices: bool = False, measured: Measured | None = None
) -> Plan:
    optional = {t.name for t in layer.tensors if t.cond is not None} - given
    optional |= {i.name for i in layer.forward.inputs if i.optional} - given if layer.forward else set()
    if layer.forward is not None and has_loop(layer.forward.body):  # a loop kept as one (`autodiff.loops`)
        return _loop_plan(layer, optional, given, choices, measured)
    # a list of subs' optional member, stacked and read at an unrolled item's index (`b[0]`): a side each
    if (choice := member_choice(layer, _read_at_an_index(layer, optional))) is not None:
        cond, built, not_built = choice
        return BranchPlan(
            cond, _straight_plan(built, given, measured=measured), _straight_plan(not_built, given, measured=measured)
        )
    linearizer = Linearizer(layer, optional, deriving=layer.backward is None)
    try:
        tape = linearizer.run()
    except NotDerivable as exc:  # a statement the tape cannot hold: the linearizer stopped there
        raise refusal([*linearizer.problems, exc]) from None
    if layer.backward is None and len(tape.steps) > MAX_TAPE_STEPS:
        raise _too_long(layer, tape)
    problems = list(linearizer.problems)
    if layer.backward is None:
        problems += _unproven_optional_reads(tape, layer, given)
        tape = _without_dead_steps(tape)
    shapes = infer_shapes(tape, layer, measured or {})
    absent = optional - {t.name for t in layer.tensors}  # optional inputs not given: no shape a gradient takes
    tape = dataclasses.replace(tape, shapes={v: None if v in absent else s for v, s in shapes.items()})
    tape.checks = decided_checks(tape.checks, tape.shapes)  # what the static shapes decide is not checked
    if layer.backward is not None:
        if problems:
            raise refusal(problems)
        grads = [name for name, _ in layer.backward.grads]
        return BackwardPlan(tape, grads, incoming_gradients(tape, grads), None, written_backward(layer.backward, tape))
    grads = incoming_names(tape)
    try:  # reverse mode over the opaque values too: what it refuses is independent of them
        derived = derive(tape, grads)
    except NotDerivable as exc:
        problems.append(exc)
    if problems:
        raise refusal(problems)
    return BackwardPlan(tape, grads, incoming_gradients(tape, grads), derived, [])


def _read_at_an_index(layer: N.Layer, optional: set[str]) -> set[str]:
    """The optional members `layer`'s forward reads at an index (`b[0]`: the items' stacked members of a
    list of subs whose loop was unrolled), which the tape's guards (on a member read whole) do not cover."""
    assert layer.forward is not None
    return {
        e.value.id
        for s in layer.forward.body
        for e in walk(s)
        if isinstance(e, N.Subscript) and isinstance(e.value, N.Name) and e.value.id in optional
    }


def _loop_plan(
    layer: N.Layer, optional: set[str], given: frozenset[str], choices: bool = False, measured: Measured | None = None
) -> Plan:
    assert layer.forward is not None
    loop = next(s for s in layer.forward.body if isinstance(s, N.For))
    if layer.backward is not None:
        raise NotDerivable(
            loop.iter.span,
            "a backward block follows a straight-line forward: this loop's count is known only when forward"
            " runs (or it is longer than a derived backward unrolls)",
            "leave the backward block out: the derived backward runs the loop's body backwards",
        )
    layer, optional = members_to_choose(layer, optional, member_choice)  # a side each: how many (`loop_members`)
    if choices:  # `h @ w + b` of `param b: [d] if bias`: through a local an `if` binds (`member_locals`)
        layer = members_as_locals(layer, optional, on_arguments)
    assert layer.forward is not None
    chosen = optional & read_outside_ifs(layer.forward.body) if choices else optional  # others: in a `Choice`
    if (choice := member_choice(layer, chosen)) is not None:  # `param b: [d] if bias`: a side each
        cond, built, absent = choice
        return BranchPlan(
            cond, _straight_plan(built, given, choices, measured), _straight_plan(absent, given, choices, measured)
        )
    body = layer.forward.body
    # an optional input read outside the `if`s testing it (`h + g`): a side with it given, one without
    if read := sorted(optional & read_outside_ifs(body) & _optional_inputs(layer)):
        cond, with_input, without = input_choice(layer, read[0])
        return BranchPlan(
            cond,
            _straight_plan(with_input, given | {read[0]}, choices, measured),
            _straight_plan(without, given, choices, measured),
        )
    if optional & read_outside_ifs(body):  # one read in a loop's `if` is refused at the `if` (`plan_loops`)
        raise NotDerivable(
            loop.iter.span,
            "a derived backward through this loop reads no optional input, nor a member built when a tensor"
            " or a dim says (not derived yet)",
            "drop @function (autograd derives the loop)",
        )
    layer = with_carried_locals(layer)  # a nest's or a choice per step's updates: carried as locals
    assert layer.forward is not None
    body = layer.forward.body
    if (update := _update_in_a_loop_or_choice(body, layer)) is not None:  # one between loops: the Function returns it
        raise NotDerivable(
            update.span,
            "a forward that keeps a loop updates a buffer under @function outside the `if`s taken on their own,"
            " and an optional buffer only between its loops and at the top level of the body of a loop holding no"
            " loop nor an `if` chosen per step (not derived yet)",
            "update the buffer after the loop, from what it computes, or drop @function",
        )
    if choices and any(isinstance(s, N.If) for s in body):  # each an `if` of its own (`_first_if`)
        body = flattened(body)  # a number a side binds: a statement of its own (`k = 2 if a else k`)
        if (unfollowed := unfollowed_size(body)) is not None:
            raise _size_not_followed(*unfollowed)
        inputs, members = _optional_inputs(layer) & optional, optional - _optional_inputs(layer)
        return plan_loops(layer.with_body(body), optional, incoming_names, _choice_condition(layer, inputs, members))
    return plan_loops(layer, optional, incoming_names)


def _update_in_a_loop_or_choice(body: list[N.Stmt], layer: N.Layer) -> N.Update | None:
    """The first `update` of a forward with loops that is in a loop holding a loop, an `if` of a loop's body
    or an `if`'s side (at this point, an `if` taken on its own, `loops.Choice`): a straight segment's
    updates are the Function's to return, and a loop's body's it carries (`loop_buffers`)."""
    kept = (s for s in body if not carries_its_updates(s, layer))  # (`loop_buffers`)
    nested = [s for stmt in kept if isinstance(stmt, N.For | N.If) for s in statements([stmt])]
    return next((s for s in nested if isinstance(s, N.Update)), None)


def _segmented_plan(layer: N.Layer, first: N.If, given: frozenset[str], measured: Measured) -> Plan:
    """A forward of more than MAX_BRANCH_PLANS combinations of branches: each `if` a segment of its own
    (`loops.Choice`), so independent `if`s add rather than multiply. Its conditions read arguments, lets
    and `training`, or test whether an optional input is given; it reads no optional member (not derived
    yet), and an optional input only on the side of an `if` that proves it given."""
    assert layer.forward is not None
    layer = _decided(layer)
    assert layer.forward is not None
    members = {t.name for t in layer.tensors if t.cond is not None} - given
    inputs = _optional_inputs(layer) - given
    # a member read only on the side of an `if` that proves it built (`if bias { ... b ... }`) is read
    # there; a statement reading one elsewhere becomes an `if` on its condition (a side with it built and
    # one without), or else the whole forward does
    unproven = _unproven_members(layer.forward.body, layer, members)
    if unproven and (chosen := member_reads_chosen(layer, set(unproven))) is not None:
        layer, unproven = chosen, {}
    assert layer.forward is not None
    if unproven and (choice := _member_sides(layer, set(unproven))) is not None:
        cond, built, absent = choice
        return BranchPlan(
            cond, _segmented_plan(built, first, given, measured), _segmented_plan(absent, first, given, measured)
        )
    update = next((s for s in statements(layer.forward.body) if isinstance(s, N.Update)), None)
    if unproven:
        raise _unproven_read(layer, unproven)
    if update is not None or has_loop(layer.forward.body):
        raise _not_segmented(first.span, "in a forward that updates no buffer and keeps no loop")

    body = flattened(returns_closed(layer.forward.body))  # nested `if`s and a side's numbers at the top
    body = sizes_by_side(body, layer, measured)
    if (unfollowed := unfollowed_size(body)) is not None:
        raise _size_not_followed(*unfollowed)
    condition = _choice_condition(layer, inputs, members)
    return plan_loops(layer.with_body(body), set(members | inputs), incoming_names, condition)


def _choice_condition(layer: N.Layer, inputs: Set[str], members: Set[str]) -> Callable[[N.If, list[N.Stmt]], N.Expr]:
    """An `if`'s condition as the Function of a forward whose `if`s are segments of their own evaluates it
    (`loops.Choice`): over arguments, lets, `training`, dims and flags, or whether an optional input
    (`inputs`) or member (`members`) is given; NotDerivable for another."""
    assert layer.forward is not None
    flags = {i.name for i in layer.forward.inputs if i.flag is not None}
    optional = frozenset(inputs) | frozenset(members)

    def condition(stmt: N.If, before: list[N.Stmt]) -> N.Expr:
        measured_local = next(
            (n for n in walk(stmt.cond) if isinstance(n, N.Rank | N.Call) and measures_a_local(n)), None
        )
        if measured_local is not None:  # `sizes_by_side` did not follow it back
            raise _size_not_followed(measured_local, "tests")
        cond = _configuration_condition(stmt.cond, before, layer)
        if not all(
            on_arguments(term, optional) or _on_dims(term, flags) or _dtype_test(term) for term in and_terms(cond)
        ):
            raise _not_segmented(
                stmt.cond.span,
                "when it tests arguments, lets and `training`, or whether an optional input is given",
            )
        return cond

    return condition


def _size_not_followed(size: N.Expr, how: str) -> NotDerivable:
    return NotDerivable(
        size.span,
        f"a derived backward through more than {MAX_BRANCH_PLANS} combinations of `if` branches {how}"
        f" `{spec_text(size)}`, a size of a local the `if`s before it compute on their sides, only where every"
        f" way through them (at most {MAX_SIZE_SIDES}) gives it as sizes of the inputs (not derived yet)",
        f"{how.removesuffix('s')} the size of the input it is computed from (`x.ndim` for `h = norm(x)`), or write"
        " a backward block",
    )


def _decided(layer: N.Layer) -> N.Layer:
    """`layer` with the `if`s whose condition a comparison of a value with itself decides (`if d_model ==
    d_model`, of a sub given `kdim = d_model, embed_dim = d_model`) as the side it picks, and its members'
    conditions so simplified (`true and bias` is `bias`: one side per condition, not one per spelling)."""
    assert layer.forward is not None
    tensors = []
    for t in layer.tensors:
        cond = None if t.cond is None else _simplified(t.cond)
        tensors.append(dataclasses.replace(t, cond=None if _holds_always(cond) is True else cond))
    body = _decided_body(layer.forward.body)
    return layer.with_body(body, tensors=tensors)


def _decided_body(body: list[N.Stmt]) -> list[N.Stmt]:
    out: list[N.Stmt] = []
    for s in body:
        if isinstance(s, N.If) and (holds := _holds_always(s.cond)) is not None:
            out += _decided_body(s.body if holds else s.orelse)
        elif isinstance(s, N.If):
            out.append(dataclasses.replace(s, body=_decided_body(s.body), orelse=_decided_body(s.orelse)))
        else:
            out.append(s)
    return out


def _holds_always(cond: N.Expr | None) -> bool | None:
    if cond is None or isinstance(cond, N.Bool):
        return None if cond is None else cond.value
    return _truth(cond, ())


def _simplified(cond: N.Expr) -> N.Expr:
    """`cond` with the terms of an `and` that always hold left out (`true and bias` is `bias`)."""
    if isinstance(cond, N.BoolOp) and cond.op == "and":
        left, right = _simplified(cond.left), _simplified(cond.right)
        if _holds_always(left) is True:
            return right
        if _holds_always(right) is True:
            return left
        simpler = dataclasses.replace(cond, left=left, right=right)
        simpler.kind = cond.kind
        return simpler
    return cond


def _on_dims(cond: N.Expr, flags: set[str]) -> bool:
    """Whether `cond` reads only arguments, lets, `training`, dims (`query_ndim == 2`, a size forward
    measures and the Function keeps on ctx) and flag inputs (`need_weights: bool = true`)."""
    refs = (N.Ref.ARG, N.Ref.LET, N.Ref.TRAINING, N.Ref.DIM)
    return all(n.ref in refs or n.id in flags for n in walk(cond) if isinstance(n, N.Name))


def _dtype_test(cond: N.Expr) -> bool:
    """Whether `cond` is `is_floating_point(m)` of an input or member, or its `not` (kept on ctx)."""
    cond = cond.operand if isinstance(cond, N.Not) else cond
    return isinstance(cond, N.Call) and cond.func == "is_floating_point" and bool(dtype_tested(cond))


def _not_segmented(span: Span, where: str) -> NotDerivable:
    return NotDerivable(
        span,
        f"a derived backward goes through at most {MAX_BRANCH_PLANS} combinations of `if` branches, or takes"
        f" each `if` on its own {where} (not derived yet)",
        CHOICE_HINT,
    )


def _member_sides(layer: N.Layer, members: set[str]) -> tuple[N.Expr, N.Layer, N.Layer] | None:
    """`loops.member_choice` (each `if` on the member's condition decided on either side), or None where
    a member is read other than as `a + b` (refused below)."""
    try:
        return member_choice(layer, set(members), decided=True)
    except NotDerivable:
        return None


def _unproven_members(body: list[N.Stmt], layer: N.Layer, members: set[str]) -> dict[str, N.Name]:
    """The optional members of `members` that `body` reads outside the sides of its `if`s proving them
    built (`loops.proves`), each with its first such read."""
    conds = {t.name: t.cond for t in layer.tensors if t.name in members and t.cond is not None}

    def read(stmts: list[N.Stmt], proven: set[str]) -> dict[str, N.Name]:
        found: dict[str, N.Name] = {}
        for s in stmts:
            if isinstance(s, N.If):
                found |= {n.id: n for n in walk(s.cond) if isinstance(n, N.Name) and n.id in conds} | found
                for holds, side in ((True, s.body), (False, s.orelse)):
                    now = proven | {m for m, c in conds.items() if proves(s.cond, holds, c)}
                    found = read(side, now) | found
            else:
                reads = [n for n in walk(s) if isinstance(n, N.Name) and n.id in conds and n.id not in proven]
                found = {n.id: n for n in reversed(reads)} | found
        return found

    return read(body, set())


def _unproven_read(layer: N.Layer, unproven: dict[str, N.Name]) -> NotDerivable:
    """The refusal of a member read outside the sides proving it built, other than as `a + m`."""
    name = next(iter(unproven.values()))
    member = next(t for t in layer.tensors if t.name == name.id)
    assert member.cond is not None
    return NotDerivable(
        name.span,
        f"a derived backward through more than {MAX_BRANCH_PLANS} combinations of `if` branches reads the optional"
        f" member '{name.id}' on the side of an `if` that proves it built (`if {spec_text(member.cond)}"
        " { ... }`), or as an operand of + or *, or the right one of - or / (not derived yet)",
        f"read it inside `if {spec_text(member.cond)} {{ ... }}`, or write a backward block",
    )


def returns_closed(body: list[N.Stmt]) -> list[N.Stmt]:
    """`body` with the statements after the first `if` of which a side returns moved into its other side
    (`if c { ...; return a } rest` is `if c { ...; return a } else { rest }`): both sides then return."""
    for at, stmt in enumerate(body):
        if not isinstance(stmt, N.If):
            continue
        returns = [bool(side) and isinstance(side[-1], N.Return) for side in (stmt.body, stmt.orelse)]
        if any(returns):
            rest = body[at + 1 :]
            then = stmt.body if returns[0] else stmt.body + rest
            orelse = stmt.orelse if returns[1] else stmt.orelse + rest
            return body[:at] + [dataclasses.replace(stmt, body=then, orelse=orelse)]
    return body


def side_count(body: list[N.Stmt], known: Facts, limit: int, choices: bool = False) -> int:
    """How many straight-line sides `body` has (the combinations of its `if`s that the conditions around
    them leave possible), counted up to `limit + 1` (so a forward of many `if`s is refused in little time);
    `choices`: of the `if`s that `_first_if` branches on."""
    found = _first_if(body, choices)
    if found is None:
        return 1
    count = 0
    for side in _sides(body, found, found[1].cond, known):
        if count > limit:
            break
        count += side_count(side.body, side.known, limit - count, choices)
    return count


@dataclass
class _Side:
    """One side of a forward's first `if`: the forward with that side's statements in place of the `if`."""

    holds: bool  # the condition holds on this side
    body: list[N.Stmt]  # up to the first `return`
    known: Facts  # what the `if`s around it prove, and the condition when they leave it open


def _sides(body: list[N.Stmt], branch: tuple[int, N.If], cond: N.Expr, known: Facts) -> list[_Side]:
    """The sides of `branch` (the first `if` of `body`, its condition `cond`) that `known` leaves possible:
    both, or only the one it decides (`track and training` inside `if track and not training`). The one
    walk that counting the sides (`side_count`) and planning them (`_branch_plan`) follow."""
    at, stmt = branch
    decided = _truth(cond, known)
    sides = []
    for chosen, holds in ((stmt.body, True), (stmt.orelse, False)):
        if decided is not None and decided != holds:
            continue
        facts = known if decided is not None else known + _facts(cond, holds)
        sides.append(_Side(holds, _until_return(body[:at] + chosen + body[at + 1 :]), facts))
    return sides


def _first_if(body: list[N.Stmt], choices: bool = False) -> tuple[int, N.If] | None:
    """The first `if` of `body`; `choices`: in a forward with loops, the first holding a loop, an append, a
    `return` or an `if` (the others are `if`s of their own, `loops.Choice`)."""
    if choices and any(isinstance(s, N.For) for s in walk_stmts(body)):
        return next(((i, s) for i, s in enumerate(body) if isinstance(s, N.If) and not choice_alone(s)), None)
    return next(((i, s) for i, s in enumerate(body) if isinstance(s, N.If)), None)


def _branch_plan(
    layer: N.Layer,
    branch: tuple[int, N.If],
    given: frozenset[str],
    known: Facts,
    measured: Measured,
    room: int,
    choices: bool = False,
) -> Plan:
    """The plan of each side of the forward's first `if` (a side's own `if`s branch again); only the side
    that can be taken when the `if`s around it decide the condition (`track and training` inside
    `if track and not training`)."""
    assert layer.forward is not None
    at, stmt = branch
    body = layer.forward.body
    problems: list[NotDerivable] = []
    try:
        cond = _configuration_condition(stmt.cond, body[:at], layer)
    except NotDerivable as exc:  # each side is still checked
        problems.append(exc)
        cond = stmt.cond
    decided = len(possible := _sides(body, branch, cond, known)) == 1
    sides = []
    for side in possible:
        forward = dataclasses.replace(layer.forward, body=side.body)
        proven = given | _proven_given(cond, side.holds)
        try:
            side_layer = dataclasses.replace(layer, forward=forward)
            planned = plan_backward(side_layer, proven, side.known, measured, room, choices)
            _check_nest_copies(planned, room)
            room -= len(_nests(planned))
            if not decided and _keeps_a_loop(planned) and not _same_every_call(cond, layer):
                raise NotDerivable(
                    stmt.span,
                    "a derived backward through a loop whose count is known only when forward runs is written"
                    " only where the `if`s around it test arguments, flags or optional members, not tensors'"
                    " sizes or values (not derived yet)",
                    "drop @function (autograd derives the loop)",
                )
            sides.append(planned)
        except TooManyNests:  # planning the other side would only make more
            raise
        except NotDerivable as exc:  # the statements both sides share are reported once (`refusal`)
            problems.append(exc)
    if not problems and len(sides) == 2 and any(map(_keeps_a_loop, sides)):
        sides = [
            _as_loop_plan(layer, way, given | _proven_given(cond, way.holds), p) for p, way in zip(sides, possible)
        ]
    if not problems and len(sides) == 2 and any(map(_keeps_a_loop, sides)) and not all(map(_all_loops, sides)):
        problems.append(
            NotDerivable(
                stmt.span,
                "a derived backward goes through a loop whose count is known only when forward runs on one"
                " side of this `if` only (not derived yet)",
                "put the loop on both sides (or after the `if`), or drop @function",
            )
        )
    if problems:
        raise refusal(problems)
    return sides[0] if len(sides) == 1 else BranchPlan(cond, sides[0], sides[1])


Facts = tuple[tuple[str, bool], ...]  # conditions' terms (by their structural key) known to hold or fail


def _facts(cond: N.Expr, holds: bool) -> Facts:
    """What `cond` holding (or failing) proves of its terms: each term of a holding `and`, of a failing `or`."""
    if isinstance(cond, N.BoolOp) and cond.op == ("and" if holds else "or"):
        return _facts(cond.left, holds) + _facts(cond.right, holds)
    if isinstance(cond, N.Not):
        return _facts(cond.operand, not holds)
    key, positive = _term(cond)
    return ((key, holds == positive),)


def _term(cond: N.Expr) -> tuple[str, bool]:
    """A condition's structural key, and whether it holds when what the key names holds: `m == none` is
    the negation of `m != none` (so `if m != none` decides a later `if m == none`)."""
    if isinstance(cond, N.Compare) and len(cond.ops) == 1 and cond.ops[0] in ("==", "!="):
        names = [o.id for o in cond.operands if isinstance(o, N.Name)]
        if len(names) == 1 and any(isinstance(o, N.NoneLit) for o in cond.operands):
            return f"{names[0]} != none", cond.ops[0] == "!="
    return B.key(cond), True


def _truth(cond: N.Expr, known: Facts) -> bool | None:
    """Whether `cond` holds given `known`, or None when they do not decide it."""
    if isinstance(cond, N.BoolOp):
        left, right = _truth(cond.left, known), _truth(cond.right, known)
        if cond.op == "and":
            return False if False in (left, right) else True if left is right is True else None
        return True if True in (left, right) else False if left is right is False else None
    if isinstance(cond, N.Not):
        inner = _truth(cond.operand, known)
        return None if inner is None else not inner
    if (same := _self_comparison(cond)) is not None:
        return same
    key, positive = _term(cond)
    return next((holds == positive for term, holds in known if term == key), None)


SELF_COMPARISONS = {"==": True, "<=": True, ">=": True, "!=": False, "<": False, ">": False}


def _self_comparison(cond: N.Expr) -> bool | None:
    """Whether a comparison of a value with itself holds (`kdim == embed_dim` of a sub given `kdim = d,
    embed_dim = d`); None for another condition. Only ints, bools and strings: a float may be NaN."""
    if not (isinstance(cond, N.Compare) and len(cond.operands) == 2 and cond.ops[0] in SELF_COMPARISONS):
        return None
    left, right = cond.operands
    if left.kind not in (N.Kind.INT, N.Kind.BOOL, N.Kind.STR) or B.key(left) != B.key(right):
        return None
    return SELF_COMPARISONS[cond.ops[0]]


def _as_loop_plan(layer: N.Layer, way: _Side, given: frozenset[str], planned: Plan) -> Plan:
    """`planned`, the plan of one side (`way`) of an `if` whose other side keeps a loop; where this side keeps
    none (`if n > 0 { first step; loop over the rest }` of `peel.rest_under_first`, `n > 0` failing), the
    plan of its statements as a loop Function's, its `if`s each a segment of its own (`loops.Choice`), so
    that the Function branches between two loop Functions. `given`: the optional inputs the `if` proves given."""
    assert layer.forward is not None
    if _all_loops(planned) or any(isinstance(s, N.For) for s in walk_stmts(way.body)):
        return planned
    return _side_as_loop_plan(layer.with_body(way.body), given) or planned


def _side_as_loop_plan(layer: N.Layer, given: frozenset[str]) -> Plan | None:
    """`_as_loop_plan`'s plan of a side keeping no loop, None where it cannot be one; an optional input it
    reads outside the `if`s testing it (`h * g`) makes a side with it given and one without, as a loop's
    Function does (`_loop_plan`)."""
    assert layer.forward is not None
    optional = {t.name for t in layer.tensors if t.cond is not None} - given
    optional |= _optional_inputs(layer) - given
    outside = optional & read_outside_ifs(layer.forward.body)
    if outside and outside <= _optional_inputs(layer):
        cond, with_input, without = input_choice(layer, sorted(outside)[0])
        sides = [_side_as_loop_plan(with_input, given | {sorted(outside)[0]}), _side_as_loop_plan(without, given)]
        return None if sides[0] is None or sides[1] is None else BranchPlan(cond, sides[0], sides[1])
    return _loop_side(layer, given)


def _loop_side(layer: N.Layer, given: frozenset[str]) -> Plan | None:
    assert layer.forward is not None
    way = layer.forward
    optional = {t.name for t in layer.tensors if t.cond is not None} - given
    optional |= _optional_inputs(layer) - given
    if optional & read_outside_ifs(way.body) or unfollowed_size(way.body) is not None:
        return None  # refused as a side keeping no loop
    inputs, members = _optional_inputs(layer) & optional, optional - _optional_inputs(layer)
    try:
        return plan_loops(layer, optional, incoming_names, _choice_condition(layer, inputs, members))
    except NotDerivable:
        return None


def _same_every_call(cond: N.Expr, layer: N.Layer) -> bool:
    """Whether `cond` reads only arguments, lets, `training` and flag inputs, or tests whether an optional
    input is given: what the Function keeps on `ctx` as it is, to choose the side of a loop in backward."""
    assert layer.forward is not None
    flags = {i.name for i in layer.forward.inputs if i.flag is not None}
    plain = [n for n in walk(cond) if isinstance(n, N.Name) and n.id not in flags]
    return all(n.ref in (N.Ref.ARG, N.Ref.LET, N.Ref.TRAINING) for n in plain) or on_arguments(
        cond, _optional_inputs(layer)
    )


def _optional_inputs(layer: N.Layer) -> frozenset[str]:
    return frozenset(i.name for i in layer.forward.inputs if i.optional) if layer.forward else frozenset()


def _all_loops(plan: Plan) -> bool:
    return (
        isinstance(plan, LoopPlan) or isinstance(plan, BranchPlan) and _all_loops(plan.then) and _all_loops(plan.orelse)
    )


def _keeps_a_loop(plan: Plan) -> bool:
    return (
        isinstance(plan, LoopPlan) or isinstance(plan, BranchPlan) and any(map(_keeps_a_loop, (plan.then, plan.orelse)))
    )


def _proven_given(cond: N.Expr, holds: bool) -> frozenset[str]:
    """The optional inputs that `cond` holding (or failing, for `m == none`) proves given."""
    if isinstance(cond, N.BoolOp) and cond.op == ("and" if holds else "or"):
        return _proven_given(cond.left, holds) | _proven_given(cond.right, holds)
    if isinstance(cond, N.Not):
        return _proven_given(cond.operand, not holds)
    if isinstance(cond, N.Compare) and len(cond.ops) == 1 and cond.ops[0] == ("!=" if holds else "=="):
        names = [o.id for o in cond.operands if isinstance(o, N.Name)]
        if len(names) == 1 and any(isinstance(o, N.NoneLit) for o in cond.operands):
            return frozenset(names)
    return frozenset()


def _without_dead_steps(tape: Tape) -> Tape:
    """The tape without the steps no output and no buffer update reads (a statistic only another side's
    update needs: batch norm's unbiased variance when it tracks no running statistics)."""
    live = {n.id for o in tape.outputs for n in walk(o) if isinstance(n, N.Name)} | set(tape.updates.values())
    kept = []
    for step in reversed(tape.steps):
        if step.var not in live:
            continue
        kept.append(step)
        live |= step.reads
    return dataclasses.replace(tape, steps=kept[::-1])


def _unproven_optional_reads(tape: Tape, layer: N.Layer, given: frozenset[str]) -> list[NotDerivable]:
    """A derived backward reads an optional input only where an `if` proves it given: its formulas take
    a tensor (an operation that takes none would be passed None, which no formula reads). Each read
    that no `if` proves given."""
    assert layer.forward is not None
    optional = {i.name for i in layer.forward.inputs if i.optional} - given
    problems: list[NotDerivable] = []
    for step in tape.steps:
        if step.guard is not None:  # `x + bias`: x when bias is None (`Linearizer.add`)
            continue
        for operand in step.args.values():
            items = operand.items if isinstance(operand, N.ListExpr) else [operand]
            for n in items:
                if isinstance(n, N.Name) and n.id in optional:
                    problems.append(
                        NotDerivable(
                            step.expr.span,
                            f"a derived backward reads the optional input '{n.id}' only inside"
                            f" `if {n.id} != none {{ ... }}`",
                            f"test `{n.id} != none` around this use (or write a backward block)",
                        )
                    )
    return problems


def _until_return(body: list[N.Stmt]) -> list[N.Stmt]:
    """`body` up to its first `return` (a side that returns ends the forward)."""
    end = next((i for i, s in enumerate(body) if isinstance(s, N.Return)), len(body) - 1)
    return body[: end + 1]


def _configuration_condition(cond: N.Expr, before: list[N.Stmt], layer: N.Layer) -> N.Expr:
    """`cond` over arguments, lets, `training` and dims, with the number locals bound before it written
    out (so setup_context and backward can evaluate it); NotDerivable for a condition on tensors."""
    numbers: dict[str, N.Expr] = {}
    optional = {t.name for t in layer.tensors if t.cond is not None}

    def written_out(e: N.Expr) -> N.Expr:
        if isinstance(e, N.Name) and e.ref == "local" and e.id in numbers:
            return clone(numbers[e.id])
        return map_children(e, written_out)

    for s in before:  # in order: a binding reads the ones before it (`n = n + 1` of an unrolled loop)
        if isinstance(s, N.Assign) and s.value.kind != "tensor":
            numbers[s.target] = written_out(s.value)
    cond = _dtype_tests_of_leaves(written_out(cond), before, layer)
    given = _presence_tests(cond, layer) | _dtype_tests(cond, layer)
    assert layer.forward is not None
    flags = {i.name for i in layer.forward.inputs if i.flag is not None}  # plain bools, as arguments are
    for n in walk(cond):
        if not isinstance(n, N.Expr) or id(n) in given or (isinstance(n, N.Name) and n.id in flags):
            continue
        names_tensor = isinstance(n, N.Name) and (n.ref in ("input", "param", "buffer", "local") or n.id in optional)
        if names_tensor or n.kind == "tensor":
            raise NotDerivable(
                n.span,
                "a derived backward branches only on arguments, lets, dims, `training` and whether an optional"
                " input or member is given (this condition reads a tensor)",
                "write a backward block; for an elementwise choice use where(cond, a, b)",
            )
    return cond


DTYPE_KEEPING = ("view", "transpose", "pad")  # op shapes whose result has its input's dtype


def _dtype_tests_of_leaves(cond: N.Expr, before: list[N.Stmt], layer: N.Layer) -> N.Expr:
    """`is_floating_point(mask)` of a local computed from an input or member by views and `pad` (attention's
    mask, reshaped and padded) as the same test of that input: its dtype is the local's, and the Function
    can keep it on `ctx`. A test of anything else is left as written (a tensor the condition reads)."""
    assert layer.forward is not None
    leaves = {i.name for i in layer.forward.inputs} | {t.name for t in layer.tensors}

    def source(e: N.Expr, upto: int) -> str | None:
        if isinstance(e, N.Name) and e.id in leaves:
            return e.id
        if isinstance(e, N.Name) and e.ref == "local":
            at = next((k for k in range(upto - 1, -1, -1) if _assigns(before[k], e.id)), None)
            stmt = before[at] if at is not None else None
            if isinstance(stmt, N.If) and at is not None:  # a segmented forward's: every side's from one leaf
                sides = [*stmt.body, *stmt.orelse]
                sources = {source(s.value, at) for s in sides if isinstance(s, N.Assign) and s.target == e.id}
                return sources.pop() if len(sources) == 1 else None
            return source(stmt.value, at) if isinstance(stmt, N.Assign) and at is not None else None
        if isinstance(e, N.Call) and e.func in OPS and OPS[e.func].shape in DTYPE_KEEPING and e.args:
            return source(e.args[0], upto)
        return None

    def rewritten(e: N.Expr) -> N.Expr:
        if isinstance(e, N.Call) and e.func == "is_floating_point" and len(e.args) == 1:
            leaf = source(e.args[0], len(before))
            if leaf is not None:
                test = N.Call(e.span, e.func, e.func_span, [B.name(leaf, e.args[0].span, _leaf_ref(leaf, layer))], [])
                test.kind = e.kind
                return test
        return map_children(e, rewritten)

    return rewritten(cond)


def _assigns(stmt: N.Stmt, name: str) -> bool:
    """Whether `stmt` binds `name` (a side of a segmented forward's `if`, which nests no `if`, too)."""
    if isinstance(stmt, N.If):
        return any(_assigns(s, name) for s in [*stmt.body, *stmt.orelse])
    return isinstance(stmt, N.Assign) and stmt.target == name


def _leaf_ref(leaf: str, layer: N.Layer) -> N.Ref:
    member = next((t for t in layer.tensors if t.name == leaf), None)
    return member.kind if member is not None else N.Ref.INPUT


def _dtype_tests(cond: N.Expr, layer: N.Layer) -> set[int]:
    """The nodes of `is_floating_point(x)` tests of inputs and members in `cond` (the Function keeps each
    on `ctx` for backward to choose the same side): a dtype is no tensor value, and no gradient."""
    assert layer.forward is not None
    leaves = {i.name for i in layer.forward.inputs} | {t.name for t in layer.tensors}
    found: set[int] = set()
    for n in walk(cond):
        if isinstance(n, N.Call) and n.func == "is_floating_point" and len(n.args) == 1:
            if isinstance(n.args[0], N.Name) and n.args[0].id in leaves:
                found |= {id(n), id(n.args[0])}
    return found


def dtype_tested(cond: N.Expr) -> list[str]:
    """The inputs and members whose dtype `cond` tests (`is_floating_point(mask)`), in order."""
    names = [
        n.args[0].id
        for n in walk(cond)
        if isinstance(n, N.Call) and n.func == "is_floating_point" and isinstance(n.args[0], N.Name)
    ]
    return list(dict.fromkeys(names))


def _presence_tests(cond: N.Expr, layer: N.Layer) -> set[int]:
    """The nodes of `m != none` and `m == none` tests of optional inputs, optional members (a sub's too:
    `linear.bias`, given or not when the layer is built) and tensor arguments in `cond` (the Function keeps
    whether an input or member `m` was given on `ctx`, as its shape or None, for backward to choose the same
    side; an argument is on `ctx` as it is)."""
    assert layer.forward is not None
    optional = {i.name for i in layer.forward.inputs if i.optional}
    optional |= {t.name for t in layer.tensors if t.cond is not None}
    optional |= {a.name for a in layer.args if a.maybe_none and a.base_type == "tensor"}
    found: set[int] = set()
    for n in walk(cond):
        if isinstance(n, N.Compare) and len(n.ops) == 1 and n.ops[0] in ("==", "!="):
            names = [o for o in n.operands if isinstance(o, N.Name) and o.id in optional]
            if len(names) == 1 and any(isinstance(o, N.NoneLit) for o in n.operands):
                found |= {id(n), id(names[0])} | {id(o) for o in n.operands}
    return found


def incoming_names(tape: Tape) -> list[str]:
    """A derived backward's incoming gradients: `grad_out`, `grad_out1`, ..., unless the gradient of a
    value of the tape has that name (an input named `out` has the gradient `grad_out`)."""
    taken = {f"grad_{v}" for v in tape.leaves + [s.var for s in tape.steps]}
    grads: list[str] = []
    for i in range(len(tape.outputs)):
        grads.append(fresh_name("grad_out" if i == 0 else f"grad_out{i}", taken))
        taken.add(grads[-1])
    return grads


def incoming_gradients(tape: Tape, grads: list[str]) -> dict[str, str]:
    """Each incoming gradient, with the forward value it is the gradient of."""
    return {g: o.id for g, o in zip(grads, tape.outputs) if isinstance(o, N.Name)}


def written_backward(backward: N.Backward, tape: Tape) -> list[GradStmt]:
    """The spec's backward block; the forward locals it reads become the tape vars holding them."""
    every_leaf = {leaf for leaf in tape.leaves if leaf in tape.differentiable}
    stmts = []
    for stmt in backward.body:
        if isinstance(stmt, N.Assign):  # a local of the backward, needed by any gradient
            stmts.append(GradStmt(stmt.target, _over_tape_vars(stmt.value, tape.env), set(every_leaf), stmt.span))
        elif isinstance(stmt, N.Grad) and isinstance(stmt.value, N.NoneLit):
            continue
        elif isinstance(stmt, N.Grad):
            stmts.append(
                GradStmt(f"grad_{stmt.target}", _over_tape_vars(stmt.value, tape.env), {stmt.target}, stmt.span)
            )
        else:
            raise NotDerivable(
                stmt.span,
                "a backward block holds `NAME = ...` and `grad NAME = ...` statements",
                "compute both branches and choose with where()",
            )
    return stmts


def _over_tape_vars(e: N.Expr, env: dict[str, str]) -> N.Expr:
    e = clone(e)
    for n in walk(e):
        if isinstance(n, N.Name) and n.ref == "local" and n.id in env:
            n.id = env[n.id]
    return e
