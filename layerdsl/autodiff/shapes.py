"""Static shapes of a `@function` layer's tape: symbolic dims as written in the spec.

A shape is a tuple of dim texts (`("...", "num_features")`), `"..."` standing for the leading group of an
input declared `[..., n]`; `None` means unknown. The emitter uses them to skip reductions a gradient does
not need and to find a leaf with a given shape; the backward's fusion pass uses them to decide where an
operation may update one of its operands in place.
"""

from __future__ import annotations

from layerdsl.autodiff.derive import Step, Tape
from layerdsl.codegen.pyexpr import PyExpr, Spelling
from layerdsl.ir import nodes as N


def infer_shapes(tape: Tape, layer: N.Layer) -> dict[str, tuple | None]:
    """Symbolic shapes as tuples of dim texts ('...' for the leading group); None when unknown."""
    render = PyExpr(Spelling())
    shapes: dict[str, tuple | None] = {}
    for inp in layer.forward.inputs:
        # A shapeless input gets an opaque shape of its own: equal to itself, broadcast with scalars.
        shapes[inp.name] = (
            tuple("..." if isinstance(d, N.EllipsisItem) else render(d) for d in inp.shape.dims)
            if inp.shape
            else (f"<{inp.name}>",)
        )
    for t in layer.tensors:
        shapes[t.name] = tuple(render(d) for d in t.shape.dims)
    for s in tape.steps:
        shapes[s.var] = step_shape(s, shapes)
    return shapes


def operand_shape(a, shapes):
    if isinstance(a, N.Name) and a.kind == "tensor":
        return shapes.get(a.id)
    return ()  # a number


def broadcast(shapes_list):
    out: list = []
    for shape in shapes_list:
        if shape is None:
            return None
        if not shape:
            continue
        if not out:
            out = list(shape)
            continue
        if "..." in out and "..." in shape and len(out) != len(shape):
            return None
        long, short = (out, list(shape)) if len(out) >= len(shape) else (list(shape), out)
        if "..." in short and len(short) != len(long) or any(d.startswith("<") for d in short) and short != long:
            return None
        for i in range(1, len(short) + 1):
            if short[-i] != long[-i] and short[-i] != "1" and long[-i] != "1":
                return None
            if long[-i] == "1":
                long[-i] = short[-i]
        out = long
    return tuple(out)


def step_shape(s: Step, shapes):
    if s.op is None:
        return None
    args = s.args
    if s.op.shape == "elementwise":
        return broadcast([operand_shape(a, shapes) for k, a in args.items() if s.op.param(k) and s.op.param(k).tensor])
    if s.op.shape == "softmax":
        return operand_shape(args["input"], shapes)
    if s.op.shape == "reduce":
        shape = operand_shape(args["input"], shapes)
        dim, keep = args.get("dim"), args.get("keepdim")
        dims = [dim] if isinstance(dim, N.Num) else dim.items if isinstance(dim, N.ListExpr) else None
        if shape is None or not dims or not all(isinstance(d, N.Num) for d in dims) or not isinstance(keep, N.Bool):
            return None
        if any(d.value >= 0 for d in dims) and "..." in shape:
            return None
        out = list(shape)
        for d in sorted((d.value % len(shape) for d in dims), reverse=True):
            if keep.value:
                out[d] = "1"
            else:
                del out[d]
        return tuple(out)
    if s.op.name == "align":
        shape = operand_shape(args["input"], shapes)
        if shape is None:
            return None
        out, rest = [], list(shape)
        for item in s.expr.items:
            out.append("1" if isinstance(item, N.NoneLit) else rest.pop(0))
        return tuple(out + rest)
    if s.op.name == "permute":
        shape = operand_shape(args["input"], shapes)
        if shape is None or "..." in shape:
            return None
        return tuple(shape[d.value] for d in args["dims"].items)
    if s.op.name == "einsum":
        ins, out = args["equation"].value.split("->")
        sizes = {}
        for spec, operand in zip(ins.split(","), args["operands"].items):
            shape = operand_shape(operand, shapes)
            if shape is None or "..." in shape or len(shape) != len(spec):
                return None
            sizes.update(zip(spec, shape))
        return tuple(sizes[c] for c in out)
    if s.op.shape == "matmul":
        return matmul_shape(operand_shape(args["input"], shapes), operand_shape(args["other"], shapes))
    return None


def matmul_shape(a, b):
    """`a @ b` where `b` is a matrix; None otherwise (batched and vector cases are left unknown)."""
    if a is None or b is None or len(a) < 2 or len(b) != 2:
        return None
    return tuple(a[:-1]) + (b[-1],)


def same_shape_leaf(tape: Tape, var: str) -> str | None:
    shapes = getattr(tape, "shapes", {})
    target = shapes.get(var)
    if target is None:
        return None
    return next((l for l in tape.leaves if shapes.get(l) == target), None)
