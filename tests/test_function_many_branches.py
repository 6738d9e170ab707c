"""Derived backwards through many `if`s on configuration values, and through whether a member is given.

The shipped losses whose `if`s multiply past the old bound of 8 sides (BCEWithLogitsLoss, PoissonNLLLoss,
KLDivLoss), compiled with `@function` from the shipped spec, against their plain functional form over
every configuration (float64, first and second derivatives, gradcheck and gradgradcheck); a spec of five
independent `if`s; the bound on sides (`plan.MAX_BRANCH_PLANS`) as a located error; and `if sub.bias !=
none`, decided when the layer is built.
"""

from __future__ import annotations

import itertools
import re
import time

import pytest
import torch

from layerdsl.autodiff.loops import LoopPlan
from layerdsl.autodiff.plan import BranchPlan, plan_backwards, straight_plans
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .conftest import SPECS
from .support import compile_spec


def _shipped(path: str, name: str) -> str:
    """The text of the shipped layer `name`, as in its spec."""
    text = (SPECS / path).read_text(encoding="utf-8")
    start = re.search(rf"^layer {name}\(", text, re.M)
    assert start is not None
    end = text.index("\n}\n", start.start())
    return text[start.start() : end + 3]


def _generated(name: str, text: str) -> dict:
    return compile_spec(text, name)


LOSSES = ["BCEWithLogitsLoss", "PoissonNLLLoss", "KLDivLoss"]


@pytest.fixture(scope="module")
def losses() -> dict:
    return _generated("losses", "\n".join("@function\n" + _shipped("torch_nn/loss.layer", n) for n in LOSSES))


def _positive(shape: tuple[int, ...]) -> torch.Tensor:
    return (torch.rand(shape, dtype=torch.float64) + 0.5).requires_grad_()


def _loss_cases() -> list[tuple[str, dict, tuple[int, ...]]]:
    weights = [None, "w"]
    cases = []
    for reduction in ("mean", "sum", "none"):
        for weight, pos_weight in itertools.product(weights, weights):
            config = {"reduction": reduction, "weight": weight, "pos_weight": pos_weight}
            cases.append(("BCEWithLogitsLoss", config, (3, 4)))
        for log_input, full in itertools.product([True, False], repeat=2):
            cases.append(("PoissonNLLLoss", {"reduction": reduction, "log_input": log_input, "full": full}, (3, 4)))
    for reduction, log_target, shape in itertools.product(
        ("mean", "sum", "none", "batchmean"), [True, False], [(3, 4), ()]
    ):
        cases.append(("KLDivLoss", {"reduction": reduction, "log_target": log_target}, shape))
    return cases


FUNCTIONAL = {
    "BCEWithLogitsLoss": "bce_with_logits_loss",
    "PoissonNLLLoss": "poisson_nll_loss",
    "KLDivLoss": "kl_div_loss",
}


@pytest.mark.parametrize(("name", "config", "shape"), _loss_cases())
def test_each_loss_configuration_matches_its_plain_form(losses, name, config, shape):
    torch.manual_seed(0)
    config = {k: torch.rand(4, dtype=torch.float64) + 0.5 if v == "w" else v for k, v in config.items()}
    layer = losses[name](**config)
    plain = losses[FUNCTIONAL[name]]
    xs = [_positive(shape), _positive(shape)]
    got, want = layer(*xs), plain(*xs, **config)
    assert torch.allclose(got, want)
    seed = torch.randn_like(want)
    first = [torch.autograd.grad(y, xs, seed, create_graph=True) for y in (got, want)]
    for a, b in zip(*first):
        assert torch.allclose(a, b)
    second = [torch.autograd.grad(sum((g * g).sum() for g in grads), xs) for grads in first]
    for a, b in zip(*second):
        assert torch.allclose(a, b)
    assert torch.autograd.gradcheck(layer, tuple(xs)) and torch.autograd.gradgradcheck(layer, tuple(xs))


def test_the_losses_sides_share_what_they_compute_alike(losses):
    """A `reduction` at the end branches first in backward, then the shared part runs once."""
    source = losses["SOURCE"]
    fn = source[source.index("class BCEWithLogitsLossFunction") : source.index("class BCEWithLogitsLoss(")]
    backward = fn[fn.index("def backward") : fn.index("def apply")]
    assert 'elif ctx.reduction == "sum":' in backward
    assert "return grad_input" in backward and backward.count("return grad_input") == 1
    kl = source[source.index("class KLDivLossFunction") : source.index("class KLDivLoss(")]
    setup = kl[kl.index("def setup_context") : kl.index("def backward")]
    assert 'elif reduction == "batchmean":' in setup
    assert "if input.dim() != 0:" in setup  # not `if not (input.dim() == 0):`


