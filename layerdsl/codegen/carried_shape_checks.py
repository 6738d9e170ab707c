"""A run-time check that a value a loop carries keeps one shape from step to step, where its static shape
is not known.

A derived backward keeps a carried value's steps at one shape: its own stacks are made at the first step's,
and it reads the value's shape as the one the loop left it with. Where the shapes prove a step changes it
again (`h = tanh(h[:, 1:])`), planning refuses the loop (`autodiff.loops`); where an operation's shape rule
gives none (`cat([h, reshape(x, [-1, d])[:k]], dim = 0)`), the Function's forward compares, at each step
after the first (whose start may be smaller: `h = new_zeros(x, [H])` then `[B, H]`), the step's new
value's shape with the value it started from (`shape_read`: those checked from the first step on), and raises a ValueError naming the layer, the value and the spec
line, before torch's own error in backward.
"""

from __future__ import annotations

from layerdsl.autodiff.loops import Loop
from layerdsl.semantics.shapes import Shape


def unknown_shape_checks(
    loop: Loop, shapes: dict[str, Shape], layer: str, path: str, index: str, shape_read: set[str]
) -> list[str]:
    """The lines checking each carried value of `loop` whose static shape is unknown (`shapes`), at the step
    `index` (the loop's step count from 0), before it moves to its new value; from the first step on for
    those whose shape backward reads as the loop left it (`shape_read`: its start is read at that shape)."""
    lines = []
    for carried, new in loop.updates.items():
        if new == carried or shapes.get(carried) is not None or carried in loop.shapes_kept:
            continue
        if carried in loop.buffers.values():  # a buffer's value: the module writes it as the plain one does
            continue
        step = loop.tape.step(new)
        line = step.expr.span.line if step is not None else loop.span.line
        local = loop.carried_locals.get(carried, carried)
        message = (
            f"{layer}: under @function, each step of the loop at {path}:{loop.span.line} keeps the shape of"
            f" '{local}'{'' if carried in shape_read else ' after the first'} (a derived backward keeps its steps at"
            f" one shape), but {path}:{line}"
            f" made it {{tuple({new}.shape)}} from {{tuple({carried}.shape)}} at step {{{index}}}"
        )
        after = "" if carried in shape_read else f"{index} > 0 and "
        lines += [f"if {after}{new}.shape != {carried}.shape:", f'    raise ValueError(f"{message}")']
    return lines
