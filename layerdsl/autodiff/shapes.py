"""Static shapes of a `@function` layer's tape, by the shape engine's rules (`semantics/shapes.py`).

The emitter uses them to skip reductions a gradient does not need and to find a leaf with a given shape;
the backward's optimisation uses them to decide where an operation may update one of its operands in place.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Collection, Mapping

from layerdsl.autodiff.tape import Step, Tape
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import clone, map_children, walk
from layerdsl.semantics.shapes import GROUP, Shape, broadcast, declared_shape, expr_shape, op_shape


def infer_shapes(tape: Tape, layer: N.Layer) -> dict[str, Shape]:
    """The shape of every input, tensor and tape variable (None when unknown)."""
    if layer.forward is None:
        raise ValueError(f"layer '{layer.name}' has no forward")  # the parser reports it first
    # an input of alternatives (`x: [B, n] | [n]`) has one of several shapes: none is known; each input's
    # `...` is its own group, which another input's may broadcast against (`x + q @ w`)
    shapes: dict[str, Shape] = {
        i.name: None if i.alternatives else declared_shape(i.shape, i.name, own_group=True)
        for i in layer.forward.inputs
    }
    shapes.update({t.name: declared_shape(t.shape, t.name) for t in layer.tensors})
    numbers = int_numbers(tape)
    for s in tape.steps:
        shapes[s.var] = step_shape(with_numbers(s, numbers), shapes)
    return shapes


def int_numbers(tape: Tape) -> dict[str, N.Expr]:
    """The int number locals forward assigns once (`h = d // 2`), each as its expression over dims and
    arguments (an earlier one's name replaced by its value): a slice bounded by one (`q[..., :h]`) then has
    the size the shape rules prove (`d // 2`), and what is computed from it a static shape."""
    assigned = Counter(name for name, _ in tape.numbers)
    out: dict[str, N.Expr] = {}
    for name, value in tape.numbers:
        if assigned[name] == 1 and value.kind == N.Kind.INT:
            out[name] = _inlined(value, out)
    return out


def with_numbers(s: Step, numbers: Mapping[str, N.Expr]) -> Step:
    """The step with the number locals of `numbers` that it reads written as their values."""
    if not numbers or not any(isinstance(n, N.Name) and n.id in numbers for n in walk(s.expr)):
        return s
    args = {k: _inlined(v, numbers) for k, v in s.args.items()}
    return dataclasses.replace(s, args=args, expr=_inlined(s.expr, numbers))


def _inlined(e: N.Expr, numbers: Mapping[str, N.Expr]) -> N.Expr:
    if isinstance(e, N.Name) and e.kind == N.Kind.INT and e.id in numbers:
        return clone(numbers[e.id])
    return map_children(e, lambda c: _inlined(c, numbers))


def step_shape(s: Step, shapes: dict[str, Shape]) -> Shape:
    """The shape of a step's result, from the shapes of the names it reads."""
    if s.op is None and isinstance(s.expr, N.Compare) and not s.by_mask:
        return expr_shape(s.expr, shapes)  # a comparison broadcasts as an elementwise operation does
    if s.op is None or s.by_mask:
        return None  # kept as written, or as long as a mask has True elements
    if s.op.name == "index_many":
        return _picked_by_indices(s, shapes)
    return op_shape(s.op, s.args, lambda a: expr_shape(a, shapes), s.expr.items if isinstance(s.expr, N.Call) else None)


def carried_shapes(
    steps: list[Step], starts: dict[str, Shape], updates: dict[str, str], shapes: dict[str, Shape]
) -> dict[str, Shape]:
    """The static shape of each carried value of a loop (`starts`: its start's, by name) that holds at every
    step: its start's, or None (unknown) where the body (`steps`, with each carried value's next value in
    `updates`) may make it another: `h = new_zeros(x, [H])` is [H] at step 0 and [B, H] after it, so the
    body's shapes taken from the start would skip the reductions the later steps need (`h @ w + b`'s
    gradient summed down to b's [H])."""
    carried = dict(starts)
    for _ in range(len(carried) + 1):
        local = shapes | carried
        for s in steps:
            local[s.var] = step_shape(s, local)
        differ = {c for c, v in updates.items() if carried[c] is not None and local.get(v) != carried[c]}
        if not differ:
            break
        carried.update(dict.fromkeys(differ))
    return carried


def _picked_by_indices(s: Step, shapes: dict[str, Shape]) -> Shape:
    """`x[:, i, j]`: x's dims before, the index tensors' broadcast shape, x's dims after."""
    inp, dim, listed = expr_shape(s.args["input"], shapes), s.args["dim"], s.args["indices"]
    assert isinstance(dim, N.Num) and isinstance(listed, N.ListExpr), "Linearizer.subscript lists them"
    picked = broadcast(expr_shape(i, shapes) for i in listed.items)
    after = int(dim.value) + len(listed.items)
    if inp is None or picked is None or GROUP in inp[:after] or len(inp) < after:
        return None
    return inp[: int(dim.value)] + picked + inp[after:]


def same_shape_leaf(tape: Tape, var: str, absent: Collection[str] = ()) -> str | None:
    """A leaf (input or tensor) known to have the shape of `var`, if any; not one of `absent`, the leaves
    that may be none (an optional input, a member declared with `if`)."""
    shapes = tape.shapes
    target = shapes.get(var)
    if target is None:
        return None
    return next((leaf for leaf in tape.leaves if shapes.get(leaf) == target and leaf not in absent), None)
