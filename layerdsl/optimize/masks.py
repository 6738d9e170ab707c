"""What a backward reads of the forward, in the smallest form: a comparison of forward values (`relu > 0`,
`clamp == add`, a `where` condition) is saved as a `bool` mask and a `sign` as `int8`, instead of the float
tensors they are computed from, when that is all the backward reads of them.

`candidates` finds them in a backward's expressions, `replaced` puts a mask's name where its expression
was; the emitter decides which to keep (a mask pays only when a float tensor is no longer saved).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import map_children, walk

# `name OP 0` is named for what it holds: `relu > 0` is `relu_positive`.
_AGAINST_ZERO = {
    ">": "positive",
    "<": "negative",
    ">=": "nonnegative",
    "<=": "nonpositive",
    "==": "zero",
    "!=": "nonzero",
}
_BETWEEN = {">": "gt", "<": "lt", ">=": "ge", "<=": "le", "==": "eq", "!=": "ne"}


@dataclass(frozen=True)
class Mask:
    """A value the backward reads, computed where the forward's values are at hand and saved small."""

    name: str
    expr: N.Expr  # in the backward's terms: the comparison, `sign(v)`, or the name of a comparison step
    dtype: str  # "bool" or "int8"


def candidates(exprs: list[N.Expr], forward: Callable[[str], bool], opaque: Callable[[str], bool]) -> list[Mask]:
    """The comparisons and signs of forward values in `exprs` (each once), and the names of forward steps
    that are comparisons (`opaque`). `forward(name)`: whether a name is a forward value (not a gradient)."""
    found: dict[str, Mask] = {}
    for e in exprs:
        for node in walk(e):
            key = B.key(node) if isinstance(node, N.Expr) else ""
            if key in found:
                continue
            if isinstance(node, N.Name) and opaque(node.id):
                found[key] = Mask(node.id, node, "bool")
            elif isinstance(node, N.Compare) and _over(node, forward):
                found[key] = Mask(_compare_name(node), node, "bool")
            elif isinstance(node, N.Call) and node.func == "sign" and _over(node, forward):
                first = next(n.id for n in walk(node) if isinstance(n, N.Name))
                found[key] = Mask(f"{first}_sign", node, "int8")
    return list(found.values())


def replaced(e: N.Expr, mask: Mask) -> N.Expr:
    """`e` with the mask's name where its expression was."""
    key = B.key(mask.expr)
    if isinstance(e, N.Expr) and B.key(e) == key:
        return B.name(mask.name)
    return map_children(e, lambda c: replaced(c, mask))


def _over(e: N.Expr, forward: Callable[[str], bool]) -> bool:
    """Whether `e` reads forward values only, and at least one."""
    names = [n.id for n in walk(e) if isinstance(n, N.Name) and n.kind == "tensor"]
    return bool(names) and all(forward(n) for n in names)


def _compare_name(c: N.Compare) -> str:
    if len(c.ops) != 1:
        return "mask"
    (op,), (left, right) = c.ops, c.operands
    if isinstance(left, N.Name) and isinstance(right, N.Num) and right.value == 0:
        return f"{left.id}_{_AGAINST_ZERO[op]}"
    if isinstance(left, N.Name) and isinstance(right, N.Name):
        return f"{left.id}_{_BETWEEN[op]}_{right.id}"
    first = next((n.id for n in walk(c) if isinstance(n, N.Name)), "value")
    return f"{first}_mask"
