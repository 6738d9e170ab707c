"""Derived backwards through the norms and the losses (layer_norm, rms_norm, group_norm, local_response_norm,
cross_entropy with class indices or probabilities, nll_loss, the margin losses, ctc_loss, gaussian_nll_loss):
for one spec per op and option family, the Function against plain autograd (first and, where torch has it,
second derivatives), gradcheck and gradgradcheck, and torch.func.vmap of torch.func.grad and jacrev."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from layerdsl.codegen.module import emit_file
from layerdsl.driver.cli import main
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .support import compile_spec

SPEC = """
@function
layer Probe(c: int) {{
    {members}
    example(c = 4)

    forward({inputs}) {{
        return {body}
    }}
}}
"""

B, C, L = 3, 4, 5
WEIGHT = "buffer w: [c] = uniform(0.5, 1.5)"
AFFINE = "param weight: [c] = uniform(0.5, 1.5)\n    param bias: [c] = uniform(-0.5, 0.5)"


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


def _classes(*shape: int) -> torch.Tensor:
    return torch.randint(0, C, shape)


def _with_ignored(*shape: int) -> torch.Tensor:
    t = _classes(*shape)
    t.view(-1)[0] = 1  # the ignore_index below: one target ignored
    return t


def _multilabel() -> torch.Tensor:
    t = torch.full((B, C), -1)
    t[0, :2] = torch.tensor([3, 0])
    t[1, :1] = 2
    t[2, :3] = torch.tensor([1, 2, 3])
    return t


@dataclass(frozen=True)
class Family:
    members: str
    inputs: str
    body: str
    make: Callable[[], list[torch.Tensor]]  # the forward's inputs: float ones are differentiated
    second_order: bool = True  # torch differentiates its own backward (not multi_margin, ctc, ...)


FAMILIES = {
    "layer_norm": Family(AFFINE, "x: [B, c]", "layer_norm(x, [c], weight, bias, 1e-5)", lambda: [_randn(B, C)]),
    "layer_norm_two_dims": Family(
        "", "x: [B, c, c]", "layer_norm(x * 2, [c, c], eps = 1e-3)", lambda: [_randn(B, C, C)]
    ),
    "rms_norm": Family(
        "param weight: [c] = uniform(0.5, 1.5)", "x: [B, c]", "rms_norm(x, [c], weight)", lambda: [_randn(B, C)]
    ),
    "rms_norm_eps": Family("", "x: [B, L, c]", "rms_norm(tanh(x), [c], eps = 0.1)", lambda: [_randn(B, L, C)]),
    "group_norm": Family(AFFINE, "x: [B, c, L]", "group_norm(x, 2, weight, bias)", lambda: [_randn(B, C, L)]),
    "local_response_norm": Family(
        "", "x: [B, c, L, L]", "local_response_norm(x, 3, alpha = 0.5)", lambda: [_randn(B, C, L, L)]
    ),
    "cross_entropy": Family(
        WEIGHT,
        "x: [B, c], t: long[B]",
        "cross_entropy(x, t, w, ignore_index = 1, label_smoothing = 0.1)",
        lambda: [_randn(B, C), _with_ignored(B)],
    ),
    "cross_entropy_plain": Family(
        "", "x: [B, c], t: long[B]", "cross_entropy(x * x, t)", lambda: [_randn(B, C), _classes(B)]
    ),
    "cross_entropy_k_dim": Family(
        WEIGHT,
        "x: [B, c, L], t: long[B, L]",
        'cross_entropy(x, t, w, reduction = "none", label_smoothing = 0.2)',
        lambda: [_randn(B, C, L), _classes(B, L)],
    ),
    "cross_entropy_sum": Family(
        "",
        "x: [B, c], t: long[B]",
        'cross_entropy(x, t, ignore_index = 1, reduction = "sum")',
        lambda: [_randn(B, C), _with_ignored(B)],
    ),
    "cross_entropy_probabilities": Family(
        WEIGHT,
        "x: [B, c], p: [B, c]",
        "cross_entropy(x, softmax(p, 1), w, label_smoothing = 0.2)",
        lambda: [_randn(B, C), _randn(B, C)],
    ),
    "nll_loss": Family(
        WEIGHT,
        "x: [B, c, L], t: long[B, L]",
        'nll_loss(log_softmax(x, 1), t, w, ignore_index = 1, reduction = "sum")',
        lambda: [_randn(B, C, L), _with_ignored(B, L)],
    ),
    "nll_loss_mean": Family("", "x: [B, c], t: long[B]", "nll_loss(x * 2, t)", lambda: [_randn(B, C), _classes(B)]),
    "multi_margin_loss": Family(
        WEIGHT,
        "x: [B, c], t: long[B]",
        "multi_margin_loss(x, t, 2, 0.5, w)",
        lambda: [_randn(B, C), _classes(B)],
        second_order=False,
    ),
    "multilabel_margin_loss": Family(
        "",
        "x: [B, c], t: long[B, c]",
        'multilabel_margin_loss(x, t, "sum")',
        lambda: [_randn(B, C), _multilabel()],
        second_order=False,
    ),
    "multilabel_soft_margin_loss": Family(
        "param w: [c] = uniform(0.5, 1.5)",
        "x: [B, c], y: [B, c]",
        'multilabel_soft_margin_loss(x, sigmoid(y), w, reduction = "none")',
        lambda: [_randn(B, C), _randn(B, C)],
    ),
    "ctc_loss": Family(
        "",
        "x: [L, B, c], targets: long[B, 2], lengths: long[B], target_lengths: long[B]",
        "ctc_loss(log_softmax(x, 2), targets, lengths, target_lengths)",
        lambda: [
            _randn(L, B, C),
            torch.randint(1, C, (B, 2)),
            torch.tensor([L, L - 1, L]),
            torch.tensor([2, 1, 2]),
        ],
        second_order=False,
    ),
    "gaussian_nll_loss": Family(
        "",
        "x: [B, c], t: [B, c], v: [B]",
        "gaussian_nll_loss(x, t, v * v + 0.5, full = true)",
        lambda: [_randn(B, C), _randn(B, C), _randn(B)],
    ),
}


def _compile(family: Family) -> dict:
    text = SPEC.format(members=family.members, inputs=family.inputs, body=family.body)
    return compile_spec(text, "probe")


@dataclass
class Built:
    apply: Callable  # the Function, over the differentiable inputs and parameters
    plain: Callable  # the functional form (autograd), over the same
    diff: list[torch.Tensor]  # the differentiable inputs and parameters, requiring grad
    second_order: bool


@pytest.fixture(params=sorted(FAMILIES), name="built")
def _built(request) -> Built:
    family = FAMILIES[request.param]
    ns = _compile(family)
    torch.manual_seed(0)
    layer = ns["Probe"](C, dtype=torch.float64)
    inputs = family.make()
    params = [t.detach() for t in layer.parameters()]
    leaves = inputs + params + list(layer.buffers())  # no spec here declares a buffer before a parameter
    floating = [k for k, t in enumerate(inputs) if t.is_floating_point()]
    floating += range(len(inputs), len(inputs) + len(params))
    forward = inspect.signature(ns["ProbeFunction"].forward).parameters
    numbers = [C] * (len(forward) - len(leaves))  # `c` (the only argument)
    keywords = {"c": C} if "c" in inspect.signature(ns["probe"]).parameters else {}

    def with_diff(diff):
        full = list(leaves)
        for k, t in zip(floating, diff):
            full[k] = t
        return full

    def apply(*diff):
        y = ns["ProbeFunction"].apply(*with_diff(diff), *numbers)
        return y[0] if isinstance(y, tuple) else y  # costly intermediates come after the output

    def plain(*diff):
        return ns["probe"](*with_diff(diff), **keywords)

    diff = [leaves[k].clone().requires_grad_() for k in floating]
    return Built(apply, plain, diff, family.second_order)


def test_derived_backward_matches_autograd(built):
    got, want = built.apply(*built.diff), built.plain(*built.diff)
    assert torch.allclose(got, want)
    seed = torch.randn_like(want)
    firsts = torch.autograd.grad(got, built.diff, seed, create_graph=built.second_order)
    refs = torch.autograd.grad(want, built.diff, seed, create_graph=built.second_order)
    for a, b in zip(firsts, refs):
        assert torch.allclose(a, b)
        if not built.second_order or not b.requires_grad:
            continue
        v = torch.randn_like(a)
        ref = torch.autograd.grad((b * v).sum(), built.diff, allow_unused=True, retain_graph=True)
        if not a.requires_grad:  # a gradient that does not depend on them (a bias's, a linear loss's)
            assert all(r is None or r.abs().max() == 0 for r in ref)
            continue
        second = torch.autograd.grad((a * v).sum(), built.diff, allow_unused=True, retain_graph=True)
        for s, r in zip(second, ref):
            assert (s is None and (r is None or r.abs().max() == 0)) or torch.allclose(s, r)


def test_gradcheck_and_gradgradcheck(built):
    assert torch.autograd.gradcheck(built.apply, tuple(built.diff))
    if built.second_order:
        assert torch.autograd.gradgradcheck(built.apply, tuple(built.diff))


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
def test_vmap_of_grad_and_jacrev(built):
    first = built.diff[0].detach()
    rest = [t.detach() for t in built.diff[1:]]
    xs = torch.stack([first + 0.1 * k for k in range(2)])

    def loss(f):
        return lambda t: f(t, *rest).square().sum()

    batched = torch.func.vmap(torch.func.grad(loss(built.apply)))(xs)
    want = torch.func.vmap(torch.func.grad(loss(built.plain)))(xs)
    assert torch.allclose(batched, want)
    jac = torch.func.jacrev(lambda t: built.apply(t, *rest))(first)
    ref = torch.func.jacrev(lambda t: built.plain(t, *rest))(first)
    assert torch.allclose(jac, ref)


@pytest.mark.parametrize(
    ("call", "shape"),
    [
        ('cross_entropy(x, t, reduction = "none")', ("B", "L")),
        ("cross_entropy(x, t)", ()),
        ('nll_loss(x, t, reduction = "sum")', ()),
        ('multi_margin_loss(s, u, reduction = "none")', ("B",)),
        ('multilabel_soft_margin_loss(s, s, reduction = "none")', ("B",)),
        ('gaussian_nll_loss(s, s, s * s, reduction = "none")', ("B", "c")),
        ('ctc_loss(log_softmax(x, 2), t, u, u, reduction = "none")', ("c",)),
        ("layer_norm(x, [L])", ("B", "c", "L")),
    ],
)
def test_loss_shapes_follow_the_reduction(call, shape):
    text = SPEC.format(members="", inputs="x: [B, c, L], t: long[B, L], s: [B, c], u: long[B]", body=call)
    program = check_program([parse_file("probe.layer", text)])
    assert program.shapes["Probe"].bindings[-1].shape == shape


def test_a_class_weight_that_needs_a_gradient_is_named(tmp_path, capsys):
    """torch has no derivative for cross_entropy's class weight either: the error says which operand."""
    spec = tmp_path / "bad.layer"
    spec.write_text(
        SPEC.format(members="param w: [c] = ones", inputs="x: [B, c], t: long[B]", body="cross_entropy(x, t, w)")
    )
    assert main(["check", str(spec)]) == 1
    assert "cross_entropy() has no derivative with respect to 'weight'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("family", "forward_call", "not_in_backward"),
    [
        ("layer_norm", "torch.native_layer_norm(", ("native_layer_norm(", "F.layer_norm(")),
        ("layer_norm_two_dims", "torch.native_layer_norm(", ("native_layer_norm(", "F.layer_norm(")),
        ("group_norm", "torch.native_group_norm(", ("native_layer_norm(x.detach()", "native_group_norm(")),
        ("cross_entropy_plain", "torch.log_softmax(", ("log_softmax(",)),
        ("cross_entropy_probabilities", "torch.log_softmax(", ("log_softmax(",)),
    ],
)
def test_statistics_are_computed_by_the_forward_and_read_saved(family, forward_call, not_in_backward):
    """The forward's kernel returns the statistics with the result (`out, mean, rstd = ...`) and the
    backward reads them saved: it recomputes no statistic (layer norm's mean and rstd, the log-softmax)."""
    f = FAMILIES[family]
    text = SPEC.format(members=f.members, inputs=f.inputs, body=f.body)
    spec = parse_file("probe.layer", text)
    source = emit_file(spec, check_program([spec]), "probe.layer", {})
    function = source.split("class ProbeFunction")[1]
    forward, backward = function.split("def setup_context")[0], function.split("def backward")[1]
    assert forward.count(forward_call) == 1
    assert not [call for call in not_in_backward if call in backward.split("def apply")[0]]


