"""Reverse mode on small forwards: the tape, the derived gradients, and the simplification rules."""

from __future__ import annotations

import pytest

from layerdsl.autodiff.plan import BackwardPlan, plan_backward
from layerdsl.autodiff.simplify import simplify
from layerdsl.ir import build as B
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

SPEC = """@function
layer L(n: int) {{
    \"\"\"A layer.\"\"\"
    param w: [n] = ones
    param m: [n, n] = ones
    example(n = 4)

    forward(x: [B, n], y: [B, n]) {{
        {body}
    }}
}}
"""


def planned(body: str) -> BackwardPlan:
    spec = parse_file("t.layer", SPEC.format(body=body))
    check_program([spec])
    return plan_backward(spec.layers[0])


def gradients(body: str) -> dict[str, str]:
    """Each statement of the derived backward, as its structural key."""
    backward = planned(body).derived
    return {s.var: B.key(s.expr) for s in backward.stmts}


def test_product_gives_each_operand_the_other():
    assert gradients("return x * y") == {"grad_x": "grad_out * y", "grad_y": "grad_out * x"}


def test_a_product_of_a_value_with_itself_counts_its_terms():
    assert gradients("return x * x") == {"grad_x": "2 * grad_out * x"}


def test_sigmoid_uses_its_saved_result():
    plan = planned("return sigmoid(x)")
    assert [(s.var, s.op.name) for s in plan.tape.steps] == [("s", "sigmoid")]
    assert gradients("return sigmoid(x)") == {"grad_x": "sigmoid_backward(grad_out, s)"}


def test_a_broadcast_operand_sums_its_gradient_back_to_its_shape():
    assert gradients("return x * w") == {"grad_x": "grad_out * w", "grad_w": "sum_to(grad_out * x, w)"}


def test_sum_expands_the_gradient_over_the_reduced_dim():
    grads = gradients("return sum(x * w, dim = -1, keepdim = true)")
    assert grads["grad_mul"] == "expand_reduced(grad_out, mul, -1, true)"
    assert grads["grad_x"] == "grad_mul * w"


def test_matmul_multiplies_by_the_transposed_other_operand():
    assert gradients("return x @ m") == {
        "grad_x": "matmul(grad_out, transpose(m, -1, -2))",
        "grad_m": "matmul(transpose(x, -1, -2), grad_out)",
    }


def test_a_spec_local_keeps_its_name_and_gradients_say_which_leaves_need_them():
    plan = planned("h = tanh(x)\n        return h * w")
    assert plan.tape.env == {"h": "h"} and [s.var for s in plan.tape.steps] == ["h", "mul"]
    assert plan.tape.shapes["mul"] == ("B", "n")
    leaves = {s.var: s.leaves for s in plan.derived.stmts}
    assert leaves["grad_x"] == {"x"} and leaves["grad_w"] == {"w"}
    assert plan.derived.leaf_grads == {"x": "grad_x", "w": "grad_w"}


def test_inputs_that_do_not_reach_the_output_get_no_gradient():
    plan = planned("return x * 2")
    assert plan.derived.leaf_grads == {"x": "grad_x"}
    assert gradients("return x * 2") == {"grad_x": "grad_out * 2"}


x = B.name("x")


@pytest.mark.parametrize(
    ("expr", "simplified"),
    [
        (B.binop("*", B.num(1), x), "x"),
        (B.binop("*", x, B.num(1)), "x"),
        (B.binop("+", B.num(0), x), "x"),
        (B.binop("-", x, B.num(0)), "x"),
        (B.binop("/", x, B.num(1)), "x"),
        (B.binop("**", x, B.num(1)), "x"),
        (B.binop("**", x, B.num(2)), "x * x"),
        (B.binop("*", B.num(-1), x), "-x"),
        (B.binop("-", B.num(0), x), "-x"),
        (B.binop("*", B.binop("+", B.num(2), B.num(3)), x), "5 * x"),
        (B.binop("/", B.num(1), B.num(0)), "1 / 0"),  # not folded: it would raise
        (B.call("exp", B.binop("*", x, B.num(1))), "exp(x)"),
    ],
)
def test_simplify(expr, simplified):
    assert B.key(simplify(expr)) == simplified


def test_simplify_cancels_double_negation():
    assert B.key(simplify(B.binop("-", B.num(0), B.binop("*", B.num(-1), x)))) == "x"
