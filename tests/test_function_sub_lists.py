"""`@function` layers calling a list of subs whose length is a constructor argument (`sub blocks =
[Block(d) for i in range(depth)]`): the Function loops over the items, whose tensors the module passes
stacked (one input per member, `torch.stack([item.w1 for item in self.blocks])`), so the module's
parameters and state_dict are the plain module's. Against the plain module (the same spec without
`@function`): outputs, gradients, gradcheck and gradgradcheck in float64, at lengths 0 to several."""

from __future__ import annotations

import pytest
import torch

from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .function_agreement import compare_with_plain
from .support import compile_spec

RESIDUAL = """
layer ResidualMLP(d: int, hidden: int) {
    param w1: [hidden, d]
    param w2: [d, hidden]
    example(d = 4, hidden = 8)
    forward(x: [..., d]) -> [..., d] {
        return x + relu(x @ transpose(w1, 0, 1)) @ transpose(w2, 0, 1)
    }
}
"""

DEEP = """
@function
layer Deep(d: int, hidden: int, depth: int = 3) {
    sub blocks = [ResidualMLP(d, hidden) for i in range(depth)]
    example(d = 4, hidden = 8)
    forward(x: [..., d]) -> [..., d] {
        h = x
        for block in blocks {
            h = block(h)
        }
        return h
    }
}
"""

LINEARS = """
@function
layer TanhStack(d: int, depth: int, bias: bool = true) {
    sub fcs = [nn.Linear(d, d, bias = bias) for i in range(depth)]
    param scale: [d] = uniform(0.5, 1.5)
    example(d = 3, depth = 2)
    forward(x: [B, d]) -> [B, d] {
        h = x * scale
        for fc in fcs {
            h = tanh(fc(h)) + h
        }
        return h * scale
    }
}
"""

SCALED = """
layer Gated(d: int, k: int) {
    param w: [d, d]
    param gain: [d] = uniform(0.5, 1.5)
    example(d = 3, k = 1)
    forward(x: [B, d], y: [B, d]) -> [B, d] {
        return sigmoid(x @ w) * y * gain * (k + 1)
    }
}

@function
layer GatedStack(d: int, depth: int) {
    sub gates = [Gated(d, 2) for i in range(depth)]
    example(d = 3, depth = 2)
    forward(x: [B, d]) -> [B, d] {
        h = x
        for gate in gates {
            h = gate(x, h) + h
        }
        return h
    }
}
"""


def plain_pair(text: str, stem: str, name: str, **kwargs):
    """The @function module and the plain one (the spec without `@function`), with the same parameters."""
    ours = compile_spec(text, stem)[name]
    plain = compile_spec(text.replace("@function\n", ""), f"{stem}_plain")[name]
    torch.manual_seed(0)
    a = ours(**kwargs).double()
    b = plain(**kwargs).double()
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_a_list_of_sub_layers_of_constructed_length_derives_as_a_loop(depth):
    a, b = plain_pair(RESIDUAL + DEEP, "deep", "Deep", d=3, hidden=4, depth=depth)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


@pytest.mark.parametrize("depth", [0, 1, 4])
@pytest.mark.parametrize("bias", [True, False])
def test_a_list_of_torch_nn_linears_with_a_parameter_of_its_own(depth, bias):
    a, b = plain_pair(LINEARS, "linears", "TanhStack", d=3, depth=depth, bias=bias)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


@pytest.mark.parametrize("depth", [0, 2, 3])
def test_items_read_the_outer_input_each_step(depth):
    a, b = plain_pair(SCALED, "gated", "GatedStack", d=3, depth=depth)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