JOINT = {
    "layer_norm": ("native_layer_norm_backward(", AFFINE, "x: [B, c]", "layer_norm(x, [c], weight, bias)", (B, C)),
    "conv_transpose": (
        "convolution_backward(",
        "param weight: [c, c, 2] = uniform(-0.5, 0.5)\n    param bias: [c] = uniform(-0.5, 0.5)",
        "x: [B, c, L]",
        "conv_transpose1d(x, weight, bias, stride = 2, padding = 1)",
        (B, C, L),
    ),
}


@pytest.mark.parametrize("op", sorted(JOINT))
@pytest.mark.parametrize("frozen", [(), ("x",), ("weight", "bias"), ("x", "bias")])
def test_one_kernel_call_gives_the_gradients_asked_for(op, frozen):
    """Layer norm's and a transposed convolution's gradients come from one ATen call whose output_mask asks
    for those needed: right whichever operands are frozen."""
    kernel, members, inputs, body, shape = JOINT[op]
    text = SPEC.format(members=members, inputs=inputs, body=body)
    spec = parse_file("probe.layer", text)
    source = emit_file(spec, check_program([spec]), "probe.layer", {})
    assert source.split("def backward")[1].split("def apply")[0].count(kernel) == 1
    ns = compile_spec(text, "probe")
    torch.manual_seed(0)
    layer = ns["Probe"](C, dtype=torch.float64)
    x = _randn(*shape).requires_grad_("x" not in frozen)
    for name in frozen:
        if name != "x":
            getattr(layer, name).requires_grad_(False)
    leaves = [t for t in (x, layer.weight, layer.bias) if t.requires_grad]
    got = torch.autograd.grad(layer(x).square().sum(), leaves)
    keywords = {"c": C} if "c" in inspect.signature(ns["probe"]).parameters else {}
    want = torch.autograd.grad(ns["probe"](x, layer.weight, layer.bias, **keywords).square().sum(), leaves)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
