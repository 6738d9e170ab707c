"""A forward of more `if`s on configuration values than `plan.MAX_BRANCH_PLANS` combinations: each `if` a
segment of its own (`autodiff.loops.Choice`), so eight independent `if`s are eight segments, not 256 sides.
The Function against the plain functional form in several configurations (float64: outputs, gradients of
the input and the parameters, gradcheck and gradgradcheck)."""

from __future__ import annotations

import itertools

import pytest
import torch

from layerdsl.autodiff.loops import Choice, LoopPlan
from layerdsl.autodiff.plan import plan_backwards
from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .support import compile_spec, saved_bytes

FLAGS = "abcdefgh"

EIGHT = '''
@function
layer EightIfs(n: int, a: bool = true, b: bool = false, c: bool = true, d: bool = false,
               e: bool = true, f: bool = false, g: bool = true, k: bool = false) {
    """Eight independent choices of configuration: 256 combinations."""
    param w: [n] = ones
    param v: [n] = ones

    example(n = 4)

    forward(x: [B, n]) -> [B, n] {
        h = x * w
        if a {
            h = tanh(h)
        }
        if b {
            h = h * h
        } else {
            h = sigmoid(h) * x
        }
        if c {
            h = h + exp(x)
        }
        if d {
            h = h * w
        }
        if e {
            u = h * v
        } else {
            u = x
        }
        if f {
            h = h / (1 + h * h)
        }
        if g {
            h = h + u * u
        }
        if k {
            h = sin(h) * v
        }
        return h * u
    }
}
'''.replace("g: bool = true, k: bool = false", "g: bool = true, h_: bool = false").replace("if k {", "if h_ {")


@pytest.fixture(scope="module")
def eight() -> dict:
    return compile_spec(EIGHT, "eight")


def test_eight_ifs_are_eight_segments():
    spec = parse_file("eight.layer", EIGHT)
    check_program([spec])
    plans, problems = plan_backwards([spec])
    assert problems == []
    plan = plans["EightIfs"]
    assert isinstance(plan, LoopPlan)
    assert sum(isinstance(seg, Choice) for seg in plan.segments) == 8


CONFIGS = [
    (True,) * 8,
    (False,) * 8,
    (True, False, True, False, True, False, True, False),
    (False, True, False, True, False, True, False, True),
    (True, True, False, False, True, True, False, False),
    (False, False, True, True, False, True, True, True),
]


@pytest.mark.parametrize("flags", CONFIGS)
def test_eight_ifs_match_the_plain_form(eight, flags):
    torch.manual_seed(0)
    names = ["a", "b", "c", "d", "e", "f", "g", "h_"]
    config = dict(zip(names, flags))
    layer = eight["EightIfs"](4, **config, dtype=torch.float64)
    with torch.no_grad():
        layer.w.uniform_(0.5, 1.5)
        layer.v.uniform_(0.5, 1.5)
    x = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    w, v = layer.w.detach().requires_grad_(), layer.v.detach().requires_grad_()
    got, want = layer(x), eight["eight_ifs"](x, w, v, **config)
    assert torch.allclose(got, want)
    seed = torch.rand_like(got)
    grads = torch.autograd.grad((got * seed).sum(), [x, layer.w, layer.v], allow_unused=True)
    expected = torch.autograd.grad((want * seed).sum(), [x, w, v], allow_unused=True)
    for g, e, leaf in zip(grads, expected, [x, w, v]):  # v is unused when neither e nor h_ holds
        assert torch.allclose(torch.zeros_like(leaf) if g is None else g, torch.zeros_like(leaf) if e is None else e)

    def run(x, w, v):
        out = eight["EightIfsFunction"].apply(x, w, v, *flags)
        return out[0] if isinstance(out, tuple) else out

    assert torch.autograd.gradcheck(run, (x, w, v)) and torch.autograd.gradgradcheck(run, (x, w, v))


def test_the_function_keeps_each_if_once(eight):
    """Forward and backward each test a flag once (`if ctx.a:`), not once per combination (the double
    backward's section, what the extra outputs' gradients add, once more)."""
    source = eight["SOURCE"]
    fn = source[source.index("class EightIfsFunction") : source.index("class EightIfs(")]
    forward = fn[fn.index("def forward") : fn.index("def setup_context")]
    backward = fn[fn.index("def backward") : fn.index("# double backward")]
    for flag in ["a", "b", "c", "d", "e", "f", "g", "h_"]:
        assert forward.count(f"if {flag}:") == 1 and backward.count(f"if ctx.{flag}:") == 1


OPTIONAL = '''
@function
layer SixChoices(d: int, a: bool = true, b: bool = false, c: bool = true) {
    """Three flags and three optional inputs: 64 combinations."""
    example(d = 3)
    forward(x: [B, d], u: [B, d]? = none, v: [B, d]? = none, w: [B, d]? = none) -> [B, d] {
        h = x
        if a {
            h = tanh(h)
        }
        if b {
            h = h * h
        }
        if c {
            h = sigmoid(h)
        }
        if u != none {
            h = h + u
        }
        if v != none {
            h = h * v
        }
        if w == none {
            h = h * 2
        } else {
            h = h - w * h
        }
        return h
    }
}
'''


