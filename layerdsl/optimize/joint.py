"""One result of a kernel that gives several (`Op.results` > 1) taken out of a sum, so that the emitter can
join it with its siblings (`codegen.joint_gradients`).

Derivation writes `grad_x = grad_out + layer_norm_backward(g, x, ..., 0)` where a value is read twice (a
residual connection), and `grad_w = layer_norm_backward(g, x, ..., 1)` beside it. Only whole statements
join, so the kernel ran twice, once for the input's gradient and once for the weight's. Here the input's
share becomes a statement of its own (`grad_x_from_layer_norm = layer_norm_backward(..., 0)`) wherever a
sibling (same call, another `which`) is computed too, and the sum reads it.
"""

from __future__ import annotations

from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import map_children, walk
from layerdsl.language.ops import OPS
from layerdsl.optimize.statements import Stmt, names


def joint_key(e: N.Node) -> str | None:
    """The key of a call taking one result of a joint row (`which` left out: siblings share it); None for
    any other expression."""
    if not isinstance(e, N.Call) or e.kwargs:
        return None
    op = OPS.get(e.func)
    if op is None or op.results < 2 or len(e.args) != len(op.params) or not isinstance(e.args[-1], N.Num):
        return None
    return B.key(B.call(e.func, *e.args[:-1]))


def which_result(e: N.Node) -> int:
    """The result a joint-row call takes (its last argument)."""
    assert isinstance(e, N.Call) and isinstance(e.args[-1], N.Num), "a joint-row call (joint_key)"
    return int(e.args[-1].value)


def joinable(s: Stmt) -> bool:
    """Whether a statement may be joined with others: plain, computed whenever its leaves need it."""
    return not (s.guard or s.recompute or s.unscaled is not None)


def hoist_joint_terms(stmts: list[Stmt]) -> list[Stmt]:
    """`stmts` with each joint-row call inside a larger expression bound to a name of its own first, where
    another result of the same call is computed too."""
    results: dict[str, set[int]] = {}
    for s in stmts:
        if joinable(s):
            for n in walk(s.expr):
                if (key := joint_key(n)) is not None:
                    results.setdefault(key, set()).add(which_result(n))
    shared = {key for key, which in results.items() if len(which) > 1}
    if not shared:
        return stmts
    taken = {s.target for s in stmts} | {n for s in stmts for n in names(s.expr)}
    out: list[Stmt] = []
    for s in stmts:
        hoisted: list[Stmt] = []

        def take_out(e: N.Expr, s: Stmt = s, hoisted: list[Stmt] = hoisted) -> N.Expr:
            if isinstance(e, N.Call) and joint_key(e) in shared:
                name = _fresh(f"{s.target}_from_{e.func.removesuffix('_backward')}", taken)
                hoisted.append(Stmt(name, e, set(s.leaves), span=s.span))
                return _named(name, e)
            return map_children(e, take_out)

        if joinable(s) and joint_key(s.expr) is None:
            s.expr = map_children(s.expr, take_out)
        out += [*hoisted, s]
    return out


def _named(name: str, e: N.Expr) -> N.Name:
    n = B.name(name)
    n.kind = e.kind
    return n


def _fresh(hint: str, taken: set[str]) -> str:
    name, k = hint, 1
    while name in taken:
        k += 1
        name = f"{hint}{k}"
    taken.add(name)
    return name
