"""The sides of a branching `@function` forward: counted and planned by one walk, so the bound on sides
(`plan.MAX_BRANCH_PLANS`) counts exactly the sides that are derived; and a comparison of a value with
itself (`kdim == embed_dim` of a sub given `d, d`) decided when the forward is planned, so it adds no side.
"""

from __future__ import annotations

import pytest
import torch

from layerdsl.autodiff.inline import inline_subs
from layerdsl.autodiff.plan import BackwardPlan, BranchPlan, plan_backwards, side_count, straight_plans
from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .support import saved_bytes

CORRELATED = '''
@function
layer Correlated(n: int, a: bool = true, b: bool = false) {
    """`if`s whose conditions the `if`s around them decide, and presence tests repeated."""
    param w: [n] = ones

    example(n = 3)

    forward(x: [B, n], m: [B, n]? = none) -> [B, n] {
        h = x * w
        if a {
            h = tanh(h)
            if a and b {
                h = h * h
            }
        } else {
            if a and b {
                h = sigmoid(h)
            }
        }
        if m != none {
            h = h + m
        }
        if m == none {
            h = h * 2
        }
        if m != none and a {
            return h * m
        }
        return h
    }
}
'''


def _checked(name: str, text: str):
    spec = parse_file(f"{name}.layer", text)
    program = check_program([spec])
    return spec, program


def test_the_count_is_the_number_of_sides_planned():
    """a, b: 3 combinations (`a and b` is open inside `if a`, decided false outside it); `m` given or not:
    2 (its second test, and `m != none and a`, are decided by the first and by a); 6 in all."""
    spec, _ = _checked("correlated", CORRELATED)
    plans, problems = plan_backwards([spec])
    assert problems == []
    [layer] = spec.layers
    assert layer.forward is not None
    assert len(straight_plans(plans["Correlated"])) == 6
    assert side_count(layer.forward.body, (), 32) == 6
    assert side_count(layer.forward.body, (), 2) == 3  # stops past the limit


