"""Buffer updates in the body of a loop kept as one (`update mean = 0.9 * mean + 0.1 * mean_over(h)`).

The plain module writes the buffer at every step under no_grad, and a step reads what the step before
wrote. A loop Function carries the buffer's value through the loop as a value of its own, as it carries
`h`: it starts as the buffer's value before the loop (the input, or what an update before the loop gave
it), each step's reads of the buffer before its update read the value the step before left (through a
step no gradient flows back through, `Linearizer.updated_buffer`), and the step's new value, cut from
the gradient (it may read the step's tensors, as a running mean does), is what the next step starts
with. After the loop the carried name holds the last value: the Function returns it, not differentiable,
and the module writes it into the buffer (`codegen.function_buffers`), bit for bit the plain module's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from layerdsl.autodiff import nest
from layerdsl.autodiff.tape import Step, Tape
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N


def updated_in_body(loop: N.For) -> list[str]:
    """The buffers `loop`'s body updates (at its top level: an `if`'s are refused at the `if`), in order."""
    return list(dict.fromkeys(s.target for s in loop.body if isinstance(s, N.Update)))


def update_in_a_loop_body(stmt: N.Stmt) -> bool:
    """Whether `stmt` is a loop holding no loop (nor an `if` chosen per step) whose body updates a buffer at
    its top level only (what a loop Function carries, `carried_buffers`)."""
    if not isinstance(stmt, N.For) or nest.as_nest(stmt):  # a `Nest` (a loop or a choice per step inside)
        return False
    return not any(isinstance(s, N.If) and _updates(s) for s in stmt.body)


def _updates(stmt: N.Stmt) -> bool:
    if isinstance(stmt, N.Update):
        return True
    if isinstance(stmt, N.If):
        return any(_updates(s) for s in stmt.body + stmt.orelse)
    if isinstance(stmt, N.For):
        return any(_updates(s) for s in stmt.body)
    return False


def carried_buffers(tape: Tape, carried: dict[str, str], fresh: Callable[[str], str]) -> tuple[Tape, dict[str, str]]:
    """The body's `tape` with, for each updated buffer (`carried`: buffer -> the name carrying it), a last
    step that cuts its new value from the gradient (the next step's start reads no gradient back); and the
    var of that step, by buffer. A buffer the body only reads is carried unchanged."""
    steps = list(tape.steps)
    nexts: dict[str, str] = {}
    for buffer, name in carried.items():
        new = tape.updates.get(buffer, name)
        if new == name:
            nexts[buffer] = name
            continue
        var = fresh(f"{buffer}_next")
        steps.append(Step(var, None, {}, B.name(new)))
        nexts[buffer] = var
    return dataclasses.replace(tape, steps=steps, updates={}), nexts
