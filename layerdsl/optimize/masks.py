"""What a backward reads of the forward, in the smallest form: a comparison of forward values (`relu > 0`,
`clamp == add`, a `where` condition) is saved as a `bool` mask and a `sign` as `int8`, instead of the float
tensors they are computed from, when that is all the backward reads of them.

A forward value that is a condition as numbers (`where(c, 1.0, 0.0)`, `where(c, 1, 0)`), read by the
backward as a factor (`grad * wher`, mul's derivative), is read as the bool condition instead (`grad *
c_mask`: the same product, bool promotes to the other factor's dtype), so that the bool is saved, not the
float or int64 tensor (an eighth of the bytes for float64).

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
    condition: N.Expr | None = None  # of an indicator (`expr` names `where(condition, 1, 0)`): what is saved

    @property
    def value(self) -> N.Expr:
        """What setup_context computes: the expression, or an indicator's condition."""
        return self.expr if self.condition is None else self.condition


def candidates(
    exprs: list[N.Expr],
    forward: Callable[[str], bool],
    opaque: Callable[[str], bool],
    step: Callable[[str], N.Expr | None] = lambda name: None,
) -> list[Mask]:
    """The comparisons and signs of forward values in `exprs` (each once), the names of forward steps
    that are comparisons (`opaque`), and of steps that are indicators of one (`where(c, 1, 0)`, read as a
    factor). `forward(name)`: whether a name is a forward value (not a gradient); `step(name)`: the
    expression a forward step computes (None for a leaf or a gradient)."""
    found: dict[str, Mask] = {}
    factors = {B.key(f) for e in exprs for f in _factors(e)}
    for e in exprs:
        for node in walk(e):
            key = B.key(node) if isinstance(node, N.Expr) else ""
            if key in found:
                continue
            if isinstance(node, N.Name) and opaque(node.id):
                found[key] = Mask(node.id, node, "bool")
            elif isinstance(node, N.Name) and key in factors and (c := indicated(step(node.id))) is not None:
                if isinstance(c, N.Name) and opaque(c.id) or isinstance(c, N.Compare) and _over(c, forward):
                    name = _compare_name(c) if isinstance(c, N.Compare) else c.id
                    found[key] = Mask(name, node, "bool", c)
            elif isinstance(node, N.Compare) and _over(node, forward):
                found[key] = Mask(_compare_name(node), node, "bool")
            elif isinstance(node, N.Call) and node.func == "sign" and _over(node, forward):
                first = next(n.id for n in walk(node) if isinstance(n, N.Name))
                found[key] = Mask(f"{first}_sign", node, "int8")
    return list(found.values())


def indicated(e: N.Expr | None) -> N.Expr | None:
    """`c` of `where(c, 1, 0)` or `where(c, 1.0, 0.0)`: the condition a value holds as numbers."""
    if isinstance(e, N.Call) and e.func == "where" and len(e.args) == 3 and not e.kwargs:
        c, one, zero = e.args
        if isinstance(one, N.Num) and one.value == 1 and isinstance(zero, N.Num) and zero.value == 0:
            return c
    return None


def _factors(e: N.Expr) -> list[N.Expr]:
    """The names multiplied by a value that is not a condition (`grad * wher`): where a bool in their place
    gives the same product."""
    out: list[N.Expr] = []
    for node in walk(e):
        if isinstance(node, N.BinOp) and node.op == "*":
            for one, other in ((node.left, node.right), (node.right, node.left)):
                if isinstance(one, N.Name) and not isinstance(other, N.Compare):
                    out.append(one)
    return out


def replaced(e: N.Expr, mask: Mask) -> N.Expr:
    """`e` with the mask's name where its expression was (an indicator's: where it is a factor)."""
    if mask.condition is not None:
        return _factor_replaced(e, B.key(mask.expr), mask.name)
    key = B.key(mask.expr)
    if isinstance(e, N.Expr) and B.key(e) == key:
        return B.name(mask.name)
    return map_children(e, lambda c: replaced(c, mask))


def _factor_replaced(e: N.Expr, key: str, name: str) -> N.Expr:
    if not isinstance(e, N.Expr):
        return e
    e = map_children(e, lambda c: _factor_replaced(c, key, name))
    if isinstance(e, N.BinOp) and e.op == "*":
        left, right = e.left, e.right
        if B.key(left) == key and not isinstance(right, N.Compare):
            e.left = B.name(name)
        elif B.key(right) == key and not isinstance(left, N.Compare):
            e.right = B.name(name)
    return e


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