def test_the_function_runs_the_items_as_one_loop_and_the_module_stacks_their_members():
    spec = parse_file("deep.layer", RESIDUAL + DEEP)
    code = emit_file(spec, check_program([spec]), "deep.layer", {})
    function = code[code.index("class DeepFunction") : code.index("class Deep(")]
    assert function.count("torch.relu(") == 1  # the item's forward once, in a loop
    assert "for i in range(depth):" in function
    assert (
        "torch.stack([item.w1 for item in self.blocks]) if len(self.blocks) else x.new_empty(0)" in code
    )  # on x's device, of its dtype


def _deep_mlp_spec() -> str:
    """specs/deep_mlp.layer with `@function` on DeepMLP (a loop, then an `if` on an argument)."""
    from pathlib import Path

    text = (Path(__file__).parent.parent / "specs" / "deep_mlp.layer").read_text()
    return text.replace("layer DeepMLP(", "@function\nlayer DeepMLP(")


@pytest.mark.parametrize("depth", [0, 2, 3])
@pytest.mark.parametrize("final_relu", [False, True])
def test_the_shipped_deep_mlp_derives_with_an_if_on_an_argument_after_the_loop(depth, final_relu):
    a, b = plain_pair(_deep_mlp_spec(), "deep_mlp", "DeepMLP", d=3, hidden=4, depth=depth, final_relu=final_relu)
    x = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


TWICE = """
@function
layer Twice(d: int, hidden: int, depth: int) {
    sub blocks = [ResidualMLP(d, hidden) for i in range(depth)]
    example(d = 4, hidden = 8, depth = 2)
    forward(x: [B, d]) -> [B, d] {
        h = x
        for block in blocks {
            h = block(h)
        }
        g = sin(h)
        for block in blocks {
            g = block(g) * h
        }
        return g
    }
}
"""


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_two_loops_over_one_list_share_its_stacked_members(depth):
    a, b = plain_pair(RESIDUAL + TWICE, "twice", "Twice", d=3, hidden=4, depth=depth)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


def test_a_step_saves_what_its_backward_reads_and_no_view_of_a_member():
    """Per step: the block's input and its relu (its backward's reads); the transposed weights are views of
    the stacked members, taken again in backward, not kept per step; the members kept as themselves."""
    a, _ = plain_pair(RESIDUAL + DEEP, "deep", "Deep", d=3, hidden=4, depth=5)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    out = a(x)
    saved = out.grad_fn.saved_tensors
    per_step = sorted(tuple(t.shape) for t in saved if t.dim() == 3 and t.shape[1] == 2)
    # h from step 1 on (step 0's is x), and relu(h @ w1.T) of every step
    assert per_step == [(4, 2, 3), (5, 2, 4)]
    assert not [t for t in saved if t.dim() == 3 and t.shape[1] != 2]  # the members not stacked, but
    members = sorted(t.data_ptr() for t in saved if t.dim() == 2 and t.shape != x.shape)
    assert members == sorted(p.data_ptr() for p in a.parameters())  # each block's w1 and w2 themselves
    assert sum(t.numel() for t in saved) == 4 * 2 * 3 + 5 * 2 * 4 + 2 * 5 * 12 + 2 * 3  # x, not the output


def test_torch_func_transforms_go_through_the_loop_over_the_items():
    a, b = plain_pair(RESIDUAL + DEEP, "deep", "Deep", d=3, hidden=4, depth=3)
    xs = torch.randn(5, 3, dtype=torch.float64)

    def grads(module):
        return torch.func.vmap(torch.func.grad(lambda x: module(x).sin().sum()))(xs)

    torch.testing.assert_close(grads(a), grads(b))
    torch.testing.assert_close(torch.func.jacrev(a)(xs[0]), torch.func.jacrev(b)(xs[0]))
    params = {k: v.detach() for k, v in a.named_parameters()}

    def loss(module, p):
        return torch.func.functional_call(module, p, (xs,)).sum()

    by_param = torch.func.grad(lambda p: loss(a, p))(params)
    wanted = torch.func.grad(lambda p: loss(b, p))(params)
    for name in params:
        torch.testing.assert_close(by_param[name], wanted[name])
