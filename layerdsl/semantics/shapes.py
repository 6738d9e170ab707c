"""Static shapes over symbolic dims: the one set of shape rules every stage uses.

A shape is a tuple of dims, or None when it is unknown. A dim is the canonical spec text of its expression
(`"in_features"`, `"2 * n"`, `"1"`), so two dims are equal when they are written alike. Three texts are
special:

- `"..."` stands for the leading group of an input declared `[..., n]`: zero or more dims, always first;
- `"1"` is a dim of size 1, which broadcasts against any other;
- `"<x>"`, alone in a shape, stands for the whole shape of input `x` declared without one: equal only to
  itself, and broadcast only with numbers.

A Python number has the shape `()`. The rules compute the shape an operation gives when it runs; where that
depends on what is unknown statically (two different symbolic dims may or may not be equal, an index may
fall inside `...`), the answer is None rather than a guess. `expr_shape` gives an IR expression's shape from
the shapes of the names it reads; the rest are the rules for one kind of operation each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.language.ops import OPS, Op

Dim = str
Shape = tuple[Dim, ...] | None

GROUP = "..."  # the leading group of dims of an input declared `[..., n]`
ONE = "1"  # a dim of size 1


def dim_text(dim: N.Expr | N.EllipsisItem) -> Dim:
    """The canonical text of a declared dim (`...` for the leading group)."""
    return GROUP if isinstance(dim, N.EllipsisItem) else spec_text(dim)


def declared_shape(shape: N.Shape | None, name: str) -> tuple[Dim, ...]:
    """The shape declared for input or tensor `name`; an input declared without one gets an opaque shape."""
    if shape is None:
        return (f"<{name}>",)
    return tuple(dim_text(d) for d in shape.dims)


def _opaque(shape: Sequence[Dim]) -> bool:
    return any(d.startswith("<") for d in shape)


# ------------------------------------------------------------------ rules


def broadcast(shapes: Iterable[Shape]) -> Shape:
    """The shape operands broadcast to (numbers, `()`, broadcast with anything); None when an operand's
    shape is unknown or two dims cannot be shown to broadcast (different symbols, or a `...` group against
    dims it may or may not cover)."""
    out: list[Dim] = []
    for shape in shapes:
        if shape is None:
            return None
        if not shape:
            continue
        if not out:
            out = list(shape)
            continue
        if GROUP in out and GROUP in shape and len(out) != len(shape):
            return None
        long, short = (out, list(shape)) if len(out) >= len(shape) else (list(shape), out)
        if GROUP in short and len(short) != len(long) or _opaque(short) and short != long:
            return None
        for i in range(1, len(short) + 1):
            if short[-i] != long[-i] and ONE not in (short[-i], long[-i]):
                return None
            if long[-i] == ONE:
                long[-i] = short[-i]
        out = long
    return tuple(out)


def matmul(a: Shape, b: Shape) -> Shape:
    """`a @ b` as torch.matmul computes it: a vector operand (1-D) loses its dim in the result, leading
    (batch) dims broadcast. The inner dims are assumed to agree (the result does not depend on them)."""
    if a is None or b is None or not a or not b or _opaque(a) or _opaque(b):
        return None
    if GROUP in b and len(b) < 3:
        return None  # `[..., k]` may be a vector or a stack of matrices
    if len(b) == 1:
        return a[:-1]  # a matrix (or a stack) times a vector; also vector · vector = ()
    if len(a) == 1:
        return b[:-2] + b[-1:]
    batch = broadcast([a[:-2], b[:-2]])
    return None if batch is None else batch + (a[-2], b[-1])


def reduce(shape: Shape, dims: Sequence[int] | None, keepdim: bool) -> Shape:
    """A reduction over `dims` (None: over every dim), which are dropped or, with `keepdim`, kept as 1."""
    if shape is None or _opaque(shape):
        return None
    if dims is None:
        if not keepdim:
            return ()
        return None if GROUP in shape else (ONE,) * len(shape)
    positions = [p for p in (_position(shape, d) for d in dims) if p is not None]
    if len(positions) < len(dims):
        return None
    out = list(shape)
    for p in sorted(set(positions), reverse=True):
        if keepdim:
            out[p] = ONE
        else:
            del out[p]
    return tuple(out)


def _position(shape: tuple[Dim, ...], dim: int) -> int | None:
    """Where `dim` (negative counts from the end) is in `shape`; None when it may fall in a `...` group."""
    if GROUP in shape and (dim >= 0 or -dim > len(shape) - 1):
        return None
    if not -len(shape) <= dim < len(shape):
        return None
    return dim % len(shape)


def transpose(shape: Shape, dim0: int, dim1: int) -> Shape:
    """`shape` with two dims swapped."""
    if shape is None or _opaque(shape):
        return None
    p0, p1 = _position(shape, dim0), _position(shape, dim1)
    if p0 is None or p1 is None:
        return None
    out = list(shape)
    out[p0], out[p1] = out[p1], out[p0]
    return tuple(out)


def permute(shape: Shape, dims: Sequence[int]) -> Shape:
    """`shape`'s dims in the order `dims` gives."""
    if (
        shape is None
        or GROUP in shape
        or _opaque(shape)
        or sorted(d % max(len(shape), 1) for d in dims) != list(range(len(shape)))
    ):
        return None
    return tuple(shape[d] for d in dims)


def align(shape: Shape, new_axis: Sequence[bool]) -> Shape:
    """A broadcasting view `x[:, none]`: a size-1 dim where `new_axis` is true, the next dim of `shape`
    elsewhere; dims left over follow."""
    if shape is None or _opaque(shape) or sum(not n for n in new_axis) > len(shape):
        return None
    out, rest = [], list(shape)
    for new in new_axis:
        out.append(ONE if new else rest.pop(0))
    return tuple(out + rest)


