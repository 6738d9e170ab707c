"""An `@function` layer whose number of outputs an argument chooses (`return_indices`): the module's return.

Every side of the Function returns as many outputs as the longest (None for the ones it does not give),
so that one backward takes one gradient per output; the module returns as many as the side it ran gives,
chosen by the same conditions on arguments (the checker allows no other around returns of several arities).
"""

from __future__ import annotations

from collections.abc import Callable

from layerdsl.autodiff.plan import BranchPlan, Plan, straight_plans
from layerdsl.ir import nodes as N


def arities(plan: Plan) -> set[int]:
    """How many outputs the sides of the forward return."""
    return {len(side.tape.outputs) for side in straight_plans(plan)}


def returned_by_arity(plan: Plan, outputs: list[str], spell: Callable[[N.Expr], str]) -> list[str]:
    """`if cond: return a, b` / `return a`: the module's return of the first `k` of `outputs`, `k` the number
    the chosen side gives; `spell` writes a condition as the module reads it."""
    counts = arities(plan)
    if len(counts) == 1:
        k = counts.pop()
        return [f"return {', '.join(outputs[:k])}"]
    assert isinstance(plan, BranchPlan), "a straight-line plan returns one number of outputs"
    then = returned_by_arity(plan.then, outputs, spell)
    orelse = returned_by_arity(plan.orelse, outputs, spell)
    return [f"if {spell(plan.cond)}:", *("    " + line for line in then), *orelse]
