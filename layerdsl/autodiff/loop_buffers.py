"""Buffer updates in the body of a loop kept as one (`update mean = 0.9 * mean + 0.1 * mean_over(h)`).

The plain module writes the buffer at every step under no_grad, and a step reads what the step before
wrote. A loop Function carries the buffer's value through the loop as a value of its own, as it carries
`h`: it starts as the buffer's value before the loop (the input, or what an update before the loop gave
it), each step's reads of the buffer before its update read the value the step before left (through a
step no gradient flows back through, `Linearizer.updated_buffer`), and the step's new value, cut from
the gradient (it may read the step's tensors, as a running mean does), is what the next step starts
with. After the loop the carried name holds the last value: the Function returns it, not differentiable,
and the module writes it into the buffer (`codegen.function_buffers`), bit for bit the plain module's.

A loop planned otherwise (a `Nest`: a loop holding a loop, or one whose `if` picks its side per step) whose
body, inner loops or `if`s update a buffer carries it as a local of its own (`as_carried_locals`, before
planning): bound to the buffer's value before the loop, bound again after each `update` to the new value
(through the step no gradient flows back through), and written to the buffer after the loop, so the nest's
carried values and a choice per step's merged locals carry it as they carry `h`; no gradient is derived for
such a local (`buffer_locals`). Under `save = "inputs"` the forward run again binds every read of a new
value detached (`new_values`), inside nests, loops and the sides of `if`s too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from layerdsl.autodiff import nest
from layerdsl.autodiff.tape import Step, Tape, reserved_names
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import map_children, names_bound, statements, walk
from layerdsl.language.naming import fresh_name


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


def as_carried_locals(body: list[N.Stmt], taken: set[str], optional: set[str]) -> list[N.Stmt]:
    """`body` (a forward's, with loops) where each loop whose buffer updates a loop Function does not carry
    itself (`update_in_a_loop_body`: one in a loop holding a loop, in an `if` chosen per step or on its side)
    carries each buffer it updates as a local of its own instead: bound before the loop to the buffer's value
    (`avg_value = avg`), read in the loop where the buffer is read, bound again after each `update` to the
    buffer's new value (`update avg = ...; avg_value = avg`: a read after an update reads the new value
    through a step no gradient flows back through, `Linearizer.updated_buffer`, as the plain module updates
    it under no_grad and reads it back from the buffer), and the buffer updated right after the loop from
    that local (`update avg = avg_value`: the value the Function returns for the module to write). The
    loop's machinery (a `Nest`'s carried values, a choice per step's merged locals) then carries it as any
    local, and its gradient stops at each update. `taken`: the names in use (the new locals are named apart
    from them); `optional`: the optional buffers (one is not carried so: `carried_as_locals`)."""
    out: list[N.Stmt] = []
    for stmt in body:
        if update_in_a_loop_body(stmt) or not carried_as_locals(stmt, optional):
            out.append(stmt)
            continue
        updated = [s.target for s in statements([stmt]) if isinstance(s, N.Update)]
        names: dict[str, str] = {}
        for buffer in dict.fromkeys(updated):
            names[buffer] = fresh_name(f"{buffer}_value", taken)
            taken.add(names[buffer])
        span = stmt.span
        for buffer, local in names.items():
            out.append(N.Assign(span, local, span, B.name(buffer, span, N.Ref.BUFFER)))
        out.append(_renamed(stmt, names))
        for buffer, local in names.items():
            out.append(N.Update(span, buffer, span, B.name(local, span)))
    return out


def _renamed(node, names: dict[str, str]):
    """`node` with each read of a buffer of `names` a read of its local, each `update` of one followed by
    the local bound to the buffer's new value."""

    def go(n):
        if isinstance(n, N.Name) and n.ref == N.Ref.BUFFER and n.id in names:
            return B.name(names[n.id], n.span)
        n = map_children(n, go)
        if isinstance(n, N.If):
            n.orelse = [t for s in n.orelse for t in _rebound(s, names)]
        if isinstance(n, N.If | N.For):
            n.body = [t for s in n.body for t in _rebound(s, names)]
        return n

    return go(node)