FIVE = '''
@function
layer FiveIfs(n: int, a: bool = true, b: bool = false, c: bool = true, d: bool = false, e: bool = true) {
    """Five independent choices of configuration."""
    param w: [n] = ones

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
            return h / (1 + h * h)
        }
        return h
    }
}
'''


@pytest.fixture(scope="module")
def five() -> dict:
    return _generated("five", FIVE)


def test_five_independent_ifs_are_planned_as_every_combination():
    spec = parse_file("five.layer", FIVE)
    check_program([spec])
    plans, problems = plan_backwards([spec])
    assert problems == []
    assert isinstance(plans["FiveIfs"], BranchPlan) and len(straight_plans(plans["FiveIfs"])) == 32


@pytest.mark.parametrize("flags", list(itertools.product([True, False], repeat=5)))
def test_five_independent_ifs_match_autograd(five, flags):
    torch.manual_seed(0)
    config = dict(zip("abcde", flags))
    layer = five["FiveIfs"](4, **config, dtype=torch.float64)
    with torch.no_grad():
        layer.w.uniform_(0.5, 1.5)
    x = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(layer(x), five["five_ifs"](x, layer.w, **config))

    def run(x, w):
        return five["FiveIfsFunction"].apply(x, w, *flags)[0]

    w = layer.w.detach().requires_grad_()
    assert torch.autograd.gradcheck(run, (x, w)) and torch.autograd.gradgradcheck(run, (x, w))


def _six_ifs_agree(generated: dict, flags: tuple[bool, ...]) -> None:
    """SixIfs under `flags` (f, a, ..., e): the module against its functional form, and its Function's
    gradcheck and gradgradcheck."""
    torch.manual_seed(0)
    config = dict(zip("fabcde", flags))
    layer = generated["SixIfs"](4, **config, dtype=torch.float64)
    x = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(layer(x), generated["six_ifs"](x, layer.w, **config))

    def run(x, w):
        return generated["SixIfsFunction"].apply(x, w, *flags)[0]

    w = layer.w.detach().requires_grad_()
    assert torch.autograd.gradcheck(run, (x, w)) and torch.autograd.gradgradcheck(run, (x, w))


def test_more_sides_than_the_bound_are_segments_that_match_autograd():
    """Six independent `if`s (64 sides): each `if` a segment of its own (`loops.Choice`), the last one's
    returning side closed over the rest of the forward."""
    six = FIVE.replace("FiveIfs(n: int,", "SixIfs(n: int, f: bool = true,").replace(
        "        if e {", "        if f {\n            h = h - x\n        }\n        if e {"
    )
    spec = parse_file("six.layer", six)
    check_program([spec])
    plans, problems = plan_backwards([spec])
    assert problems == [] and isinstance(plans["SixIfs"], LoopPlan)
    generated = _generated("six", six)
    for flags in [(True,) * 6, (False,) * 6, (True, False, True, False, True, False)]:
        _six_ifs_agree(generated, flags)


def test_more_sides_than_the_bound_with_an_if_inside_one_match_autograd():
    """`if f { if a { ... } }` among six `if`s: the nested `if` is one at the top, `if f and a`
    (`autodiff.nested_ifs`)."""
    six = FIVE.replace("FiveIfs(n: int,", "SixIfs(n: int, f: bool = true,").replace(
        "        if e {",
        "        if f {\n            if a {\n                h = h - x\n            }\n        }\n        if e {",
    )
    spec = parse_file("six.layer", six)
    check_program([spec])
    plans, problems = plan_backwards([spec])
    assert problems == [] and isinstance(plans["SixIfs"], LoopPlan)
    generated = _generated("six_nested", six)
    assert "if f and a:" in generated["SOURCE"]
    for flags in [(True,) * 6, (False,) * 6, (True, True, False, True, False, True), (True, False) * 3]:
        _six_ifs_agree(generated, flags)


def test_more_sides_than_the_bound_with_a_loop_inside_one_is_a_located_error():
    six = FIVE.replace("FiveIfs(n: int,", "SixIfs(n: int, k: int = 2, f: bool = true,").replace(
        "        if e {",
        "        if f {\n            for t in range(k) {\n                h = h - x\n            }\n        }\n        if e {",
    )
    spec = parse_file("six.layer", six)
    check_program([spec])
    plans, problems = plan_backwards([spec])
    assert plans == {}
    [problem] = problems
    assert (problem.span.line, problem.span.col) == (26, 13)  # the loop inside an `if`
    assert "32 combinations" in problem.message and "a loop inside one" in problem.message
    assert "backward block" in (problem.hint or "")


