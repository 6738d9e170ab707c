"""The optimisation stage: a derived backward's statements rewritten to make fewer full-size passes.

Runs on a backward's statements (IR) after derivation, before rendering. At large shapes a backward is
bound by memory traffic, so its time follows the number of passes over full-size tensors and the number
of fresh buffers. In order:

1. share a recomputed product `a * b` (`b` narrow) with the other gradients whose product chains hold `a` and
   `b`, up to reassociation (`sharing`); fold a recomputed intermediate that only one statement reads into
   that statement (`fusion`), and drop the
   transposes that then cancel (`transposes`); merge like
   einsum terms and split products of three or more tensors into pairs, shared where they can be, in the
   order a cost model picks (`contractions`);
2. keep a reduction's gradient at its reduced shape where an elementwise operation would broadcast it
   anyway (`fusion`), gather constant factors where they cost least (`scales`), write `sum_to` between
   known shapes as a plain sum and move tensor factors out of linear kernels, and drop the `t = u` aliases that
   gathering leaves (`fusion`); take one result of a
   kernel that gives several out of a sum where another result is computed too, so that the emitter joins
   them into one call (`joint`);
3. without a graph, take a narrow factor common to both terms out of a sum (`sharing`); for each candidate
   statement order (`schedule`): write `p + q * r` as `addcmul(p, q, r)` (`fusion`),
   let operations update dead temporaries in place (`inplace`), and delete full-size temporaries after
   their last use (`schedule`);
4. keep the order that makes the fewest fresh full-size buffers.

`Facts.graph` says whether autograd may record the backward; the emitter runs both and branches on grad
mode where they differ.
"""

from __future__ import annotations

from layerdsl.ir.visit import clone
from layerdsl.optimize.contractions import plan_contractions
from layerdsl.optimize.fusion import (
    addcmul_form,
    aliases_dropped,
    explicit_sums,
    factors_out,
    fold,
    guarded_products,
    narrow_expansions,
)
from layerdsl.optimize.inplace import update_in_place
from layerdsl.optimize.joint import hoist_joint_terms
from layerdsl.optimize.scales import hoist_scales
from layerdsl.optimize.schedule import fresh_buffers, place_deletions, reductions_early
from layerdsl.optimize.sharing import common_factors, share_products
from layerdsl.optimize.statements import Facts, Stmt
from layerdsl.optimize.transposes import transposes_cancelled


def optimize(stmts: list[Stmt], facts: Facts, prefer: int = 0) -> tuple[list[Stmt], int]:
    """The statements rewritten, and which schedule they follow (`prefer` breaks ties, so that the backward
    with a graph and the one without share as many statements as they can)."""
    return scheduled(prepared(stmts, facts), facts, prefer)


def prepared(stmts: list[Stmt], facts: Facts) -> list[Stmt]:
    """Steps 1 and 2, which do not read `Facts.graph`: the emitter runs them once for both grad modes."""
    stmts = transposes_cancelled(fold(share_products(stmts, facts), facts), facts)
    stmts = plan_contractions(stmts, facts)
    stmts = narrow_expansions(stmts, facts)
    hoist_scales(stmts, facts.kept, facts.incoming)
    stmts = aliases_dropped(stmts, facts)
    explicit_sums(stmts, facts)
    return hoist_joint_terms(factors_out(stmts, facts))


def scheduled(stmts: list[Stmt], facts: Facts, prefer: int = 0) -> tuple[list[Stmt], int]:
    """Steps 3 and 4 on `prepared` statements (rewritten in place): the statements in the best schedule,
    and which one it is."""
    if not facts.graph:
        stmts = aliases_dropped(common_factors(stmts, facts), facts)
    # Sums first lets a temporary's last full-size reader update it; keeping the derivation's order can
    # instead let a reader that autograd does not record update it (without a graph).
    early = reductions_early(stmts)
    if _same_order(early, stmts):  # both schedules would be the same statements: finish one, cost equal
        return _fused_in_place(early, facts), prefer if prefer in (0, 1) else 0
    schedules = [_fused_in_place(s, facts) for s in (early, clone(stmts))]
    cost = [fresh_buffers(s, facts) for s in schedules]
    best = min(range(len(schedules)), key=lambda k: (cost[k], k != prefer, k))
    return schedules[best], best


def _same_order(a: list[Stmt], b: list[Stmt]) -> bool:
    """Whether two orders of the same statements are one."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def _fused_in_place(stmts: list[Stmt], facts: Facts) -> list[Stmt]:
    """One schedule finished: products fused with their sums, dead temporaries updated, then deleted."""
    stmts = guarded_products(stmts, facts.exact)
    for s in stmts:
        if s.target not in facts.exact:
            s.expr = addcmul_form(s.expr)
    updated, shapes = update_in_place(stmts, facts)
    place_deletions(stmts, facts, shapes, updated)
    return stmts
