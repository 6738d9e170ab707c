"""Constant factors in a backward: gathered, cancelled, and applied where they cost least.

Reverse mode scatters Python numbers over a backward: `sqrt`'s rule divides by `2 * sqrt(x)`, `x ** 2`'s
multiplies by 2, `mean`'s divides by `n`, `rsqrt`'s multiplies by -0.5. Each one applied to a tensor is a
pass over it and, at small shapes, a Python number wrapped in a tensor (about 2.4 µs a call against 1 µs
for a tensor-tensor op). This pass floats the factors of every product (through operations linear in an
operand: sums, matmul, views, ATen's derivative kernels) up to the top of a statement as one `Scale`, and
when the statement binds a temporary, leaves the factor off and lets its readers apply it, where it meets
their own factors: MyLayer's `g / (2 * sqrt) ... * 2 * x` becomes `g / sqrt ... * x`. A factor moves to the
readers only when that leaves fewer scalar operations in all.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field

from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import NOWHERE
from layerdsl.ir.visit import clone, map_children, walk

# Operations linear in the operand at these positions: a factor of that operand is a factor of the result.
LINEAR = {
    "sum_to": (0,),
    "sum": (0,),
    "mean": (0,),
    "reduced_view": (0,),
    "expand_reduced": (0,),
    "transpose": (0,),
    "reshape": (0,),
    "matmul": (0, 1),
    "sigmoid_backward": (0,),
    "tanh_backward": (0,),
}
EXPANDING = ("reduced_view", "expand_reduced")  # results larger than the operand: apply a factor before them


@dataclass(frozen=True)
class Scale:
    """coef * product(factor ** power): each factor a Python-number expression (a dim, an argument)."""

    coef: float = 1
    powers: tuple = ()  # ((key, power), ...) sorted by key, no zero powers
    exprs: dict = field(default_factory=dict, compare=False, hash=False)  # key -> the factor's expression

    def __mul__(self, other: Scale) -> Scale:
        powers = dict(self.powers)
        for key, p in other.powers:
            powers[key] = powers.get(key, 0) + p
        return Scale(
            B.num(self.coef * other.coef).value,
            tuple(sorted((k, p) for k, p in powers.items() if p)),
            {**self.exprs, **other.exprs},
        )

    def inverse(self) -> Scale:
        return Scale(B.num(1 / self.coef).value, tuple((k, -p) for k, p in self.powers), self.exprs)

    @property
    def one(self) -> bool:
        return self.coef == 1 and not self.powers

    def parts(self) -> tuple[list[N.Expr], list[N.Expr]]:
        num = [clone(self.exprs[k]) for k, p in self.powers for _ in range(p)]
        den = [clone(self.exprs[k]) for k, p in self.powers for _ in range(-p)]
        return num, den

    def scalar(self) -> N.Expr:
        """The factor as one Python-number expression: `coef * a / (b * c)`."""
        num, den = self.parts()
        out = _product([B.num(self.coef)] + num if self.coef != 1 or not num else num)
        return B.binop("/", out, _product(den)) if den else out


def _product(items: list[N.Expr]) -> N.Expr:
    out = items[0]
    for e in items[1:]:
        out = B.binop("*", out, e)
    return out


# ------------------------------------------------------------------ across statements


def hoist_scales(stmts, kept: set[str], incoming: set[str]) -> None:
    """Float each gradient statement's factors to its top; a temporary's factor moves on to its readers
    when that leaves fewer scalar operations, and its statement says so in a comment. Recomputed forward
    values are left as the forward computes them."""
    binds: dict[str, int] = {}
    for s in stmts:
        binds[s.target] = binds.get(s.target, 0) + 1
    carriers = frozenset(incoming | {s.target for s in stmts if not s.recompute})
    pending: dict[str, Scale] = {}
    read_at: dict[str, list[int]] = {}  # name -> the statements reading it (only the one at k changes at k)
    for k, s in enumerate(stmts):
        for name in dict.fromkeys(n.id for n in walk(s.expr) if isinstance(n, N.Name)):
            read_at.setdefault(name, []).append(k)
    for k, s in enumerate(stmts):
        if s.expr.kind != "tensor" or s.recompute or s.target not in carriers:
            continue
        scale, rest = float_scale(s.expr, pending, carriers)
        readers = [stmts[j] for j in read_at.get(s.target, ()) if j > k]
        movable = not scale.one and binds[s.target] == 1 and s.target not in kept and not s.guard and readers
        pending_too = {**pending, s.target: scale}
        if movable and _cost(readers, pending_too, carriers) - _cost(readers, pending, carriers) < scalar_ops(
            apply_scale(scale, rest)
        ) - scalar_ops(rest):
            pending = pending_too
            s.expr = rest
            s.unscaled = scale.scalar()
        else:
            s.expr = apply_scale(scale, rest)


def _cost(readers, pending: dict[str, Scale], carriers: frozenset[str]) -> int:
    return sum(scalar_ops(apply_scale(*float_scale(r.expr, pending, carriers))) for r in readers if not r.recompute)


# ------------------------------------------------------------------ floating factors up


def float_scale(e: N.Expr, pending: dict[str, Scale], carriers: frozenset[str]) -> tuple[Scale, N.Expr | None]:
    """(scale, rest) with e == scale * rest; rest is None when e is a plain number. `pending`: names bound
    without a factor their readers apply; `carriers`: the names holding gradients. Only products that
    carry a gradient are reassociated: a value computed from the forward's tensors alone keeps its exact
    rounding (an extremum mask compares it for equality)."""
    f = functools.partial(float_scale, pending=pending, carriers=carriers)

    def settle(c):  # a tensor operand of anything else gets its factor back (lists of operands included)
        if isinstance(c, N.Expr) and c.kind == "tensor":
            return apply_scale(*f(c)) if _carries(c, carriers) else c
        return map_children(c, settle)

    if e.kind == "tensor" and not _carries(e, carriers) and not (isinstance(e, N.BinOp) and e.op in ("*", "/")):
        return Scale(), e
    if e.kind != "tensor":
        if isinstance(e, N.Num):
            return Scale(e.value), None
        key = B.key(e)
        return Scale(1, ((key, 1),), {key: e}), None
    match e:
        case N.Name(id=name) if name in pending:
            return pending[name], e
        case N.BinOp(op="*", left=l, right=r):
            (sl, rl), (sr, rr) = f(l), f(r)
            rest = rl if rr is None else rr if rl is None else B.binop("*", rl, rr)
            return sl * sr, rest
        case N.BinOp(op="/", left=l, right=r):
            (sl, rl), (sr, rr) = f(l), f(r)
            if rr is None:
                return sl * sr.inverse(), rl
            return sl * sr.inverse(), B.binop("/", rl if rl is not None else B.num(1), rr)
        case N.UnaryOp(op="-", operand=o):
            so, ro = f(o)
            return so * Scale(-1), ro
        case N.BinOp(op="+" | "-", left=l, right=r):
            (sl, rl), (sr, rr) = f(l), f(r)
            if sl == sr and rl is not None and rr is not None:
                return sl, B.binop(e.op, rl, rr)
            return Scale(), B.binop(e.op, apply_scale(sl, rl), apply_scale(sr, rr))
        case N.Call(func=func) if func in LINEAR and e.args:
            scale, out = Scale(), map_children(e, settle)
            for i in LINEAR[func]:
                if i < len(e.args) and e.args[i].kind == "tensor":
                    sa, ra = f(e.args[i])
                    if ra is not None:
                        scale, out.args[i] = scale * sa, ra
            return scale, out
    return Scale(), map_children(e, settle)


def _carries(e, carriers: frozenset[str]) -> bool:
    return any(isinstance(n, N.Name) and n.id in carriers for n in walk(e))


def apply_scale(scale: Scale, rest: N.Expr | None) -> N.Expr:
    """scale * rest, the factor applied to the leftmost operand of a product (often the smallest tensor)."""
    if rest is None:
        return scale.scalar()
    if scale.one:
        return rest
    if isinstance(rest, N.Call) and rest.func in EXPANDING:  # scale before the tensor grows
        out = copy.copy(rest)
        out.args = [apply_scale(scale, rest.args[0]), *rest.args[1:]]
        return out
    if isinstance(rest, N.BinOp) and rest.op == "/" and _is_one(rest.left):
        return B.binop("/", scale.scalar(), rest.right)  # `c / t`
    if isinstance(rest, N.BinOp) and rest.op in ("*", "/") and rest.left.kind == "tensor":
        return B.binop(rest.op, apply_scale(scale, rest.left), rest.right)
    num, den = scale.parts()
    if scale.coef in (1, -1) and not num:
        if not den:  # -1
            u = N.UnaryOp(NOWHERE, "-", rest)
            u.kind = N.Kind.TENSOR
            return u
        divisor = _product(den)
        if scale.coef == -1:
            divisor = N.UnaryOp(NOWHERE, "-", divisor)
            divisor.kind = N.Kind.FLOAT
        return B.binop("/", rest, divisor)
    # a divisor of sizes or arguments may be 0, where torch divides to inf or nan: the tensor divides
    if den and scale.coef:
        scaled = B.binop("*", _product([B.num(scale.coef)] + num), rest) if num else rest
        return B.binop("/", scaled, B.binop("/", _product(den), B.num(scale.coef)) if not num else _product(den))
    return B.binop("*", scale.scalar(), rest)


def _is_one(e) -> bool:
    return isinstance(e, N.Num) and e.value == 1


def scalar_ops(e) -> int:
    """How many operations combine a tensor with a Python number (each wraps the number in a tensor)."""
    count = 0
    for n in walk(e):
        if (
            isinstance(n, N.BinOp)
            and n.kind == "tensor"
            and "tensor" in (n.left.kind, n.right.kind)
            and (n.left.kind != "tensor" or n.right.kind != "tensor")
        ):
            count += 1
        elif isinstance(n, N.UnaryOp) and n.kind == "tensor":
            count += 1
    return count