@pytest.mark.parametrize("a", [True, False])
@pytest.mark.parametrize("b", [True, False])
@pytest.mark.parametrize("given", [True, False])
def test_correlated_sides_match_the_plain_form(a, b, given):
    spec, program = _checked("correlated", CORRELATED)
    namespace: dict = {}
    exec(compile(emit_file(spec, program, "correlated.layer", {}), "correlated.py", "exec"), namespace)
    torch.manual_seed(0)
    layer = namespace["Correlated"](3, a=a, b=b, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    m = torch.randn(2, 3, dtype=torch.float64, requires_grad=True) if given else None
    w = layer.w.detach().requires_grad_()
    got, want = layer(x, m), namespace["correlated"](x, w, m=m, a=a, b=b)
    assert torch.allclose(got, want)
    leaves = [x, w] + ([m] if m is not None else [])

    def run(*ts):
        return namespace["CorrelatedFunction"].apply(ts[0], ts[2] if given else None, ts[1], a, b)

    assert torch.autograd.gradcheck(run, tuple(leaves)) and torch.autograd.gradgradcheck(run, tuple(leaves))


SELF_COMPARED = '''
layer Projection(n: int, heads: int, groups: int, scale: float = 1.0, other: float = 1.0) {
    """A choice by two ints, and one by two floats."""
    param w: [n, n] = ones

    example(n = 3, heads = 2, groups = 2)

    forward(x: [B, n]) -> [B, n] {
        h = x @ w
        if heads == groups {
            h = tanh(h)
        } else {
            h = sigmoid(h)
        }
        if scale == other {
            h = h * h
        }
        return h
    }
}

@function
layer SelfCompared(d: int, heads: int = 2, s: float = 2.0) {
    """`Projection(d, heads, heads, s, s)`: its `heads == groups` holds; `s == s` is false for a NaN."""
    sub proj = Projection(d, heads, heads, s, s)

    example(d = 3)

    forward(x: [B, d]) -> [B, d] {
        return proj(x)
    }
}
'''


def test_a_comparison_of_an_int_with_itself_has_one_side():
    """`heads == heads` is decided (its `then` side only); `s == s` of a float is not (a NaN is not equal to itself)."""
    spec, _ = _checked("self_compared", SELF_COMPARED)
    layers = {layer.name: layer for layer in spec.layers}
    inlined = inline_subs(layers["SelfCompared"], layers).layer
    assert inlined.forward is not None
    assert side_count(inlined.forward.body, (), 32) == 2
    plans, problems = plan_backwards([spec])
    assert problems == []
    plan = plans["SelfCompared"]
    assert isinstance(plan, BranchPlan) and all(isinstance(p, BackwardPlan) for p in (plan.then, plan.orelse))
    for side in straight_plans(plan):
        ops = {s.op.name for s in side.tape.steps if s.op is not None}
        assert "tanh" in ops and "sigmoid" not in ops


@pytest.mark.parametrize("s", [2.0, float("nan")])
def test_a_decided_comparison_matches_the_plain_form(s):
    spec, program = _checked("self_compared", SELF_COMPARED)
    namespace: dict = {}
    exec(compile(emit_file(spec, program, "self_compared.layer", {}), "self_compared.py", "exec"), namespace)
    torch.manual_seed(0)
    layer = namespace["SelfCompared"](3, 2, s, dtype=torch.float64)
    plain = namespace["Projection"](3, 2, 2, s, s, dtype=torch.float64)
    plain.load_state_dict({"w": layer.proj.w.detach()})
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    got, want = layer(x), plain(x)
    assert torch.allclose(got, want)
    (gx,) = torch.autograd.grad(got.sum(), x)
    (wx,) = torch.autograd.grad(want.sum(), x)
    assert torch.allclose(gx, wx)
    assert torch.autograd.gradcheck(layer, (x,)) and torch.autograd.gradgradcheck(layer, (x,))


MIXED = '''
@function
layer Mixed(n: int, a: bool = true, b: bool = false) {
    """Five independent choices: two arguments, `training`, two optional inputs (32 sides)."""
    param w: [n] = uniform(0.5, 1.5)

    example(n = 3)

    forward(x: [B, n], u: [B, n]? = none, v: [B, n]? = none) -> [B, n] {
        h = x * w
        if a {
            h = tanh(h)
        }
        if training {
            h = h * sigmoid(x)
        }
        if u != none {
            h = h + u * h
        }
        if b {
            h = h * h
        } else {
            h = exp(h) * w
        }
        if v != none {
            return h * v
        }
        return h
    }
}
'''

# (a, b, training, u given, v given): all on, all off, and a sample between
CONFIGURATIONS = [
    (True, True, True, True, True),
    (False, False, False, False, False),
    (True, False, True, False, True),
    (False, True, False, True, False),
    (True, True, False, False, True),
    (False, False, True, True, False),
]


def _straight(a: bool, b: bool, training: bool, u: bool, v: bool) -> str:
    """The side of `MIXED` that a configuration takes, as a spec of its own (no `if`): what it saves is
    the least a Function of that forward saves."""
    lines = ["h = x * w"]
    lines += ["h = tanh(h)"] if a else []
    lines += ["h = h * sigmoid(x)"] if training else []
    lines += ["h = h + u * h"] if u else []
    lines += ["h = h * h"] if b else ["h = exp(h) * w"]
    lines += ["return h * v"] if v else ["return h"]
    inputs = ["x: [B, n]"] + (["u: [B, n]"] if u else []) + (["v: [B, n]"] if v else [])
    body = "\n".join("        " + line for line in lines)
    return (
        f'@function\nlayer Straight(n: int) {{\n    """One side."""\n    param w: [n] = uniform(0.5, 1.5)\n\n'
        f"    example(n = 3)\n\n    forward({', '.join(inputs)}) -> [B, n] {{\n{body}\n    }}\n}}\n"
    )


def _compiled(name: str, text: str) -> dict:
    spec, program = _checked(name, text)
    namespace: dict = {}
    exec(compile(emit_file(spec, program, f"{name}.layer", {}), f"{name}.py", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def mixed() -> dict:
    return _compiled("mixed", MIXED)


@pytest.mark.parametrize("config", CONFIGURATIONS)
def test_each_side_of_independent_ifs_matches_the_plain_form(mixed, config):
    a, b, training, u_given, v_given = config
    torch.manual_seed(0)
    layer = mixed["Mixed"](3, a=a, b=b, dtype=torch.float64).train(training)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    u = torch.randn(2, 3, dtype=torch.float64, requires_grad=True) if u_given else None
    v = torch.randn(2, 3, dtype=torch.float64, requires_grad=True) if v_given else None
    w = layer.w.detach().requires_grad_()
    assert torch.allclose(layer(x, u, v), mixed["mixed"](x, layer.w, u=u, v=v, a=a, b=b, training=training))
    got = mixed["MixedFunction"].apply(x, u, v, w, a, b, training)
    want = mixed["mixed"](x, w, u=u, v=v, a=a, b=b, training=training)
    assert torch.allclose(got, want)
    leaves = [t for t in (x, u, v, w) if t is not None]
    seed = torch.randn_like(want)
    first = [torch.autograd.grad(y, leaves, seed, create_graph=True) for y in (got, want)]
    for g, h in zip(*first):
        assert torch.allclose(g, h)

    def run(*ts):
        given = iter(ts)
        x_, u_, v_ = next(given), next(given) if u_given else None, next(given) if v_given else None
        return mixed["MixedFunction"].apply(x_, u_, v_, next(given), a, b, training)

    assert torch.autograd.gradcheck(run, tuple(leaves)) and torch.autograd.gradgradcheck(run, tuple(leaves))


@pytest.mark.parametrize("config", CONFIGURATIONS)
def test_a_side_saves_what_the_same_forward_without_ifs_saves(mixed, config):
    """Each side keeps only what its own backward reads: as many bytes as the spec of that side alone."""
    a, b, training, u_given, v_given = config
    straight = _compiled("straight", _straight(*config))
    torch.manual_seed(0)
    x, u, v = (torch.randn(64, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    branching = mixed["MixedFunction"]
    side = saved_bytes(lambda: branching.apply(x, u if u_given else None, v if v_given else None, w, a, b, training))
    given = [x] + ([u] if u_given else []) + ([v] if v_given else [])
    alone = saved_bytes(lambda: straight["StraightFunction"].apply(*given, w))
    assert side == alone
