"""Members named like operations, as torch.nn's `self.norm` and `self.dropout`: a sub hides the
operation it is named after (`norm(x)` calls the sub), a param is read as a tensor."""

from __future__ import annotations

import torch

from layerdsl.diagnostics import SpecError

from ..support import compile_spec

SPEC = """
layer Block(d: int, dropout: float = 0.0) {
    sub norm = nn.LayerNorm(d)
    sub drop = nn.Dropout(dropout)
    param flip: [d] = ones
    buffer mean: [d] = zeros
    example(d = 4)

    forward(x: [B, d]) -> [B, d] {
        return x + drop(norm(x - mean)) * flip + norm(flip(x, [1]))
    }
}
"""


def _compile(text: str) -> dict:
    return compile_spec(text, "block")


def test_a_param_named_like_an_op_cannot_be_called():
    try:
        _compile(SPEC)
    except SpecError as e:
        text = str(e)
    else:
        raise AssertionError("calling a param named like an operation must be an error")
    assert "'flip' is a param, not an operation (it hides the operation 'flip' in this layer)" in text
    assert "block.layer:10:" in text


def test_subs_and_members_named_like_ops_generate_the_module_torch_would():
    ns = _compile(SPEC.replace(" + norm(flip(x, [1]))", " + norm(x)"))
    torch.manual_seed(0)
    layer = ns["Block"](4, dtype=torch.float64)
    assert isinstance(layer.norm, torch.nn.LayerNorm) and isinstance(layer.flip, torch.nn.Parameter)
    assert sorted(layer.state_dict()) == ["flip", "mean", "norm.bias", "norm.weight"]
    with torch.no_grad():
        layer.flip.uniform_(0.5, 1.5)
        layer.mean.uniform_(-1, 1)
    x = torch.randn(3, 4, dtype=torch.float64)
    want = x + layer.norm(x - layer.mean) * layer.flip + layer.norm(x)
    assert torch.allclose(layer(x), want)
