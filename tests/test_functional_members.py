"""The functional form of a layer whose optional member's condition it takes as arguments (`param b if
bias` with `bias` passed): a call stating the condition without the member is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .support import compile_spec

RNN_CELLS = (Path(__file__).resolve().parent.parent / "specs" / "torch_nn" / "rnn_cells.layer").read_text()

OPTIONAL_BIAS = """
layer OptBias(d: int, bias: bool = true, affine: bool = true, mode: str = "plain") {
    param w: [d, d]
    param b: [d] = uniform(-0.5, 0.5) if bias
    param s: [d] = ones if affine and bias
    param g: [d] = ones if mode == "gated"
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        if mode == "gated" {
            return x @ w * g
        }
        if bias and affine {
            return (x @ w + b) * s
        }
        if bias {
            return x @ w + b
        }
        return x @ w
    }
}
"""


@pytest.fixture(scope="module")
def gru():
    return compile_spec(RNN_CELLS, "rnn_cells")


def test_the_shipped_gru_cell_names_the_missing_bias_when_bias_is_true(gru):
    cell = gru["GRUCell"](5, 4, bias=True)
    with pytest.raises(TypeError, match=r"GRUCell: parameter 'bias_hh' is required with bias=True"):
        gru["gru_cell"](torch.randn(2, 5), cell.weight_ih, cell.weight_hh, cell.bias_ih, bias=True, hidden_size=4)


def test_the_shipped_gru_cell_without_its_biases_is_the_module_without_them(gru):
    cell = gru["GRUCell"](5, 4, bias=False)
    x = torch.randn(2, 5)
    got = gru["gru_cell"](x, cell.weight_ih, cell.weight_hh, bias=False, hidden_size=4)
    torch.testing.assert_close(got, cell(x))


def test_the_shipped_gru_cell_with_its_biases_is_the_module(gru):
    cell = gru["GRUCell"](5, 4)
    x = torch.randn(2, 5)
    got = gru["gru_cell"](x, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, bias=True, hidden_size=4)
    torch.testing.assert_close(got, cell(x))


def test_a_condition_of_two_arguments_is_named_as_written():
    ns = compile_spec(OPTIONAL_BIAS, "opt_bias")
    layer = ns["OptBias"](3)
    x = torch.randn(2, 3)
    with pytest.raises(TypeError, match=r"OptBias: parameter 'b' is required with bias=True"):
        ns["opt_bias"](x, layer.w, s=layer.s, bias=True)
    with pytest.raises(TypeError, match=r"OptBias: parameter 's' is required with `affine and bias`"):
        ns["opt_bias"](x, layer.w, layer.b, bias=True, affine=True)
    with pytest.raises(TypeError, match=r"OptBias: parameter 'g' is required with `mode == \"gated\"`"):
        ns["opt_bias"](x, layer.w, layer.b, layer.s, mode="gated")
    torch.testing.assert_close(ns["opt_bias"](x, layer.w, layer.b, bias=True, affine=False), x @ layer.w + layer.b)
    torch.testing.assert_close(ns["opt_bias"](x, layer.w, bias=False, affine=True), x @ layer.w)
