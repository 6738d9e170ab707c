"""Subs under `@function`: inlined into one Function (autodiff/inline.py), against the plain module.

Each layer is compiled twice, as written and with `@function`; the two modules, built under one seed,
must agree on outputs, on every parameter's gradient by name and on state_dict's keys, and the Function's
derivatives must pass gradcheck and gradgradcheck in float64.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from layerdsl.autodiff.inline import inline_subs
from layerdsl.autodiff.plan import plan_backwards
from layerdsl.codegen.module import emit_file
from layerdsl.diagnostics import SpecError
from layerdsl.ir.printer import spec_text
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file
from tests.support import compile_spec

SPECS = Path(__file__).resolve().parent.parent / "specs"

AFFINE = """
layer Affine(d_in: int, d_out: int, bias: bool = true, gain: float = 1.0) {
    let scale = gain / sqrt(d_in)
    param weight: [d_out, d_in]
    param bias: [d_out] = zeros if bias

    example(d_in = 3, d_out = 3)

    forward(x: [..., d_in]) -> [..., d_out] {
        h = x @ transpose(weight, 0, 1) * scale
        if gain > 1 {
            h = tanh(h)
        }
        return h + bias
    }
}

layer TwoAffine(d: int, with_bias: bool = false) {
    sub mix = Affine(d, d, bias = with_bias)
    sub out = Affine(d, d, gain = 2.0)
    init out.bias = uniform(-1, 1)

    example(d = 4, with_bias = [false, true])

    forward(x: [B, d]) -> [B, d] {
        h = mix(tanh(mix(x)))
        return out(h) * mix.weight[0]
    }
}
"""


def _as_function(text: str, layer: str) -> str:
    return re.sub(rf"^layer {layer}\b", f"@function\nlayer {layer}", text, flags=re.M)


def _modules(text: str, layer: str, *args, **kwargs):
    """The plain module and the @function one, built from the same draws, in float64."""
    plain = compile_spec(text, "plain")[layer]
    function = compile_spec(_as_function(text, layer), "function")[layer]
    torch.manual_seed(0)
    a = plain(*args, **kwargs, dtype=torch.float64)
    torch.manual_seed(0)
    b = function(*args, **kwargs, dtype=torch.float64)
    return a, b


def _compare(a, b, x: torch.Tensor) -> None:
    assert list(a.state_dict()) == list(b.state_dict())
    for (name, p), (other, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert name == other and torch.equal(p, q), name
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = a(xa), b(xb)
    assert type(yb.grad_fn).__name__.endswith("FunctionBackward"), "the @function module runs its Function"
    torch.testing.assert_close(yb, ya)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad)
    grads_a = {n: p.grad for n, p in a.named_parameters()}
    grads_b = {n: p.grad for n, p in b.named_parameters()}
    assert list(grads_a) == list(grads_b)
    for name in grads_a:
        assert grads_b[name] is not None, name
        torch.testing.assert_close(grads_b[name], grads_a[name], msg=name)
    names = [n for n, _ in b.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in b.named_parameters())

    def call(x, *ps):
        return torch.func.functional_call(b, dict(zip(names, ps)), (x,))

    inputs = (x.clone().requires_grad_(), *params)
    assert torch.autograd.gradcheck(call, inputs)
    assert torch.autograd.gradgradcheck(call, inputs)


def test_perceptron_as_one_function():
    text = (SPECS / "perceptron.layer").read_text()
    a, b = _modules(text, "Perceptron", 4, 6, 2)
    _compare(a, b, torch.randn(5, 4, dtype=torch.float64))


@pytest.mark.parametrize("final_relu", [False, True])
def test_deep_mlp_of_a_written_count_as_one_function(final_relu):
    text = (SPECS / "deep_mlp.layer").read_text().replace("range(depth)", "range(3)")
    a, b = _modules(text, "DeepMLP", 4, 8, final_relu=final_relu)
    _compare(a, b, torch.randn(2, 3, 4, dtype=torch.float64))


@pytest.mark.parametrize("with_bias", [False, True])
def test_subs_with_optional_members_lets_and_branches(with_bias):
    a, b = _modules(AFFINE, "TwoAffine", 4, with_bias=with_bias)
    assert (b.mix.bias is None) == (not with_bias)
    _compare(a, b, torch.randn(5, 4, dtype=torch.float64))
