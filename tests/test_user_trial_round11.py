"""What a user's trial of round 11's @function loops found: a loop Function whose sides keep different
per-step values (an `if hx != none` in the body) saved them in another order than its backward unpacked
them (silently wrong gradients without `hx`), and an optional input and an optional member read in one
loop were refused, the input taken for unproven once the member's sides were planned."""

from __future__ import annotations

import pytest
import torch

from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .test_function_sub_lists import compare_with_plain, plain_pair

# without hx, the body keeps `h` per step where with it it keeps `h + hx`: the sides' saved values differ
OPTIONAL_INPUT_ADDED_IN_BODY = """
@function
layer HxLoop(d: int, n: int = 2) {
    for k in range(n) {
        param w_l{k}: [d, d] = normal(0, 0.3)
    }
    example(d = 3)
    forward(x: [B, d], hx: [B, d]? = none) -> [B, d] {
        h = x
        for k in range(n) {
            if hx != none {
                h = h + hx
            }
            h = sigmoid(h @ w_l{k}) * h
        }
        return h
    }
}
"""

OPTIONAL_INPUT_AND_MEMBER_IN_BODY = """
@function
layer HxBias(d: int, n: int = 2, gate: bool = true) {
    for k in range(n) {
        param w_l{k}: [d, d] = normal(0, 0.3)
    }
    param b: [d] = uniform(-0.5, 0.5) if gate
    example(d = 3)
    forward(x: [B, d], hx: [B, d]? = none) -> [B, d] {
        h = x
        for k in range(n) {
            if hx != none {
                h = h + hx
            }
            h = sigmoid(h @ w_l{k}) * h - b
        }
        return h
    }
}
"""


def _inputs(given: bool) -> list[torch.Tensor]:
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    return [x, torch.randn(2, 3, dtype=torch.float64, requires_grad=True)] if given else [x]


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("given", [False, True])
def test_sides_keeping_different_per_step_values_save_them_in_their_backwards_order(n, given):
    a, b = plain_pair(OPTIONAL_INPUT_ADDED_IN_BODY, "hx_loop", "HxLoop", d=3, n=n)
    compare_with_plain(a, b, *_inputs(given))


@pytest.mark.parametrize("gate", [False, True])
@pytest.mark.parametrize("given", [False, True])
def test_an_optional_input_and_an_optional_member_read_in_one_loop(gate, given):
    a, b = plain_pair(OPTIONAL_INPUT_AND_MEMBER_IN_BODY, "hx_bias", "HxBias", d=3, n=2, gate=gate)
    compare_with_plain(a, b, *_inputs(given))


# layer norm's mean and rstd, kept per step: marked non-differentiable as outside loops (ATen's double
# backward goes through the input, and has no derivative of its backward in mean)
NORMS_OF_CONSTRUCTED_LENGTH = """
layer Norm(d: int) {
    param weight: [d] = uniform(0.5, 1.5)
    param bias: [d] = uniform(-0.5, 0.5)
    example(d = 3)
    forward(x: [..., d]) -> [..., d] {
        return layer_norm(x, [d], weight = weight, bias = bias, eps = 1e-5)
    }
}

@function
layer Norms(d: int, depth: int = 2) {
    sub norms = [Norm(d) for i in range(depth)]
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        h = x
        for item in norms {
            h = tanh(item(h)) + h
        }
        return h
    }
}
"""


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_layer_norms_in_a_loop_have_a_double_backward(depth):
    a, b = plain_pair(NORMS_OF_CONSTRUCTED_LENGTH, "loop_norms", "Norms", d=3, depth=depth)
    compare_with_plain(a, b, torch.randn(2, 3, dtype=torch.float64, requires_grad=True))


def test_a_loops_layer_norm_computes_its_statistics_with_its_result_in_one_call():
    spec = parse_file("loop_norms.layer", NORMS_OF_CONSTRUCTED_LENGTH)
    code = emit_file(spec, check_program([spec]), "loop_norms.layer", {})
    function = code[code.index("class NormsFunction") : code.index("class Norms(")]
    forward = function[: function.index("def setup_context")]
    assert forward.count("torch.native_layer_norm(") == 1
    assert ", mean, rstd = torch.native_layer_norm(" in forward


def test_a_loop_functions_forward_types_a_tensor_some_side_goes_without_as_optional():
    spec = parse_file("hx_bias.layer", OPTIONAL_INPUT_AND_MEMBER_IN_BODY)
    code = emit_file(spec, check_program([spec]), "hx_bias.layer", {})
    function = code[code.index("class HxBiasFunction") : code.index("def setup_context")]
    signature = " ".join(function[function.index("def forward(") : function.index(") ->")].split())
    assert "x: Tensor, hx: Tensor | None, w_l: Tensor, b: Tensor | None, n: int" in signature
