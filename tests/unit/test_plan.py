"""The derivation stage: backward plans, and "cannot derive" reported before (and without) emission."""

from __future__ import annotations

import pytest

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.diagnostics import SpecError
from layerdsl.driver import pipeline
from layerdsl.driver.cli import main
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

DERIVED = '''@function
layer {name}() {{
    """A layer."""
    example()

    forward(x) {{
        return {body}
    }}
}}
'''

WRITTEN = '''@function
layer Hand(n: int) {
    """A layer."""
    param w: [n] = ones
    example(n = 4)

    forward(x: [B, n]) {
        h = tanh(x)
        return h * w
    }

    backward(grad_y) {
        t = grad_y * w
        grad x = t * (1 - h * h)
        grad w = sum(grad_y * h, dim = 0)
    }
}
'''

PLAIN = '''layer Plain() {
    """A layer."""
    example()

    forward(x) {
        return x * 2
    }
}
'''


def checked(text: str, path: str = "t.layer"):
    spec = parse_file(path, text)
    check_program([spec])
    return spec


def test_every_function_layer_gets_a_plan_and_no_other():
    spec = checked(DERIVED.format(name="Good", body="x * sigmoid(x)") + "\n" + PLAIN)
    plans, problems = plan_backwards([spec])
    assert problems == [] and list(plans) == ["Good"]
    plan = plans["Good"]
    assert plan.grads == ["grad_out"] and plan.incoming == {"grad_out": "mul"}
    assert plan.derived is not None and plan.written == []


def test_a_handwritten_backward_is_planned_over_the_tape():
    plans, problems = plan_backwards([checked(WRITTEN)])
    plan = plans["Hand"]
    assert problems == [] and plan.derived is None
    assert plan.grads == ["grad_y"] and plan.incoming == {"grad_y": "mul"}
    assert [(s.var, s.leaves) for s in plan.written] == [("t", {"x", "w"}), ("grad_x", {"x"}), ("grad_w", {"w"})]


def test_an_op_without_a_derivative_is_a_located_diagnostic():
    spec = checked(DERIVED.format(name="Bad", body="sign(x) * x"), "specs/bad.layer")
    plans, problems = plan_backwards([spec])
    assert plans == {}
    [problem] = problems
    assert (problem.path, problem.span.line, problem.span.col) == ("specs/bad.layer", 7, 16)
    assert problem.message.startswith("sign() has no derivative") and "backward" in problem.message
    assert problem.hint == "write `backward(grad_y) { grad x = ... }`"


def test_a_statement_a_backward_block_cannot_hold_is_a_located_diagnostic():
    text = WRITTEN.replace("grad x = t * (1 - h * h)", "if training {\n            grad x = t\n        }")
    _, problems = plan_backwards([checked(text)])
    [problem] = problems
    assert problem.span.line == 14 and "a backward block holds" in problem.message


def test_every_layer_of_a_file_reports_what_it_cannot_derive():
    bad = DERIVED.format(name="Bad", body="sign(x) * x") + "\n" + DERIVED.format(name="Worse", body="round(x) * x")
    plans, problems = plan_backwards([checked(bad)])
    assert plans == {} and [p.message.split("(")[0] for p in problems] == ["sign", "round"]


def test_every_underivable_operation_of_a_layer_is_reported_and_its_value_goes_on_as_opaque():
    body = "floor(round(x) * sign(x) * x) + tanh(x)"  # round * sign: no gradient flows, floor's operand needs one
    _, problems = plan_backwards([checked(DERIVED.format(name="Three", body=body))])
    assert [(p.message.split("(")[0], p.span.col) for p in problems] == [("round", 22), ("sign", 33), ("floor", 16)]


def test_an_operation_on_values_no_gradient_reaches_is_not_reported():
    body = "round(sign(x)) + x"  # sign is reported; round's operand needs no gradient once sign stops it
    _, problems = plan_backwards([checked(DERIVED.format(name="Stopped", body=body))])
    assert [p.message.split("(")[0] for p in problems] == ["sign"]


@pytest.fixture
def no_emission(monkeypatch):
    def emitted(*args, **kwargs):
        raise AssertionError("check ran the emitter")

    monkeypatch.setattr("layerdsl.codegen.module.emit_file", emitted)  # the pipeline imports it when it emits
    monkeypatch.setattr("layerdsl.codegen.function.emit_function_class", emitted)


def test_check_finds_what_cannot_be_derived_without_emitting(tmp_path, capsys, no_emission):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "bad.layer").write_text(DERIVED.format(name="Bad", body="sign(x) * x"))
    assert main(["check", str(specs)]) == 1
    err = capsys.readouterr().err
    assert "specs/bad.layer:7:16: error: sign() has no derivative" in err


def test_check_plans_without_emitting(tmp_path, no_emission):
    (tmp_path / "good.layer").write_text(DERIVED.format(name="Good", body="x * sigmoid(x)"))
    sources, files, _ = pipeline.check([str(tmp_path)])
    assert [layer.name for f in files for layer in f.layers] == ["Good"]
    (tmp_path / "bad.layer").write_text(DERIVED.format(name="Bad", body="round(x)"))
    with pytest.raises(SpecError) as raised:
        pipeline.check([str(tmp_path)])
    assert [d.message.split("(")[0] for d in raised.value.diagnostics] == ["round"]