def _rebound(stmt: N.Stmt, names: dict[str, str]) -> list[N.Stmt]:
    if not isinstance(stmt, N.Update) or stmt.target not in names:
        return [stmt]
    read = B.name(stmt.target, stmt.target_span, N.Ref.BUFFER)
    return [stmt, N.Assign(stmt.span, names[stmt.target], stmt.target_span, read)]


def carried_as_locals(stmt: N.Stmt, optional: set[str]) -> bool:
    """Whether `stmt` is a loop that updates buffers and carries them as locals (`as_carried_locals`): each
    one it updates is a buffer given at every call (not one of `optional`), read in the loop as itself only."""
    if not isinstance(stmt, N.For) or not _updates(stmt):
        return False
    updated = {s.target for s in statements([stmt]) if isinstance(s, N.Update)}
    if updated & optional:
        return False
    return all(n.ref == N.Ref.BUFFER for n in walk(stmt) if isinstance(n, N.Name) and n.id in updated)


def carries_its_updates(stmt: N.Stmt, layer: N.Layer) -> bool:
    """Whether `stmt` is a loop whose buffer updates a forward with loops derives: a loop Function carries
    them (`update_in_a_loop_body`: at the top level of a loop holding no loop nor an `if` chosen per step),
    or the loop carries them as locals (`carried_as_locals`)."""
    return isinstance(stmt, N.For) and (update_in_a_loop_body(stmt) or carried_as_locals(stmt, _optional(layer)))


def _optional(layer: N.Layer) -> set[str]:
    return {t.name for t in layer.buffers if t.cond is not None}


def with_carried_locals(layer: N.Layer) -> N.Layer:
    """`layer` whose forward's loops carry the buffers they update as locals where a loop Function does not
    carry them itself (`as_carried_locals`)."""
    assert layer.forward is not None
    body = layer.forward.body
    optional = _optional(layer)
    if not any(carried_as_locals(s, optional) and not update_in_a_loop_body(s) for s in body):
        return layer
    taken = reserved_names(layer) | {n.id for s in body for n in walk(s) if isinstance(n, N.Name)}
    return layer.with_body(as_carried_locals(body, taken | names_bound(body), optional))


def buffer_locals(forward: N.Forward) -> set[str]:
    """The locals of `forward` bound only to a buffer's value (`avg_value = avg`, `as_carried_locals`): no
    gradient flows into one (a buffer gets none, and a read of its new value passes none back)."""
    bound: dict[str, bool] = {}
    for s in statements(forward.body):
        if isinstance(s, N.Assign):
            read = isinstance(s.value, N.Name) and s.value.ref == N.Ref.BUFFER
            bound[s.target] = bound.get(s.target, True) and read
        elif isinstance(s, N.Unpack):
            bound.update({t: False for t, _ in s.targets})
    return {local for local, only in bound.items() if only}


def new_values(segments: list) -> set[str]:
    """The values of a forward's `segments` (those inside loops, nests and the sides of `if`s too) that hold a
    buffer's new value: an `update`'s, the name a loop carries a buffer by, and a loop step's next value of
    it through its renames (`h = h + avg` after `update avg = ...` reads it). A step reading one (a read of
    the buffer after its update) passes no gradient back, so the forward run again in backward binds it
    detached (`codegen.function_buffers.reads_a_new_value`)."""
    from layerdsl.autodiff.loops import Loop

    out: set[str] = set()
    for tape in nest.segment_tapes(segments):
        out |= set(tape.updates.values())
    for seg in segments:
        if isinstance(seg, nest.Nest):
            out |= new_values(seg.segments)
        elif isinstance(seg, Loop):
            for carried in seg.buffers.values():
                out.add(carried)
                out |= _renames(seg.tape, seg.updates.get(carried))
    return out


def _renames(tape: Tape, var: str | None) -> set[str]:
    """`var` and the names it is a rename of, through the tape's plain reads (`new = avg2`, `avg2 = avg1`)."""
    out: set[str] = set()
    while var is not None and var not in out:
        out.add(var)
        step = tape.step(var)
        var = step.expr.id if step is not None and step.op is None and isinstance(step.expr, N.Name) else None
    return out