@pytest.mark.parametrize(
    "flags",
    [(True,) * 6, (False,) * 6, (True, False, True, False, True, False), (False, True, False, True, False, True)],
)
def test_ifs_on_optional_inputs_match_the_plain_form(flags):
    """`if u != none` a segment of its own: forward tests u, setup_context keeps `ctx.u_shape` (None when u
    is not given) and backward tests that; u's gradient is None when it is not given."""
    spec = parse_file("six.layer", OPTIONAL)
    program = check_program([spec])
    source = emit_file(spec, program, "six.layer", {})
    assert "ctx.u_shape = None if u is None else u.shape" in source and "if ctx.u_shape is not None:" in source
    namespace: dict = {}
    exec(compile(source, "six.py", "exec"), namespace)
    torch.manual_seed(0)
    config = dict(zip("abc", flags[:3]))
    layer = namespace["SixChoices"](3, **config, dtype=torch.float64)
    x = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    given = [torch.rand(2, 3, dtype=torch.float64, requires_grad=True) if g else None for g in flags[3:]]
    got = layer(x, *given)
    assert torch.allclose(got, namespace["six_choices"](x, **dict(zip("uvw", given)), d=3, **config))
    leaves = [x] + [t for t in given if t is not None]

    def run(*tensors):
        rest = iter(tensors[1:])
        optional = [next(rest) if g else None for g in flags[3:]]
        out = namespace["SixChoicesFunction"].apply(tensors[0], *optional, *flags[:3])
        return out[0] if isinstance(out, tuple) else out

    assert torch.autograd.gradcheck(run, tuple(leaves)) and torch.autograd.gradgradcheck(run, tuple(leaves))


MEMBER = '''
@function
layer Biased(n: int, bias: bool = true, a: bool = true, b: bool = false, c: bool = true, d: bool = false,
             e: bool = true, f: bool = false) {
    """Six flags and a member built when `bias` says: each statement reading it an `if` of its own."""
    param w: [n] = ones
    param bb: [n] = ones if bias

    example(n = 3)

    forward(x: [B, n]) -> [B, n] {
        h = x * w + bb
        if a { h = tanh(h) }
        if b { h = h * h }
        if c { h = sigmoid(h) + bb }
        if d { h = exp(h) }
        if e { h = sin(h) }
        if f { h = cos(h) }
        return h
    }
}
'''


@pytest.mark.parametrize(
    "flags",
    [
        (True,) * 7,
        (False,) * 7,
        (True, False, True, False, True, False, True),
        (False, True, False, True, False, True, False),
    ],
)
def test_an_optional_member_chooses_a_segmented_side(flags):
    spec = parse_file("biased.layer", MEMBER)
    program = check_program([spec])
    plans, problems = plan_backwards([spec])
    assert problems == [] and isinstance(plans["Biased"], LoopPlan)
    namespace: dict = {}
    exec(compile(emit_file(spec, program, "biased.layer", {}), "biased.py", "exec"), namespace)
    torch.manual_seed(0)
    config = dict(zip(["bias", "a", "b", "c", "d", "e", "f"], flags))
    layer = namespace["Biased"](3, **config, dtype=torch.float64)
    x = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    flags_only = {k: v for k, v in config.items() if k != "bias"}
    assert torch.allclose(layer(x), namespace["biased"](x, layer.w, layer.bb, **flags_only))
    params = [layer.w.detach().requires_grad_()] + ([layer.bb.detach().requires_grad_()] if flags[0] else [])

    def run(x, w, *bb):
        out = namespace["BiasedFunction"].apply(x, w, bb[0] if bb else None, *flags[1:])
        return out[0] if isinstance(out, tuple) else out

    assert torch.autograd.gradcheck(run, (x, *params)) and torch.autograd.gradgradcheck(run, (x, *params))


def test_eight_ifs_save_no_more_than_autograd(eight):
    """In every configuration: a value only some sides read (`h9`: the `e` and `f` sides) is saved only when
    one of them runs."""
    names = ["a", "b", "c", "d", "e", "f", "g", "h_"]
    x = torch.randn(64, 256, requires_grad=True)
    for flags in itertools.product([True, False], repeat=8):
        config = dict(zip(names, flags))
        layer = eight["EightIfs"](256, **config)
        w, v = layer.w.detach().requires_grad_(), layer.v.detach().requires_grad_()
        ours = saved_bytes(lambda layer=layer: layer(x), layer)
        theirs = saved_bytes(lambda w=w, v=v, config=config: eight["eight_ifs"](x, w, v, **config))
        assert ours <= theirs, f"{config}: the Function saves {ours} bytes, autograd {theirs}"
