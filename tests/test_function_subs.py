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
from layerdsl.ir import nodes as N
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


def _compare(a, b, x: torch.Tensor, fast: bool = False) -> None:
    """`fast`: gradcheck's fast mode (a random projection of the Jacobian), for many parameters."""
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
    assert any(g is not None for g in grads_a.values())
    for name, grad in grads_a.items():
        if grad is None:  # a parameter the forward does not read
            assert grads_b[name] is None, name
        else:
            torch.testing.assert_close(grads_b[name], grad, msg=name)
    names = [n for n, _ in b.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in b.named_parameters())

    def call(x, *ps):
        return torch.func.functional_call(b, dict(zip(names, ps)), (x,))

    inputs = (x.clone().requires_grad_(), *params)
    assert torch.autograd.gradcheck(call, inputs, fast_mode=fast)
    assert torch.autograd.gradgradcheck(call, inputs, fast_mode=fast)


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


def test_lenet_of_torch_nn_layers_as_one_function():
    text = (SPECS / "lenet.layer").read_text()
    a, b = _modules(text, "LeNet")
    assert list(b.state_dict())[:2] == ["features.0.weight", "features.0.bias"]
    torch.manual_seed(1)
    _compare(a, b, torch.randn(2, 1, 28, 28, dtype=torch.float64), fast=True)


def _function_source(text: str, layer: str) -> str:
    spec = parse_file("perceptron.layer", _as_function(text, layer))
    return emit_file(spec, check_program([spec]), "perceptron.layer", {})


def test_the_inlined_forward_reads_as_the_subs_wrote_it():
    source = _function_source((SPECS / "perceptron.layer").read_text(), "Perceptron")
    forward = source[source.index("class PerceptronFunction") : source.index("def setup_context")]
    # Each sub's statement under its sub's name, located at the sub's spec line; its params by name.
    assert re.search(r"hidden_layer = x @ torch\.transpose\(hidden_layer_weight.*\+ hidden_layer_bias", forward)
    assert forward.count("# perceptron.layer:10") == 2  # Dense's `return`, once per sub
    apply = re.search(r"PerceptronFunction\.apply\(([^)]*)\)", source)
    assert apply is not None
    assert [a.strip() for a in apply[1].split(",")] == [
        "x",
        "self.hidden_layer.weight",
        "self.hidden_layer.bias",
        "self.output_layer.weight",
        "self.output_layer.bias",
    ]


def test_a_sub_read_by_its_member_is_an_input_too():
    text = AFFINE.replace("return out(h) * mix.weight[0]", "return h * out.weight[0]")
    a, b = _modules(text, "TwoAffine", 4)
    layers = _checked(_as_function(text, "TwoAffine"))
    inlined = inline_subs(layers["TwoAffine"], layers)
    assert inlined.paths["out_weight"] == "out.weight"
    _compare(a, b, torch.randn(3, 4, dtype=torch.float64))


def _checked(text: str) -> dict:
    spec = parse_file("spec.layer", text)
    return check_program([spec]).layers


def test_inlined_names_keep_clear_of_the_layer_s_own():
    text = AFFINE.replace(
        "h = mix(tanh(mix(x)))\n        return out(h) * mix.weight[0]",
        "mix_h = mix(x)\n        return out(mix_h) + mix_h",
    )
    layers = _checked(_as_function(text, "TwoAffine"))
    inlined = inline_subs(layers["TwoAffine"], layers)
    assert inlined.layer.forward is not None
    bound = [s.target for s in inlined.layer.forward.body if isinstance(s, N.Assign)]
    assert bound.count("mix_h") == 1 and "mix_h_" in bound  # the sub's `h`, renamed around the layer's `mix_h`
    a, b = _modules(text, "TwoAffine", 4)
    _compare(a, b, torch.randn(3, 4, dtype=torch.float64))


def test_a_sub_from_another_file_is_located_at_the_call():
    other = parse_file(
        "scale.layer",
        "layer Scale(d: int) {\n    param g: [d]\n    example(d = 3)\n"
        "    forward(x: [..., d]) -> [..., d] {\n        return round(x * g)\n    }\n}\n",
    )
    here = parse_file(
        "net.layer",
        "@function\nlayer Net(d: int) {\n    sub s = Scale(d)\n    example(d = 3)\n"
        "    forward(x: [B, d]) -> [B, d] {\n        return tanh(s(x))\n    }\n}\n",
    )
    check_program([other, here])
    _, problems = plan_backwards([other, here])
    assert len(problems) == 1
    (p,) = problems
    assert p.path == "net.layer" and (p.span.line, p.span.col) == (6, 21), p.render()
    assert "round() has no derivative" in p.message
    assert "the sub 's', whose layer Scale is in scale.layer" in p.message


def test_a_torch_nn_layer_without_a_written_forward_is_refused():
    spec = parse_file(
        "x.layer",
        "@function\nlayer Normed(d: int) {\n    sub n = nn.LayerNorm(d)\n    example(d = 3)\n"
        "    forward(x: [B, d]) -> [B, d] {\n        return n(x)\n    }\n}\n",
    )
    with pytest.raises(SpecError, match="nn.LayerNorm is a torch.nn layer whose forward is not written"):
        emit_file(spec, check_program([spec]), "x.layer", {})


SEQUENTIAL = """
layer DropMLP(d: int, p: float = 0.5) {
    sub body = nn.Sequential(nn.Linear(d, d), nn.Dropout(p), nn.Tanh(), nn.Identity())
    example(d = 4)
    forward(x: [B, d]) -> [B, d] {
        return body(x)
    }
}
"""


def test_a_sub_s_dropout_follows_the_module_s_training_mode():
    a, b = _modules(SEQUENTIAL, "DropMLP", 8)
    a.eval()
    b.eval()
    _compare(a, b, torch.randn(3, 8, dtype=torch.float64))
    b.train()
    x = torch.randn(64, 8, dtype=torch.float64, requires_grad=True)
    y = b(x)
    dropped = y == 0  # tanh(0): where the dropout mask dropped the linear layer's output
    assert dropped.any() and not dropped.all()
    y.sum().backward()
    assert b.body[0].weight.grad is not None and torch.isfinite(b.body[0].weight.grad).all()


def test_a_sub_whose_layer_has_subs_is_inlined_through():
    text = (SPECS / "perceptron.layer").read_text() + """
layer Twice(d: int) {
    sub first = Perceptron(d, 2 * d, d)
    sub second = Perceptron(d, 3, d)
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        return second(first(x))
    }
}
"""
    a, b = _modules(text, "Twice", 3)
    assert "second.output_layer.bias" in b.state_dict()
    _compare(a, b, torch.randn(4, 3, dtype=torch.float64))


def test_a_sub_of_a_file_that_failed_to_check_adds_no_error():
    net = parse_file(
        "net.layer",
        "@function\nlayer Net(d: int) {\n    sub s = Scale(d)\n    example(d = 3)\n"
        "    forward(x: [B, d]) -> [B, d] {\n        return tanh(s(x))\n    }\n}\n",
    )
    scale = parse_file(
        "scale.layer",
        "layer Scale(d: int) {\n    param g: [d]\n    example(d = 3)\n"
        "    forward(x: [..., d]) -> [..., d] {\n        return x * g + unknown\n    }\n}\n",
    )
    with pytest.raises(SpecError, match="unknown name 'unknown'"):
        check_program([scale, net])
    plans, problems = plan_backwards([net])  # as the driver plans the files that checked
    assert plans == {} and problems == []