def test_a_forward_of_many_ifs_is_planned_in_little_time():
    """Twelve independent `if`s would be 4,096 sides, each derived on its own: they are twelve segments."""
    ifs = "".join(f"        if f{k} {{\n            h = h * x\n        }}\n" for k in range(12))
    flags = ", ".join(f"f{k}: bool = true" for k in range(12))
    text = (
        f'@function\nlayer ManyIfs({flags}) {{\n    """Many choices."""\n    example()\n\n'
        f"    forward(x: [B, 4]) {{\n        h = tanh(x)\n{ifs}        return h\n    }}\n}}\n"
    )
    spec = parse_file("many.layer", text)
    check_program([spec])
    start = time.perf_counter()
    plans, problems = plan_backwards([spec])
    assert time.perf_counter() - start < 20  # a derivation per side takes minutes
    assert problems == [] and isinstance(plans["ManyIfs"], LoopPlan) and len(plans["ManyIfs"].segments) == 14


MEMBER = '''
layer Affine(n: int, m: int, bias: bool = true) {
    """x @ weight^T (+ bias)."""
    param weight: [m, n] = ones
    param bias: [m] = zeros if bias

    example(n = 4, m = 3)

    forward(x: [..., n]) -> [..., m] {
        return x @ transpose(weight, 0, 1) + bias
    }
}

@function
layer GatedHead(n: int, m: int, bias: bool = true, shift: bool = false) {
    """A linear head whose sub's bias, when it has one, gates the output; an own optional shift."""
    sub proj = Affine(n, m, bias)
    param offset: [m] = zeros if shift

    example(n = 4, m = 3)

    forward(x: [B, n]) -> [B, m] {
        h = x @ transpose(proj.weight, 0, 1)
        if proj.bias != none {
            h = h * sigmoid(proj.bias)
        } else {
            h = tanh(h)
        }
        if proj.bias == none and shift {
            return h - offset * h
        }
        return h
    }
}
'''


@pytest.fixture(scope="module")
def member() -> dict:
    plain = MEMBER.split("@function\n")[1].replace("layer GatedHead(", "layer PlainGatedHead(")
    return _generated("member", MEMBER + "\n" + plain)


def test_whether_a_subs_member_is_given_chooses_the_side():
    spec = parse_file("member.layer", MEMBER)
    check_program([spec])
    plans, problems = plan_backwards([spec])
    assert problems == []
    # `proj.bias == none` is decided inside `if proj.bias != none`: 3 sides, not 4
    assert len(straight_plans(plans["GatedHead"])) == 3


@pytest.mark.parametrize(("bias", "shift"), list(itertools.product([True, False], repeat=2)))
def test_a_branch_on_a_subs_member_matches_autograd(member, bias, shift):
    torch.manual_seed(0)
    fn = member["GatedHead"](4, 3, bias=bias, shift=shift, dtype=torch.float64)
    plain = member["PlainGatedHead"](4, 3, bias=bias, shift=shift, dtype=torch.float64)
    with torch.no_grad():
        for p in fn.parameters():
            p.uniform_(-1, 1)
    plain.load_state_dict(fn.state_dict())
    x = torch.rand(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(fn(x), plain(x))
    names = [n for n, _ in fn.named_parameters()]
    params = [p for _, p in fn.named_parameters()]

    def run(module):
        return lambda x, *ps: torch.func.functional_call(module, dict(zip(names, ps)), (x,))

    seed = torch.randn(5, 3, dtype=torch.float64)
    for a, b in zip(
        *(torch.autograd.grad(run(m)(x, *params), [x, *params], seed, allow_unused=True) for m in (fn, plain))
    ):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b))
    assert torch.autograd.gradcheck(run(fn), (x, *params)) and torch.autograd.gradgradcheck(run(fn), (x, *params))
    source = member["SOURCE"]
    backward = source[source.index("def backward", source.index("class GatedHeadFunction")) :]
    assert "if ctx.proj_bias_shape is not None:" in backward  # the side forward took, kept on ctx


def test_a_condition_on_a_required_member_stays_a_located_error():
    text = MEMBER.replace("if proj.bias != none {", "if proj.weight != none {").replace("sigmoid(proj.bias)", "2.0")
    spec = parse_file("member.layer", text)
    check_program([spec])
    _, problems = plan_backwards([spec])
    assert [(p.span.line, p.span.col) for p in problems] == [(24, 12)]
    assert "this condition reads a tensor" in problems[0].message


def test_reverse_mode_reports_every_problem_once():
    text = (
        '@function\nlayer Twice() {\n    """Two problems."""\n    example()\n\n    forward(x: [B, 8], y: [B, 8]) {\n'
        "        a = abs(fft(x))\n        b = abs(fft(y))\n        return a + b + abs(fft(x))\n    }\n}\n"
    )
    spec = parse_file("twice.layer", text)
    check_program([spec])
    _, problems = plan_backwards([spec])
    assert sorted((p.span.line, p.span.col) for p in problems) == [(7, 13), (8, 13)]
    assert all("abs() of a complex value" in p.message for p in problems)
