"""A derived backward through `if` on configuration values: the Function takes the branch forward took,
in forward, setup_context and backward alike (`autodiff.plan.BranchPlan`)."""

from __future__ import annotations

import pytest
import torch

from layerdsl.autodiff.plan import BranchPlan, plan_backwards
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .support import compile_spec

SPEC = '''
@function
layer DropScale(features: int, p: float = 0.5) {
    """Dropout in training only, then a learned scale."""
    param w: [features] = ones

    example(features = 4)

    forward(x: [..., features]) -> [..., features] {
        h = tanh(x)
        if training {
            h = dropout(h, p)
        }
        return h * w
    }
}

@function
layer Chosen(n: int, mode: int = 0, normalize: bool = true) {
    """Sides chosen by an argument, a dim and a flag; one side saves a costly intermediate."""
    param w: [n] = ones
    let wide = n > 3

    example(n = 4)

    forward(x: [B, n]) -> [B, n] {
        if mode == 1 {
            h = sigmoid(x) * w
        } else if wide {
            h = tanh(x * w)
        } else {
            h = x * x * w
        }
        if normalize and B > 1 {
            return h * rsqrt(mean(h * h, dim = -1, keepdim = true) + 0.5)
        }
        return h * x
    }
}
'''


@pytest.fixture(scope="module")
def ns() -> dict:
    return compile_spec(SPEC, "branches")


def _plain(ns: dict, layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The functional form (plain autograd) with the layer's parameters and configuration."""
    if isinstance(layer, ns["DropScale"]):
        return ns["drop_scale"](x, layer.w, p=layer.p, training=layer.training)
    return ns["chosen"](x, layer.w, n=layer.n, mode=layer.mode, normalize=layer.normalize)


def _second_order(out, inputs, seed):
    first = torch.autograd.grad(out, inputs, seed, create_graph=True)
    total = sum((g * torch.linspace(-1, 1, g.numel(), dtype=g.dtype).view_as(g)).sum() for g in first)
    return torch.autograd.grad(total, inputs)


CONFIGS = [
    ("Chosen", {"n": 4, "mode": 1}, 3),
    ("Chosen", {"n": 4, "mode": 0}, 3),
    ("Chosen", {"n": 3, "mode": 0}, 3),
    ("Chosen", {"n": 4, "mode": 0, "normalize": False}, 3),
    ("Chosen", {"n": 4, "mode": 1}, 1),  # B > 1 fails: the plain side
    ("DropScale", {"features": 4}, 3),  # in eval mode (training off below)
]


@pytest.mark.parametrize(("name", "config", "batch"), CONFIGS)
def test_each_side_matches_autograd_to_second_order(ns, name, config, batch):
    torch.manual_seed(0)
    layer = ns[name](**config, dtype=torch.float64)
    layer.eval()
    with torch.no_grad():
        layer.w.uniform_(0.5, 1.5)
    n = layer.w.shape[0]
    x = torch.rand(batch, n, dtype=torch.float64, requires_grad=True)
    got, want = layer(x), _plain(ns, layer, x)
    assert torch.allclose(got, want)
    seed = torch.randn_like(want)
    inputs = [x, layer.w]
    first = [torch.autograd.grad(y, inputs, seed, retain_graph=True) for y in (got, want)]
    for a, b in zip(*first):
        assert torch.allclose(a, b)
    for a, b in zip(_second_order(got, inputs, seed), _second_order(want, inputs, seed)):
        assert torch.allclose(a, b)
    assert torch.autograd.gradcheck(layer, (x,)) and torch.autograd.gradgradcheck(layer, (x,))


def test_training_on_draws_one_mask_that_backward_reads(ns):
    torch.manual_seed(0)
    layer = ns["DropScale"](6, p=0.5, dtype=torch.float64)
    with torch.no_grad():
        layer.w.uniform_(0.5, 1.5)
    x = torch.rand(5, 6, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    kept = y != 0
    assert 0 < kept.sum() < kept.numel()  # some dropped, some kept
    gx, gw = torch.autograd.grad(y.sum(), [x, layer.w])
    expected = torch.where(kept, 2 * layer.w * (1 - torch.tanh(x) ** 2), 0)
    assert torch.allclose(gx, expected)
    assert torch.allclose(gw, torch.where(kept, 2 * torch.tanh(x), 0).sum(0))
    layer.p = 0.0  # training with nothing dropped: deterministic, so gradcheck applies
    assert torch.autograd.gradcheck(layer, (x,)) and torch.autograd.gradgradcheck(layer, (x,))


def test_eval_mode_saves_no_mask(ns):
    layer = ns["DropScale"](6).eval()
    x = torch.rand(5, 6, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x)
    assert all(t.dtype != torch.bool for t in saved) and len(saved) == 2  # x and w


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # torch.func's addcmul_ fallback
def test_vmap_and_jacrev_follow_the_branch(ns):
    layer = ns["Chosen"](4, mode=0, dtype=torch.float64)
    x = torch.rand(3, 4, dtype=torch.float64)
    fn = ns["ChosenFunction"]

    def one(xs):
        return fn.apply(xs, layer.w, 0, True, True)[0]  # mode, normalize, wide

    jac = torch.func.jacrev(one)(x)
    want = torch.autograd.functional.jacobian(lambda x: _plain(ns, layer, x), x)
    assert torch.allclose(jac, want)
    batched = torch.func.vmap(one)(torch.rand(2, 3, 4, dtype=torch.float64))
    assert batched.shape == (2, 3, 4)


def test_the_plan_branches_per_side():
    spec = parse_file("branches.layer", SPEC)
    check_program([spec])
    plans, problems = plan_backwards([spec])
    assert problems == []
    chosen = plans["Chosen"]
    assert isinstance(chosen, BranchPlan) and len(chosen.sides()) == 6  # (3 choices of h) x (2 returns)


def test_the_generated_function_chooses_by_the_same_condition(ns):
    source = ns["SOURCE"]
    fn = source[source.index("class DropScaleFunction") : source.index("class DropScale(")]
    forward = fn[fn.index("def forward") : fn.index("def setup_context")]
    setup = fn[fn.index("def setup_context") : fn.index("def backward")]
    backward = fn[fn.index("def backward") : fn.index("def apply")]
    assert "if training:" in forward and "if training:" in setup and "if ctx.training:" in backward
    assert forward.count("torch.tanh(x)") == 1  # what both sides compute first is written once
    assert "pass" not in setup


def test_a_backward_block_after_an_if_is_a_located_error():
    spec = parse_file(
        "written.layer",
        "@function\nlayer Written() {\n    forward(x) {\n        if training {\n            return x * 2\n"
        "        }\n        return x\n    }\n    backward(grad_y) {\n        grad x = grad_y\n    }\n}\n",
    )
    check_program([spec])
    _, problems = plan_backwards([spec])
    assert [(p.span.line, p.span.col) for p in problems] == [(4, 9)]
    assert "cannot follow an `if`" in problems[0].message and "leave the backward out" in (problems[0].hint or "")
