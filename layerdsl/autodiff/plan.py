"""Derivation as a stage: for each `@function` layer, the plan of its backward.

A plan holds what the Function emitter writes out: the tape of the forward (with static shapes), the
backward's incoming gradients, and the backward itself, derived by reverse mode or written in the spec.
What cannot be derived is reported here as located diagnostics, so `layerdsl check` finds it without
emitting anything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from layerdsl.autodiff.reverse import Backward, GradStmt, derive
from layerdsl.autodiff.shapes import infer_shapes
from layerdsl.autodiff.tape import Linearizer, NotDerivable, Tape
from layerdsl.diagnostics import Diagnostic
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import clone, walk
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


def plan_backwards(files: list[N.SpecFile]) -> tuple[dict[str, BackwardPlan], list[Diagnostic]]:
    """The plan of every `@function` layer, by layer name, and what cannot be derived. A file's layers
    after the first that cannot be derived are not planned: one such error per file is reported."""
    plans: dict[str, BackwardPlan] = {}
    problems: list[Diagnostic] = []
    for f in files:
        for layer in f.layers:
            if not layer.is_function:
                continue
            try:
                plans[layer.name] = plan_backward(layer)
            except NotDerivable as exc:
                problems.append(Diagnostic(layer.path, exc.span, exc.message, exc.hint))
                break
    return plans, problems


def plan_backward(layer: N.Layer) -> BackwardPlan:
    """One `@function` layer's plan; raises NotDerivable for what the derivation cannot go through."""
    optional = {t.name for t in layer.tensors if t.cond is not None}
    tape = Linearizer(layer, optional, deriving=layer.backward is None).run()
    tape = dataclasses.replace(tape, shapes=infer_shapes(tape, layer))
    if layer.backward is not None:
        grads = [name for name, _ in layer.backward.grads]
        return BackwardPlan(tape, grads, incoming_gradients(tape, grads), None, written_backward(layer.backward, tape))
    grads = incoming_names(tape)
    return BackwardPlan(tape, grads, incoming_gradients(tape, grads), derive(tape, grads), [])


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
