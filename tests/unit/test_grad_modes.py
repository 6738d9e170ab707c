"""`by_grad_mode`: one backward body for both grad modes, branching only where they differ."""

from __future__ import annotations

from layerdsl.codegen.function import Assign, Comment, If, by_grad_mode
from layerdsl.ir import build as B

GRAPH = "torch.is_grad_enabled()"


def test_identical_bodies_are_written_once():
    body = [Assign("x", B.name("a"))]
    assert by_grad_mode(body, [Assign("x", B.name("a"))]) is body


def test_the_modes_branch_inside_a_guard_both_share():
    recorded = [If("g", [Assign("x", B.name("a"))])]
    unrecorded = [If("g", [Assign("x", B.name("b"))])]
    [guard] = by_grad_mode(recorded, unrecorded)
    assert isinstance(guard, If) and guard.cond == "g" and not guard.orelse
    why, branch = guard.body
    assert isinstance(why, Comment)
    assert isinstance(branch, If) and branch.cond == GRAPH
    assert [c.key() for c in branch.body] == [("=", "x", "a")]
    assert [c.key() for c in branch.orelse] == [("=", "x", "b")]


def test_different_guards_branch_outside_them():
    recorded = [If("g", [Assign("x", B.name("a"))])]
    unrecorded = [If("h", [Assign("x", B.name("a"))])]
    why, branch = by_grad_mode(recorded, unrecorded)
    assert isinstance(why, Comment)
    assert isinstance(branch, If) and branch.cond == GRAPH
    assert branch.body == recorded and branch.orelse == unrecorded
