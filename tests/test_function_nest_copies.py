"""A forward whose `if`s on arguments make more ways through a loop holding a loop (`autodiff.nest`) than
`plan.MAX_NEST_COPIES`: refused as soon as the ways planned so far hold more copies of it, the other sides
of the `if`s not planned (specs/torch_nn/rnn.layer's RNN, of 96 ways, was refused after planning them all)."""

from __future__ import annotations

from pathlib import Path

from layerdsl.autodiff import nest, plan
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

CASE = Path(__file__).parent / "error_corpus" / "function_nest_on_many_ways.layer"


def test_the_ways_past_the_most_copies_of_a_nest_are_not_planned(monkeypatch):
    planned: list[object] = []
    original = nest.planned_nest

    def counting(p, stmt):
        planned.append(stmt)
        return original(p, stmt)

    monkeypatch.setattr(nest, "planned_nest", counting)
    spec = parse_file(str(CASE), CASE.read_text())
    check_program([spec])
    plans, problems = plan.plan_backwards([spec])
    assert not plans
    assert [(p.span.line, p.span.col) for p in problems] == [(13, 18)]
    assert "more than 8 ways through it" in problems[0].message
    # its four `if`s make 16 ways, each with a copy of the loop holding a loop: the ninth is the last planned
    assert len(planned) == plan.MAX_NEST_COPIES + 1
