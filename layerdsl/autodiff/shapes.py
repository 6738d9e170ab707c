"""Static shapes of a `@function` layer's tape, by the shape engine's rules (`semantics/shapes.py`).

The emitter uses them to skip reductions a gradient does not need and to find a leaf with a given shape;
the backward's optimisation uses them to decide where an operation may update one of its operands in place.

Beyond the engine's rules, which size a slice only where no bound can pass an end of its dim: a slice's
bounds read the int locals forward assigns once and the sizes it measures (`size_at(x, -1)` as the dim x
declares there), a negative bound counts from the end, and where Python's clamping may apply (`-2:` of a
dim `d` that may be below 2; a slice with a step) the size is the slice as one symbol (`d[-2:]`,
`d[-3::2]`), so operands sliced alike (`x[:, n:] @ w[n:, :]`) still have one shape and their products a
static one (`slice_dim`).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Collection, Mapping

from layerdsl.autodiff.tape import Step, Tape
from layerdsl.diagnostics import SpecError
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import clone, map_children, walk
from layerdsl.semantics.shapes import (
    GROUP,
    Poly,
    Shape,
    as_int,
    atom,
    broadcast,
    constant,
    declared_shape,
    expr_shape,
    op_shape,
    poly,
    poly_add,
    poly_text,
    position,
    text_poly,
)
from layerdsl.syntax import parse_expr


def infer_shapes(
    tape: Tape, layer: N.Layer, measured: Mapping[tuple[str, int | None], str] | None = None
) -> dict[str, Shape]:
    """The shape of every input, tensor and tape variable (None when unknown). `measured`: the sizes the
    forward measures (`unroll.Measured`: `size_at(x, -1)` named `x_size_last`), each read as the dim its
    input's or member's declared shape has there (`d` of `x: [B, d]`, which the module checks)."""
    if layer.forward is None:
        raise ValueError(f"layer '{layer.name}' has no forward")  # the parser reports it first
    # an input of alternatives (`x: [B, n] | [n]`) has one of several shapes: none is known; each input's
    # `...` is its own group, which another input's may broadcast against (`x + q @ w`)
    shapes: dict[str, Shape] = {
        i.name: None if i.alternatives else declared_shape(i.shape, i.name, own_group=True)
        for i in layer.forward.inputs
    }
    shapes.update({t.name: declared_shape(t.shape, t.name) for t in layer.tensors})
    numbers = int_numbers(tape, measured_dims(measured or {}, shapes))
    for s in tape.steps:
        shapes[s.var] = step_shape(with_numbers(s, numbers), shapes)
    return shapes


def int_numbers(tape: Tape, sizes: Mapping[str, N.Expr] | None = None) -> dict[str, N.Expr]:
    """The int number locals forward assigns once (`h = d // 2`), each as its expression over dims and
    arguments (an earlier one's name replaced by its value; a measured size's by `sizes`'): a slice bounded
    by one (`q[..., :h]`) then has the size the shape rules prove (`d // 2`), and what is computed from it a
    static shape. `sizes` are among them."""
    assigned = Counter(name for name, _ in tape.numbers)
    out: dict[str, N.Expr] = dict(sizes or {})
    for name, value in tape.numbers:
        if assigned[name] == 1 and value.kind == N.Kind.INT:
            out[name] = _inlined(value, out)
    return out


def measured_dims(measured: Mapping[tuple[str, int | None], str], shapes: Mapping[str, Shape]) -> dict[str, N.Expr]:
    """Each measured size (by its name) that its input's or member's declared shape names a dim at, as that
    dim (`x_size_last` of `x: [B, d]` as `d`)."""
    out: dict[str, N.Expr] = {}
    for (leaf, k), name in measured.items():
        shape = shapes.get(leaf)
        p = None if k is None else position(shape, k)
        if shape is None or p is None or shape[p] == GROUP:
            continue
        try:
            dim = parse_expr(shape[p])
        except SpecError:
            continue
        for n in walk(dim):
            if isinstance(n, N.Name):
                n.ref = N.Ref.DIM
            if isinstance(n, N.Expr):
                n.kind = N.Kind.INT
        out[name] = dim
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
    if s.op is None and isinstance(s.expr, N.Name) and not s.by_mask:
        return shapes.get(s.expr.id)  # a value read again, no gradient flowing back (a buffer's new value)
    if s.op is None or s.by_mask:
        return None  # kept as written, or as long as a mask has True elements
    if s.op.name == "index_many":
        return _picked_by_indices(s, shapes)
    shape = op_shape(
        s.op, s.args, lambda a: expr_shape(a, shapes), s.expr.items if isinstance(s.expr, N.Call) else None
    )
    if shape is None and s.op.name == "slice":
        return _sliced(s, shapes)
    if shape is None and s.op.shape == "reduce":
        return _reduced_whole(s)
    return shape


def _reduced_whole(s: Step) -> Shape:
    """A reduction over every dim without keepdim (`sum(x[mask])`): a scalar whatever its input's shape
    (an index by a bool mask has none the plan knows); None otherwise."""
    dim, keepdim = s.args.get("dim"), s.args.get("keepdim")
    every = dim is None or isinstance(dim, N.NoneLit)
    kept = keepdim is not None and not (isinstance(keepdim, N.Bool) and not keepdim.value)
    return () if every and not kept else None


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
        following = _next_shapes(steps, carried, updates, shapes)
        differ = {c for c in updates if carried[c] is not None and following[c] != carried[c]}
        if not differ:
            break
        carried.update(dict.fromkeys(differ))
    return carried


def reshaped_after_first_step(
    steps: list[Step], starts: dict[str, Shape], updates: dict[str, str], shapes: dict[str, Shape]
) -> dict[str, list[Shape]]:
    """The carried values (`carried_shapes`' arguments) whose static shape a step changes again after the
    first (`h = tanh(h[:, 1:])`: [B, d], [B, d - 1], [B, d - 2]), each with the shapes it takes: the
    Function keeps a carried value's steps at one shape, its start's or the first step's."""
    seen = {c: [starts[c]] for c in updates}
    current = dict(starts)
    for _ in range(len(updates) + 2):
        current = _next_shapes(steps, current, updates, shapes)
        for c, shape in current.items():
            seen[c].append(shape)
    return {
        c: taken for c, taken in seen.items() if None not in taken and any(a != b for a, b in zip(taken[1:], taken[2:]))
    }


def _next_shapes(
    steps: list[Step], carried: dict[str, Shape], updates: dict[str, str], shapes: dict[str, Shape]
) -> dict[str, Shape]:
    """Each carried value's shape after one step whose carried values have the shapes `carried`."""
    local = shapes | carried
    for s in steps:
        local[s.var] = step_shape(s, local)
    return {c: local.get(v) for c, v in updates.items()}


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


# ------------------------------------------------------------------ slices the shape rules leave unsized


def _sliced(s: Step, shapes: dict[str, Shape]) -> Shape:
    """`x[:, a:b:c]` of a slice whose size the shape rules do not prove (a negative bound on a dim that may
    be shorter, a bound measured from an input): the size `slice_dim` gives."""
    inp, dim = expr_shape(s.args["input"], shapes), s.args["dim"]
    step = s.args.get("step")
    if isinstance(step, N.NoneLit) or isinstance(step, N.Num) and step.value == 1:
        step = None
    if not isinstance(dim, N.Num) or type(dim.value) is not int:
        return None
    p = position(inp, dim.value)
    if inp is None or p is None or inp[p] == GROUP:
        return None
    size = slice_dim(s.args.get("start"), s.args.get("end"), inp[p], step)
    return None if size is None else inp[:p] + (size,) + inp[p + 1 :]


_STABLE = (N.Ref.ARG, N.Ref.DIM, N.Ref.LET, N.Ref.CONST)  # names whose value is the same wherever read


def slice_dim(lower: N.Expr | None, upper: N.Expr | None, dim: str, step: N.Expr | None = None) -> str | None:
    """The size of `[lower:upper:step]` over a dim of size `dim`, as Python's slicing gives it: a negative
    bound counts from the end (`-2` is `dim - 2`), and a bound is clamped into `[0, dim]`. Where the
    clamping is proven not to apply (step 1), the difference of the bounds (`d - d // 2`; `2` of `-2:` on
    a dim of 4); where it may, or with a step, the slice itself as one symbol (`d[-2:]`, `d[-3::2]`: the
    same text is the same size, whatever d is), so two operands sliced alike still have one shape. None
    where a bound or the step reads a value that may differ between two slices (a number local assigned
    twice, a loop's variable)."""
    bounds = [None if b is None or isinstance(b, N.NoneLit) else b for b in (lower, upper, step)]
    if any(b is not None and not _stable_int(b) for b in bounds):
        return None
    low, high, by = (None if b is None else poly(b) for b in bounds)
    size = text_poly(dim)
    if as_int(size) is not None and all(p is None or as_int(p) is not None for p in (low, high, by)):
        ints = [None if p is None else as_int(p) for p in (low, high, by)]
        if ints[2] is not None and ints[2] < 1:
            return None  # torch refuses the slice
        return str(len(range(as_int(size))[ints[0] : ints[1] : ints[2]]))  # type: ignore[arg-type]
    texts = ["" if p is None else _python_text(p) for p in (low, high, by)]
    sliced = f"{_operand(_python_text(size))}[{texts[0]}:{texts[1]}{f':{texts[2]}' if texts[2] else ''}]"
    clamped = poly_text(atom(sliced))
    if by is not None:
        return clamped
    sizes = set(re.findall(r"[A-Za-z_]\w*", dim))  # a bound of these (or of dims) is never negative
    start, stop = (_position_in(b, p, size, sizes) for b, p in zip(bounds, (low, high)))
    start = constant(0) if low is None else start
    stop = size if high is None else stop
    if start is not None and stop is not None and _ordered(start, stop):
        return poly_text(poly_add(stop, start, -1))
    return clamped


def _python_text(p: Poly) -> str:
    """A polynomial as Python reads it back (`-(d // 4)`, `2 * (d // 4)`), where its canonical text
    (`-d // 4`) leaves a factor's operator unbracketed: a clamped slice's symbol is read back as the
    size it stands for (`autodiff.shape_sources`)."""
    parts: list[str] = []
    for m, c in sorted(p, key=lambda t: (t[0] == (), t[0])):
        factors = [_operand(f) if k == 1 else f"{_operand(f)} ** {k}" for f, k in m]
        body = " * ".join(([str(abs(c))] if abs(c) != 1 or not factors else []) + factors)
        if parts:
            parts.append(f"{'+' if c > 0 else '-'} {body}")
        else:
            parts.append(body if c > 0 else f"-{body}")
    return " ".join(parts) or "0"


def _stable_int(e: N.Expr) -> bool:
    """Whether `e` is an int expression of numbers and names read alike everywhere (arguments, dims)."""
    if isinstance(e, N.Num):
        return type(e.value) is int
    if e.kind != N.Kind.INT:
        return False
    return all(n.ref in _STABLE for n in walk(e) if isinstance(n, N.Name)) and not any(
        isinstance(n, N.Call | N.Subscript) for n in walk(e)
    )


def _position_in(bound: N.Expr | None, value: Poly | None, size: Poly, sizes: set[str]) -> Poly | None:
    """Where a bound falls in a dim of `size`, where it is proven that no clamping applies: a negative
    number as `size` plus it, when that is proven >= 0; a bound of sizes proven at most `size` as itself.
    None otherwise (and for no bound)."""
    if bound is None or value is None:
        return None
    number = as_int(value)
    if number is not None and number < 0:
        moved = poly_add(size, value)
        return moved if _nonnegative(moved) else None
    of_sizes = all(n.ref == N.Ref.DIM or n.id in sizes for n in walk(bound) if isinstance(n, N.Name))
    if not of_sizes or not _nonnegative(value) or not _ordered(value, size):
        return None
    return value


def _nonnegative(p: Poly) -> bool:
    """Whether `p` is proven >= 0 for sizes of at least 1: a number >= 0, or terms of positive coefficients
    (each factor a size, or a size divided down) whose sum with the number is >= 0."""
    value = as_int(p)
    if value is not None:
        return value >= 0
    terms = dict(p)
    rest = [c for m, c in terms.items() if m != ()]
    return all(c > 0 for c in rest) and terms.get((), 0) + sum(rest) >= 0


def _ordered(low: Poly, high: Poly) -> bool:
    """Whether `low <= high` is proven: their difference is >= 0, or `low` is `high // c` (c >= 1)."""
    if _nonnegative(poly_add(high, low, -1)):
        return True
    head, _, divisor = poly_text(low).rpartition(" // ")
    return head == _operand(poly_text(high)) and divisor.isdigit() and int(divisor) >= 1


def _operand(text: str) -> str:
    return text if text.isidentifier() or text.lstrip("-").isdigit() else f"({text})"
