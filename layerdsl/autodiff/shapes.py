"""Static shapes of a `@function` layer's tape, by the shape engine's rules (`semantics/shapes.py`).

The emitter uses them to skip reductions a gradient does not need and to find a leaf with a given shape;
the backward's optimisation uses them to decide where an operation may update one of its operands in place.
"""

from __future__ import annotations

from layerdsl.autodiff.tape import Step, Tape
from layerdsl.ir import nodes as N
from layerdsl.semantics.shapes import Shape, declared_shape, expr_shape, op_shape


def infer_shapes(tape: Tape, layer: N.Layer) -> dict[str, Shape]:
    """The shape of every input, tensor and tape variable (None when unknown)."""
    if layer.forward is None:
        raise ValueError(f"layer '{layer.name}' has no forward")  # the parser reports it first
    shapes: dict[str, Shape] = {i.name: declared_shape(i.shape, i.name) for i in layer.forward.inputs}
    shapes.update({t.name: declared_shape(t.shape, t.name) for t in layer.tensors})
    for s in tape.steps:
        shapes[s.var] = step_shape(s, shapes)
    return shapes


def step_shape(s: Step, shapes: dict[str, Shape]) -> Shape:
    """The shape of a step's result, from the shapes of the names it reads."""
    if s.op is None:
        return None  # kept as written (a comparison)
    return op_shape(s.op, s.args, lambda a: expr_shape(a, shapes), s.expr.items if isinstance(s.expr, N.Call) else None)


def same_shape_leaf(tape: Tape, var: str) -> str | None:
    """A leaf (input or tensor) known to have the shape of `var`, if any."""
    shapes = tape.shapes
    target = shapes.get(var)
    if target is None:
        return None
    return next((leaf for leaf in tape.leaves if shapes.get(leaf) == target), None)
