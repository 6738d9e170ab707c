"""A long straight `@function` forward: emitting its Function grows linearly in the passes that walked
every earlier step or statement for each one (`Tape.step`, in-place updates, hoisted scales), and the
tape's index of steps follows the steps when a pass appends, replaces or renames them."""

from __future__ import annotations

import dataclasses

import pytest

from layerdsl.autodiff.tape import Step, Tape
from layerdsl.codegen.module import emit_file
from layerdsl.ir import build as B
from layerdsl.ir import visit
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file


def _straight(statements: int) -> str:
    body = "\n".join(f"        h = h * w + {k}" for k in range(statements))
    return (
        f"@function\nlayer Straight(n: int) {{\n    param w: [n]\n    example(n = 3)\n"
        f"    forward(x: [B, n]) -> [B, n] {{\n        h = x\n{body}\n        return h\n    }}\n}}\n"
    )


def _nodes_visited(statements: int, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many times emitting the Function of `statements` statements lists a node's children."""
    spec = parse_file("straight.layer", _straight(statements))
    program = check_program([spec])
    count = 0
    listed = visit.children

    def counted(node):
        nonlocal count
        count += 1
        return listed(node)

    monkeypatch.setattr(visit, "children", counted)  # what `walk` calls for every node
    source = emit_file(spec, program, "straight.layer", {})
    monkeypatch.setattr(visit, "children", listed)
    assert "class StraightFunction(torch.autograd.Function):" in source
    return count


def test_emitting_a_long_straight_function_walks_linearly_many_nodes(monkeypatch):
    """Twice the statements walk about twice the nodes (each pass walking every earlier statement per
    statement made it 3.7 times as many: 200 operations took 9 s)."""
    short, long = _nodes_visited(50, monkeypatch), _nodes_visited(100, monkeypatch)
    assert long < 2.5 * short, (short, long)


def _step(var: str, reads: str) -> Step:
    return Step(var, None, {}, B.name(reads))


def test_a_tapes_step_lookup_follows_appended_replaced_and_renamed_steps():
    tape = Tape([_step("a", "x"), _step("b", "a")], [B.name("b")], ["x"], {"x"})
    assert tape.step("b") is tape.steps[1]
    assert tape.step("x") is None  # a leaf
    tape.steps.append(_step("c", "b"))  # a pass adding a step
    assert tape.step("c") is tape.steps[2]
    replaced = dataclasses.replace(tape, steps=[_step("d", "x"), *tape.steps[1:]])
    assert replaced.step("a") is None and replaced.step("d") is replaced.steps[0]
    assert tape.step("a") is tape.steps[0]  # the original keeps its own
    tape.steps = tape.steps[:1]  # steps assigned anew
    assert tape.step("b") is None
    tape.steps[0].var = "e"  # a step renamed: not found by its old name
    assert tape.step("a") is None
