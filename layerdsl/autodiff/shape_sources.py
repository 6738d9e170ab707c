"""The leaves whose broadcast shape an intermediate has, for a backward that reads only its shape.

`mean(loss)`'s gradient expands to `loss`'s shape. When `loss` is computed by elementwise operations alone
(`exp(input) - target * input`), its shape is `torch.broadcast_shapes(input.shape, target.shape)`: the
Function keeps that on ctx in setup_context instead of recomputing the whole of `loss` in backward only to
read its shape (issue 15: "shape-only uses keep only the shape").

An intermediate of any other operation read only for its shape (`cat`'s backward reads each operand's size
along the dim: `narrow(grad, dim, offset, reduced_numel(item, dim))`) is written as its static shape in the
dims and arguments the backward has at hand (`with_static_shapes`): neither it nor what it is computed from
is then kept. A dim no leaf has whole but a polynomial of theirs (`e - 1` of `(x @ w)[:, 1:]`) is written
from their sizes (`w.shape[-1] - 1`), and one that Python's clamping of a slice decides (`e[-2:]` of
`(x @ w)[:, -2:]`, e may be below 2) as that slice of their sizes (`len(range(w.shape[-1])[-2:])`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping

from layerdsl.autodiff.tape import Tape
from layerdsl.diagnostics import SpecError
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import NOWHERE
from layerdsl.ir.visit import clone, map_children, walk
from layerdsl.language.ops import shape_args
from layerdsl.syntax import parse_expr

SizeOf = Callable[[str], N.Expr | None]  # a dim's text (`3 * B`) as an int expression the backward can read


def broadcast_leaves(tape: Tape, var: str, excluded: Collection[str] = ()) -> list[str] | None:
    """The leaves (in tape order) that the intermediate `var` has the broadcast shape of, when every step
    it is computed from is elementwise (a comparison too); None otherwise, or when it reads a leaf in
    `excluded` (one that may be absent, or a plain value rather than a tensor)."""
    found: set[str] = set()
    seen: set[str] = set()
    pending = [var]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        step = tape.step(name)
        if step is None:
            if name not in tape.leaves or name in excluded:
                return None
            found.add(name)
            continue
        elementwise = step.op.shape == "elementwise" if step.op is not None else isinstance(step.expr, N.Compare)
        if not elementwise or step.guard or step.by_mask:
            return None
        for n in walk(step.expr):
            if isinstance(n, N.Name) and (tape.step(n.id) is not None or n.id in tape.leaves):
                pending.append(n.id)
    return [leaf for leaf in tape.leaves if leaf in found] or None


def dim_size(dim: str, at_hand: Mapping[str, N.Ref]) -> N.Expr | None:
    """The dim `dim` (its text: `B`, `3 * B`, `hidden_size`) as an expression when it is a polynomial in the
    names of `at_hand` (each with what it refers to: a dim, an argument); None otherwise."""
    size = _sum_of_names(dim)
    if size is None:
        return None
    for n in walk(size):
        if isinstance(n, N.Name):
            if n.id not in at_hand:
                return None
            n.ref, n.kind = at_hand[n.id], N.Kind.INT
    return size


def leaf_size(dim: str, leaves: Iterable[str], shapes: Mapping[str, tuple | None]) -> N.Expr | None:
    """The dim `dim` as the size of the first of `leaves` (inputs, members) whose static shape has it; or,
    where no leaf has it whole, as sums, products and quotients of such sizes (`e - 1`: w's last size
    minus 1, of `(x @ w)[:, 1:]`)."""
    leaves = list(leaves)
    whole = _whole_leaf_size(dim, leaves, shapes)
    if whole is not None:
        return whole
    size = _sum_of_names(dim)
    if size is None or isinstance(size, N.Name):
        return None
    names = [n for n in walk(size) if isinstance(n, N.Name)]
    sizes = {n.id: _whole_leaf_size(n.id, leaves, shapes) for n in names}
    if not names or None in sizes.values():
        return None

    def put(e: N.Expr) -> N.Expr:
        if isinstance(e, N.Name):
            found = sizes[e.id]
            assert found is not None
            return clone(found)
        out = map_children(e, put)
        out.kind = N.Kind.INT
        return out

    return put(size)


def _whole_leaf_size(dim: str, leaves: Iterable[str], shapes: Mapping[str, tuple | None]) -> N.Expr | None:
    for leaf in leaves:
        shape = shapes.get(leaf) or ()
        if dim in shape and "..." not in shape[shape.index(dim) :]:
            size = B.call("reduced_numel", B.name(leaf), B.num(shape.index(dim) - len(shape)))
            size.kind = N.Kind.INT
            return size
    return None


def _sum_of_names(dim: str) -> N.Expr | None:
    """A dim's text as an int expression of names: a slice's size that Python's clamping decides (`d[-2:]`:
    `autodiff.shapes.slice_dim`) as the slice of an int, which codegen writes `len(range(d)[-2:])`; None for
    a text that is none."""
    try:
        size = parse_expr(dim)
    except SpecError:
        return None
    for n in walk(size):
        if isinstance(n, N.Subscript):
            if len(n.items) != 1 or not isinstance(n.items[0], N.Slice):
                return None
            n.kind = N.Kind.INT
    return size


def static_shape(shape: tuple | None, size_of: SizeOf) -> N.ListExpr | None:
    """`shape` (a value's static shape) as a list of int expressions, when `size_of` gives every dim."""
    if shape is None or any(d == "..." or d.startswith("<") for d in shape):
        return None
    sizes = [size for d in shape if (size := size_of(d)) is not None]
    if len(sizes) < len(shape):
        return None
    out = N.ListExpr(NOWHERE, sizes)
    out.kind = N.Kind.LIST
    return out


def with_static_shapes(
    e: N.Expr, shapes: Mapping[str, tuple | None], replaced: Callable[[str], bool], size_of: SizeOf
) -> N.Expr:
    """`e` with each value that a call reads only for its shape (a `shape_args` position) and `replaced`
    accepts written as its static shape, where `size_of` gives each of its dims."""

    def go(node: N.Expr) -> N.Expr:
        node = map_children(node, go)
        if isinstance(node, N.Call):
            for i in shape_args(node):
                arg = node.args[i]
                if isinstance(arg, N.Name) and replaced(arg.id):
                    shape = static_shape(shapes.get(arg.id), size_of)
                    clamped = shape is not None and any(isinstance(n, N.Subscript) for n in walk(shape))
                    # a sum back to a clamped slice's size stays a sum to the value: its sums are then merged
                    node.args[i] = arg if shape is None or clamped and node.func == "sum_to" else shape
        return node

    return go(e)