def einsum(equation: str, shapes: Sequence[Shape]) -> Shape:
    """The result of `einsum(equation, operands)` (explicit `->` form, no `...`)."""
    inputs, arrow, output = equation.partition("->")
    specs = inputs.split(",")
    if not arrow or len(specs) != len(shapes):
        return None
    sizes: dict[str, Dim] = {}
    for spec, shape in zip(specs, shapes):
        if shape is None or GROUP in shape or _opaque(shape) or len(shape) != len(spec):
            return None
        sizes.update(zip(spec, shape))
    return tuple(sizes[c] for c in output) if all(c in sizes for c in output) else None


# ------------------------------------------------------------------ operations and expressions


def op_shape(
    op: Op, args: Mapping[str, N.Expr], shape_of: Callable[[N.Expr], Shape], items: Sequence | None = None
) -> Shape:
    """The shape of operation `op` applied to `args` (parameter name -> operand; absent ones take their
    defaults). `shape_of` gives an operand's shape; `items` are an `align` view's subscript items."""
    if op.shape == "elementwise":
        return broadcast(shape_of(args[p.name]) for p in op.params if p.tensor and p.name in args)
    if op.shape == "softmax":
        return shape_of(args["input"])
    if op.shape == "reduce":
        dims, keepdim = _literal(op, args, "dim"), _literal(op, args, "keepdim")
        if dims == [] and op.name in ("amax", "amin"):
            dims = None  # torch reduces over every dim
        if not isinstance(keepdim, bool) or not _dims(dims):
            return None
        return reduce(shape_of(args["input"]), None if dims is None else _as_list(dims), keepdim)
    if op.shape == "matmul":
        return matmul(shape_of(args["input"]), shape_of(args["other"]))
    if op.shape == "transpose":
        d0, d1 = _literal(op, args, "dim0"), _literal(op, args, "dim1")
        if not (type(d0) is int and type(d1) is int):
            return None
        return transpose(shape_of(args["input"]), d0, d1)
    if op.name == "align" and items is not None:
        return align(shape_of(args["input"]), [isinstance(i, N.NoneLit) for i in items])
    if op.name == "permute":
        dims = _literal(op, args, "dims")
        return permute(shape_of(args["input"]), dims) if isinstance(dims, list) and _dims(dims) else None
    if op.name == "einsum":
        equation, operands = args.get("equation"), args.get("operands")
        if not (isinstance(equation, N.Str) and isinstance(operands, N.ListExpr)):
            return None
        return einsum(equation.value, [shape_of(o) for o in operands.items])
    if op.name in ("sum_to", "expand_reduced"):
        return shape_of(args["input"])  # the gradient takes its input's shape
    if op.name == "reduced_view":  # a reduction's gradient with the reduced dims back as size 1
        dims = _literal(op, args, "dim")
        if dims is None:
            return shape_of(args["grad"])  # nothing to restore: the view is the gradient itself
        return reduce(shape_of(args["input"]), _as_list(dims), keepdim=True) if _dims(dims) else None
    return None


def expr_shape(e: N.Expr, env: Mapping[str, Shape]) -> Shape:
    """The shape of IR expression `e`, given the shapes of the tensors it names (a name missing from `env`
    has an unknown shape). Numbers have the shape `()`."""

    def shape_of(x: N.Expr) -> Shape:
        return expr_shape(x, env)

    if e.kind in ("int", "float", "bool"):
        return ()
    match e:
        case N.Name(id=name) if e.kind == "tensor":
            return env.get(name)
        case N.Name() | N.Num() | N.Bool():
            return ()
        case N.BinOp(op="@", left=left, right=right):
            return matmul(shape_of(left), shape_of(right))
        case N.BinOp(left=left, right=right):
            return broadcast([shape_of(left), shape_of(right)])
        case N.Compare(operands=operands):
            return broadcast(shape_of(o) for o in operands)
        case N.UnaryOp(operand=operand) | N.InPlace(target=operand):
            return shape_of(operand)
        case N.Call(func=func) if func in OPS:
            return op_shape(OPS[func], call_args(OPS[func], e), shape_of, e.items)
    return None


def call_args(op: Op, call: N.Call) -> dict[str, N.Expr]:
    """A call's operands by parameter name: positional ones in signature order, then the keywords."""
    args = {p.name: a for p, a in zip(op.params, call.args)}
    args.update((k.name, k.value) for k in call.kwargs)
    return args


_VARIABLE = object()  # an argument whose value is not known statically


def _literal(op: Op, args: Mapping[str, N.Expr], name: str):
    """A constant argument as a Python value (a list for a list), its default when absent, else `_VARIABLE`."""
    if name in args:
        return _value(args[name])
    p = op.param(name)
    default = p.default if p is not None else None
    literals: dict[str, object] = {"none": None, "true": True, "false": False, "[]": []}
    if default in literals:
        return literals[default]
    return int(default) if default is not None and default.lstrip("-").isdigit() else _VARIABLE


def _value(e: N.Expr):
    match e:
        case N.Num(value=v) | N.Bool(value=v):
            return v
        case N.NoneLit():
            return None
        case N.UnaryOp(op="-", operand=N.Num(value=v)):
            return -v
        case N.ListExpr(items=items):
            values = [_value(i) for i in items]
            return _VARIABLE if any(v is _VARIABLE for v in values) else values
    return _VARIABLE


def _dims(dims) -> bool:
    """Whether `dims` is None, an int or a list of ints (a constant `dim` argument)."""
    return dims is None or type(dims) is int or isinstance(dims, list) and all(type(d) is int for d in dims)


def _as_list(dims: int | list[int]) -> list[int]:
    return dims if isinstance(dims, list) else [dims]
