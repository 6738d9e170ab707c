"""Buffer updates of a `@function` layer: computed by the Function, written by the module.

No gradient flows into a buffer, so `update b = expr` is a side effect of the forward, not part of the
function it differentiates. The Function's forward computes each new value once, from the values the
forward computes anyway (the batch statistics that normalisation uses), and returns it as an extra output
marked non-differentiable; the module writes it into the buffer under `no_grad`, as the plain module does.
The Function itself stays pure: gradcheck, double backward and torch.func transforms call its forward again
without touching the module's state, and the buffers end with the values the plain module gives them.
"""

from __future__ import annotations

import copy

from layerdsl.autodiff.loop_buffers import new_values
from layerdsl.autodiff.loops import Loop, LoopPlan, Straight
from layerdsl.autodiff.plan import BranchPlan, Plan, straight_plans
from layerdsl.autodiff.tape import Step, Tape
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.language.naming import fresh_name


def updated_buffers(plan: Plan, declared: list[str]) -> list[str]:
    """The buffers some side of the forward updates, in declaration order (the Function returns them last)."""
    updated = {b for side in side_updates(plan) for b in side}
    return [b for b in declared if b in updated]


def side_updates(plan: Plan) -> list[dict[str, str]]:
    """Each side's updates (buffer -> the var holding its new value): a straight side's, or those of a loop
    Function's straight segments (the last update of a buffer is the one it keeps)."""
    if isinstance(plan, BranchPlan):
        return side_updates(plan.then) + side_updates(plan.orelse)
    if isinstance(plan, LoopPlan):
        return [loop_updates(plan)]
    return [side.tape.updates for side in straight_plans(plan)]


def loop_updates(plan: LoopPlan) -> dict[str, str]:
    """The buffers a forward with loops updates, by the var holding each one's new value (a loop's body's:
    the name carrying it, `autodiff.loop_buffers`; the last segment's to update one is the one it keeps)."""
    updates: dict[str, str] = {}
    for seg in plan.segments:
        if isinstance(seg, Straight):
            updates |= seg.tape.updates
        elif isinstance(seg, Loop):
            updates |= seg.buffers
    return updates


def returned_values(updates: dict[str, str], buffers: list[str], leaves: list[str]) -> list[str]:
    """What the forward returns for each updated buffer: the var holding its new value (a copy when it is
    an input or member as it is: a Function returns no input unchanged), None where this side updates none."""
    values = []
    for b in buffers:
        var = updates.get(b)
        values.append("None" if var is None else f"{var}.clone()" if var in leaves else var)
    return values


def always_updated(plan: Plan, buffer: str) -> bool:
    """Whether every side of the forward updates `buffer` (else the module tests for None)."""
    return all(buffer in side for side in side_updates(plan))


def unpacked_call(
    call: str,
    n_outputs: int,
    n_extra: int,
    buffers: list[str],
    plan: Plan,
    taken: set[str],
    training_only: frozenset[str] = frozenset(),
) -> tuple[list[str], list[str]]:
    """The module's `Function.apply` call unpacked into its outputs and the new buffer values, each new value
    written into its buffer under no_grad (the intermediates the Function saves are dropped); and the
    names of the outputs. A buffer of `training_only` (every update under `if training`) is written in
    training only: in eval a loop returns the buffer it carried unchanged, a view of the buffer itself, and
    writing it into itself would bump its version under what the Function saved (round 25)."""
    outputs = [fresh_name("output" if n_outputs == 1 else f"output{k}", taken) for k in range(n_outputs)]
    taken = taken | set(outputs)
    new = {}
    for b in buffers:
        new[b] = fresh_name(f"new_{b}", taken)
        taken.add(new[b])
    lines = [f"{', '.join(outputs + ['_'] * n_extra + list(new.values()))} = {call}"]
    if new:
        lines += ["# the new values the Function computed (no gradient flows into a buffer)", "with torch.no_grad():"]
    for b, value in new.items():
        if always_updated(plan, b) and b in training_only:
            lines += ["    if self.training:", f"        self.{b}.copy_({value})"]
        elif always_updated(plan, b):
            lines.append(f"    self.{b}.copy_({value})")
        else:
            lines += [f"    if {value} is not None:", f"        self.{b}.copy_({value})"]
    return lines, outputs


def reads_a_new_value(step: Step, plan: LoopPlan) -> bool:
    """Whether `step` is a read of a buffer after its `update` (`Recorder.updated_buffer`: a step no gradient
    flows back through, binding the var that holds the new value): the forward run again in backward under
    `save = "inputs"` binds it detached, as the plain module reads it from the buffer it wrote under no_grad,
    so that a double backward does not differentiate through the update either."""
    return step.op is None and isinstance(step.expr, N.Name) and step.expr.id in new_values(plan.segments)


def recomputed_read(step: Step, tape: Tape) -> N.Expr:
    """The expression a backward computes `step` again with (`save = "inputs"`, a forward without loops):
    a read of a buffer's new value after its `update` (`Tape.updates`) detached, as `reads_a_new_value` has
    it in a loop's forward, so that a double backward does not differentiate through the update."""
    if step.op is None and isinstance(step.expr, N.Name) and step.expr.id in tape.updates.values():
        return B.call("detached", step.expr, span=step.expr.span)
    return _renormalised_once(step)


def _renormalised_once(step: Step) -> N.Expr:
    """`embedding(..., max_norm = m)` computed again in backward without its `max_norm`: forward renormalised
    the rows it picks in place already (as torch does), so doing it again would write into the saved weight
    (torch's "modified by an inplace operation" error in backward) for the same rows."""
    e = step.expr
    if step.op is None or step.op.name != "embedding" or not isinstance(e, N.Call):
        return e
    if not any(k.name == "max_norm" for k in e.kwargs):
        return e
    again = copy.copy(e)
    again.kwargs = [k for k in e.kwargs if k.name not in ("max_norm", "norm_type")]
    return again
