"""Number locals in a loop kept as one (its count known only when forward runs): what a derived backward refuses.

The Function computes a loop body's number locals once per step, and its backward computes them again
where it reads them, from the loop variable and the numbers bound outside the loop. So a number local
the body carries from step to step (`n = n + 1`: read before the body binds it) or that the loop leaves
bound for after it (`n = t`, then `x[n]`) would take another value in backward than in forward; and a
step value sliced by bounds that vary from step to step (`h[:, :k]` with `k = t % 2`) changes shape
after the first steps, which the Function keeps values at. Both are refused here, at the statement, until
the loop keeps such values per step.
"""

from __future__ import annotations

from layerdsl.autodiff.tape import NotDerivable
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.ir.visit import statements, walk
from layerdsl.semantics.evaluate import NotConstant, evaluate

HINT = (
    "compute the number from the loop's variable in each step (`n = t + 1`), or write a backward block, or"
    " write the count in the spec (up to 64 steps are unrolled)"
)


def check_loop_numbers(body: list[N.Stmt], later: frozenset[str] = frozenset()) -> None:
    """NotDerivable at a number local a kept loop of `body` carries or leaves bound, or at a slice of a
    step whose size varies from step to step; `later`: the names read after `body` (around it)."""
    for at, stmt in enumerate(body):
        after = later | {n.id for s in body[at + 1 :] for n in walk(s) if isinstance(n, N.Name)}
        if isinstance(stmt, N.For):
            _check_loop(stmt, after)
            check_loop_numbers(stmt.body, after | _read(stmt.body))
        elif isinstance(stmt, N.If):
            check_loop_numbers(stmt.body, after)
            check_loop_numbers(stmt.orelse, after)


def _read(body: list[N.Stmt]) -> frozenset[str]:
    return frozenset(n.id for s in body for n in walk(s) if isinstance(n, N.Name))


def _check_loop(loop: N.For, after: frozenset[str]) -> None:
    numbers = [s for s in statements(loop.body) if isinstance(s, N.Assign) and s.value.kind in N.NUMBERS]
    bound: set[str] = set()
    for s in statements(loop.body):
        if isinstance(s, N.Assign) and s in numbers:
            carried = s.target not in bound and s.target in _names(s.value)
            if carried:
                raise _carried(s, loop)
            bound.add(s.target)
            continue
        for name in _own_reads(s) - bound:
            hit = next((n for n in numbers if n.target == name), None)
            if hit is not None:
                raise _carried(hit, loop)
    inside = {loop.var} | {s.target for s in statements(loop.body) if isinstance(s, N.Assign)}
    for s in numbers:
        if s.target in after and _names(s.value) & inside:  # the same number at every step is no matter
            raise NotDerivable(
                s.span,
                f"cannot derive through the number '{s.target}' yet: the loop over '{loop.var}' leaves it bound"
                " and it is read after the loop, where a derived backward computes it again from the loop's"
                " variable (not kept per step)",
                "bind it after the loop from what it is computed from (`n = T - 1`), or write a backward block",
            )
    varying = {loop.var}
    for s in numbers:  # in order: a number computed from the variable, or from one that is
        if _names(s.value) & varying:
            varying.add(s.target)
    for s in statements(loop.body):
        for e in walk(s):
            if isinstance(e, N.Subscript):
                for item in e.items:
                    if isinstance(item, N.Slice) and not _fixed_size(item, varying):
                        by = sorted(_names_of(item) & varying)[0]
                        through = "" if by == loop.var else f" through '{by}'"
                        raise NotDerivable(
                            item.span,
                            f"cannot derive through this slice of `{spec_text(e.value)}` yet: its size depends"
                            f" on the loop's variable '{loop.var}'{through}, so the step's values change shape"
                            " from step to step, and a derived backward keeps them at the first steps' shapes",
                            "slice by bounds whose difference is the same in every step (`h[:, k:k + 2]`),"
                            " or write the count in the spec (up to 64 steps are unrolled), or write a"
                            " backward block",
                        )


def _names(node: N.Node) -> set[str]:
    return {n.id for n in walk(node) if isinstance(n, N.Name)}


def _names_of(item: N.Slice) -> set[str]:
    return {n for b in (item.lower, item.upper, item.step) if b is not None for n in _names(b)}


def _own_reads(stmt: N.Stmt) -> set[str]:
    """The names a statement reads itself (a block's: its condition's or its count's, not its body's)."""
    if isinstance(stmt, N.For):
        return _names(stmt.iter)
    if isinstance(stmt, N.If):
        return _names(stmt.cond)
    return _names(stmt)


def _carried(stmt: N.Assign, loop: N.For) -> NotDerivable:
    return NotDerivable(
        stmt.span,
        f"cannot derive through the number '{stmt.target}' yet: the loop over '{loop.var}' carries it from step"
        " to step (a step reads the value the step before bound), and a derived backward computes it again"
        " in its own order (not kept per step)",
        HINT,
    )


def _fixed_size(item: N.Slice, varying: set[str]) -> bool:
    """Whether a slice takes as many elements at every step: no bound reads a varying number, or its
    upper bound is its lower plus what none does (`k:k + 2`)."""
    if not _names_of(item) & varying:
        return True
    lower, upper = item.lower, item.upper
    if item.step is not None and _names(item.step) & varying or lower is None or upper is None:
        return False
    if (
        isinstance(upper, N.BinOp)
        and upper.op == "+"
        and spec_text(upper.left) == spec_text(lower)
        and not _names(upper.right) & varying
    ):
        return True
    return _same_difference(lower, upper, varying)


def _same_difference(lower: N.Expr, upper: N.Expr, varying: set[str]) -> bool:
    """Whether `upper - lower` is the same whatever the varying numbers are (`t * d:(t + 1) * d`): the
    same at a few values of them, for a few values of the other names (a polynomial identity test)."""
    names = sorted(_names(lower) | _names(upper))
    for others in (3, 7):
        sizes = set()
        for value in range(4):
            env = {n: value if n in varying else others + k for k, n in enumerate(names)}
            try:
                sizes.add(evaluate(upper, env) - evaluate(lower, env))
            except (NotConstant, TypeError, ValueError, ArithmeticError):
                return False
        if len(sizes) != 1:
            return False
    return True
