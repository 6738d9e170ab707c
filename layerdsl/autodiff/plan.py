"""Derivation as a stage: for each `@function` layer, the plan of its backward.

A plan holds what the Function emitter writes out: the tape of the forward (with static shapes), the
backward's incoming gradients, and the backward itself, derived by reverse mode or written in the spec.
What cannot be derived is reported here as located diagnostics, so `layerdsl check` finds it without
emitting anything.

A forward with `if`s on configuration values (arguments, lets, `training`, dims) is planned once per
branch: a `BranchPlan` holds the condition and the plan of each side, and the Function chooses the same
side in forward, setup_context and backward. Each side is a straight-line forward, derived as any other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from layerdsl.autodiff.loops import LoopPlan, has_loop, plan_loops
from layerdsl.autodiff.reverse import Backward, GradStmt, derive
from layerdsl.autodiff.shapes import infer_shapes
from layerdsl.autodiff.tape import Linearizer, NotDerivable, Tape
from layerdsl.autodiff.unroll import prepared_forward
from layerdsl.diagnostics import Diagnostic
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import clone, map_children, walk
from layerdsl.language.naming import fresh_name


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


Plan = BackwardPlan | BranchPlan | LoopPlan

MAX_BRANCH_PLANS = 8  # sides of one Function: each is a forward, a setup_context and a backward of its own


def straight_plans(plan: Plan) -> list[BackwardPlan]:
    """The straight-line plans of `plan`: itself, or every side of its branches (none for a loop's)."""
    if isinstance(plan, LoopPlan):
        return []
    return plan.sides() if isinstance(plan, BranchPlan) else [plan]


def plan_backwards(files: list[N.SpecFile]) -> tuple[dict[str, Plan], list[Diagnostic]]:
    """The plan of every `@function` layer, by layer name, and what cannot be derived. A file's layers
    after the first that cannot be derived are not planned: one such error per file is reported."""
    plans: dict[str, Plan] = {}
    problems: list[Diagnostic] = []
    for f in files:
        for layer in f.layers:
            if not layer.is_function:
                continue
            try:
                plans[layer.name] = plan_backward(layer)
            except NotDerivable as exc:
                problems.append(Diagnostic(layer.path, exc.span, exc.message, exc.hint, source=f.source))
                break
    return plans, problems


def plan_backward(layer: N.Layer, given: frozenset[str] = frozenset()) -> Plan:
    """One `@function` layer's plan; raises NotDerivable for what the derivation cannot go through.
    `given`: the optional inputs that the `if`s choosing this side prove given."""
    assert layer.forward is not None, "the parser reports a layer without forward"
    layer = prepared_forward(layer)  # loops unrolled, sizes named (again for a side: nothing left to do)
    assert layer.forward is not None
    if layer.backward is None and (branch := _first_if(layer.forward.body)) is not None:
        plan = _branch_plan(layer, branch, given)
        if len(plan.sides()) > MAX_BRANCH_PLANS:
            raise NotDerivable(
                branch[1].span,
                f"a derived backward goes through at most {MAX_BRANCH_PLANS} combinations of `if` branches",
                "write a backward block, or choose with where(cond, a, b)",
            )
        return plan
    return _straight_plan(layer, given)


def _straight_plan(layer: N.Layer, given: frozenset[str]) -> BackwardPlan | LoopPlan:
    optional = {t.name for t in layer.tensors if t.cond is not None}
    optional |= {i.name for i in layer.forward.inputs if i.optional} - given if layer.forward else set()
    if layer.forward is not None and has_loop(layer.forward.body):  # a loop kept as one (`autodiff.loops`)
        return _loop_plan(layer, optional)
    tape = Linearizer(layer, optional, deriving=layer.backward is None).run()
    if layer.backward is None:
        _check_given(tape, layer, given)
    tape = dataclasses.replace(tape, shapes=infer_shapes(tape, layer))
    if layer.backward is not None:
        grads = [name for name, _ in layer.backward.grads]
        return BackwardPlan(tape, grads, incoming_gradients(tape, grads), None, written_backward(layer.backward, tape))
    grads = incoming_names(tape)
    return BackwardPlan(tape, grads, incoming_gradients(tape, grads), derive(tape, grads), [])


def _loop_plan(layer: N.Layer, optional: set[str]) -> LoopPlan:
    assert layer.forward is not None
    loop = next(s for s in layer.forward.body if isinstance(s, N.For))
    if layer.backward is not None:
        raise NotDerivable(
            loop.iter.span,
            "a backward block follows a straight-line forward: this loop's count is known only when forward"
            " runs (or it is longer than a derived backward unrolls)",
            "leave the backward block out: the derived backward runs the loop's body backwards",
        )
    if optional:
        raise NotDerivable(
            loop.iter.span,
            "a derived backward through this loop reads no optional input or member (not derived yet)",
            "drop @function (autograd derives the loop)",
        )
    return plan_loops(layer, optional, incoming_names)


def _first_if(body: list[N.Stmt]) -> tuple[int, N.If] | None:
    return next(((i, s) for i, s in enumerate(body) if isinstance(s, N.If)), None)


def _branch_plan(layer: N.Layer, branch: tuple[int, N.If], given: frozenset[str]) -> BranchPlan:
    """The plan of each side of the forward's first `if` (a side's own `if`s branch again)."""
    assert layer.forward is not None
    at, stmt = branch
    body = layer.forward.body
    cond = _configuration_condition(stmt.cond, body[:at], layer)
    sides = []
    for chosen, holds in ((stmt.body, True), (stmt.orelse, False)):
        side_body = _until_return(body[:at] + chosen + body[at + 1 :])
        forward = dataclasses.replace(layer.forward, body=side_body)
        proven = given | _proven_given(cond, holds)
        side = plan_backward(dataclasses.replace(layer, forward=forward), proven)
        if (
            isinstance(side, LoopPlan)
            or isinstance(side, BranchPlan)
            and any(isinstance(p, LoopPlan) for p in side.sides())
        ):
            raise NotDerivable(
                stmt.span,
                "a derived backward goes through a loop whose count is known only when forward runs in a forward"
                " without `if`s on configuration values (not derived yet)",
                "drop @function (autograd derives the loop)",
            )
        sides.append(side)
    return BranchPlan(cond, sides[0], sides[1])


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


def _check_given(tape: Tape, layer: N.Layer, given: frozenset[str]) -> None:
    """A derived backward reads an optional input only where an `if` proves it given: its formulas take
    a tensor (an operation that takes none would be passed None, which no formula reads)."""
    assert layer.forward is not None
    optional = {i.name for i in layer.forward.inputs if i.optional} - given
    for step in tape.steps:
        if step.guard is not None:  # `x + bias`: x when bias is None (`Linearizer.add`)
            continue
        for operand in step.args.values():
            items = operand.items if isinstance(operand, N.ListExpr) else [operand]
            for n in items:
                if isinstance(n, N.Name) and n.id in optional:
                    raise NotDerivable(
                        step.expr.span,
                        f"a derived backward reads the optional input '{n.id}' only inside"
                        f" `if {n.id} != none {{ ... }}`",
                        f"test `{n.id} != none` around this use (or write a backward block)",
                    )


def _until_return(body: list[N.Stmt]) -> list[N.Stmt]:
    """`body` up to its first `return` (a side that returns ends the forward)."""
    end = next((i for i, s in enumerate(body) if isinstance(s, N.Return)), len(body) - 1)
    return body[: end + 1]


def _configuration_condition(cond: N.Expr, before: list[N.Stmt], layer: N.Layer) -> N.Expr:
    """`cond` over arguments, lets, `training` and dims, with the number locals bound before it written
    out (so setup_context and backward can evaluate it); NotDerivable for a condition on tensors."""
    numbers = {s.target: s.value for s in before if isinstance(s, N.Assign) and s.value.kind != "tensor"}
    optional = {t.name for t in layer.tensors if t.cond is not None}

    def written_out(e: N.Expr) -> N.Expr:
        if isinstance(e, N.Name) and e.ref == "local" and e.id in numbers:
            return written_out(clone(numbers[e.id]))
        return map_children(e, written_out)

    cond = written_out(cond)
    given = _presence_tests(cond, layer)
    for n in walk(cond):
        if not isinstance(n, N.Expr) or id(n) in given:
            continue
        names_tensor = isinstance(n, N.Name) and (n.ref in ("input", "param", "buffer", "local") or n.id in optional)
        if names_tensor or n.kind == "tensor":
            raise NotDerivable(
                n.span,
                "a derived backward branches only on arguments, lets, dims, `training` and whether an optional"
                " input is given (this condition reads a tensor or whether a member is given)",
                "write a backward block; for an elementwise choice use where(cond, a, b)",
            )
    return cond


def _presence_tests(cond: N.Expr, layer: N.Layer) -> set[int]:
    """The nodes of `m != none` and `m == none` tests of optional inputs in `cond` (the Function keeps
    whether `m` was given on `ctx`, as its shape or None, for backward to choose the same side)."""
    assert layer.forward is not None
    optional = {i.name for i in layer.forward.inputs if i.optional}
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
