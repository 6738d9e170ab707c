"""torch.nn's LinearCrossEntropyLoss (specs/torch_nn/loss.layer) under `@function`: its weight is
`reshape(linear.weight, [num_classes, *out_features, in_features])`, of a rank known only at construction.
The derived Function is compared with the plain module and with torch's `linear_cross_entropy` in float64
(outputs, first and second derivatives, gradcheck and gradgradcheck) over every configuration: K = 0, 1, 2
dims `out_features`, bias on and off, each reduction, a class weight given or not, `ignore_index` and
`label_smoothing`; and it saves what a hand-written Function saves."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import pytest
import torch

from .support import compile_spec

SPECS = Path(__file__).parent.parent / "specs" / "torch_nn"
CLASSES, FEATURES, BATCH = 3, 4, 5


def _spec(function: bool) -> str:
    """torch.nn's Linear and LinearCrossEntropyLoss, as shipped; the loss `@function` when asked."""
    loss = (SPECS / "loss.layer").read_text()
    start = loss.index("layer LinearCrossEntropyLoss(")
    end = re.compile(r"^(@\w+\n)*layer ", re.M).search(loss, start + 1)
    block = loss[start : end.start() if end else len(loss)]
    return (SPECS / "linear.layer").read_text() + "\n" + ("@function\n" if function else "") + block


@pytest.fixture(scope="module")
def generated() -> dict:
    return compile_spec(_spec(function=True), "lce_function")


@pytest.fixture(scope="module")
def plain() -> dict:
    return compile_spec(_spec(function=False), "lce_plain")


CONFIGURATIONS = list(
    itertools.product(
        [(), (2,), (2, 3)],  # out_features
        [False, True],  # bias
        ["none", "mean", "sum"],  # reduction
        [False, True],  # a class weight
        [None, 1],  # ignore_index
        [0.0, 0.1],  # label_smoothing
    )
)


def _build(ns: dict, out_features, bias, reduction, weighted, ignore_index, smoothing, seed: int = 0):
    torch.manual_seed(seed)
    weight = torch.rand(CLASSES, dtype=torch.float64) + 0.5 if weighted else None
    layer = ns["LinearCrossEntropyLoss"](
        FEATURES, CLASSES, out_features, bias, reduction, weight, ignore_index, smoothing, dtype=torch.float64
    )
    x = torch.randn(BATCH, FEATURES, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, CLASSES, (BATCH, *out_features))
    return layer, x, target


def _parameters(layer) -> list[torch.Tensor]:
    return [layer.linear.weight] + ([layer.linear.bias] if layer.linear.bias is not None else [])


@pytest.mark.parametrize("out_features, bias, reduction, weighted, ignore_index, smoothing", CONFIGURATIONS)
def test_agrees_with_the_plain_module_and_torch(
    generated, plain, out_features, bias, reduction, weighted, ignore_index, smoothing
):
    config = (out_features, bias, reduction, weighted, ignore_index, smoothing)
    layer, x, target = _build(generated, *config)
    reference, _, _ = _build(plain, *config)
    reference.load_state_dict(layer.state_dict())
    got = layer(x, target)
    assert "LinearCrossEntropyLossFunction" in type(got.grad_fn).__name__
    want = reference(x, target)
    linear = layer.linear
    torch_loss = torch.nn.functional.linear_cross_entropy(
        x,
        linear.weight.reshape(CLASSES, *out_features, FEATURES),
        target,
        linear_bias=None if linear.bias is None else linear.bias.reshape(CLASSES, *out_features),
        weight=layer.weight,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=smoothing,
    )
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got, torch_loss)
    inputs = [x, *_parameters(layer)]
    upstream = torch.randn_like(got)
    first = torch.autograd.grad(got, inputs, upstream, create_graph=True)
    expected = torch.autograd.grad(want, [x, *_parameters(reference)], upstream, create_graph=True)
    for g, e in zip(first, expected):
        torch.testing.assert_close(g, e)
    # second derivatives: of a random projection of the first ones
    probes = [torch.randn_like(g) for g in first]
    second = torch.autograd.grad(sum((g * p).sum() for g, p in zip(first, probes)), inputs)
    second_expected = torch.autograd.grad(
        sum((g * p).sum() for g, p in zip(expected, probes)), [x, *_parameters(reference)]
    )
    for g, e in zip(second, second_expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize(
    "out_features, bias, reduction", list(itertools.product([(), (2,), (2, 3)], [False, True], ["none", "mean", "sum"]))
)
def test_gradcheck_and_gradgradcheck(generated, out_features, bias, reduction):
    weighted, ignore_index, smoothing = bias, 1 if reduction != "sum" else None, 0.1 if bias else 0.0
    layer, x, target = _build(generated, out_features, bias, reduction, weighted, ignore_index, smoothing)
    function = generated["LinearCrossEntropyLossFunction"]
    args = (FEATURES, CLASSES, out_features, reduction, layer.weight, ignore_index, smoothing, None)

    def loss(x, w, *b):
        return function.apply(x, target, w, b[0] if b else None, *args)[0]

    inputs = [x, *_parameters(layer)]
    assert torch.autograd.gradcheck(loss, inputs)
    assert torch.autograd.gradgradcheck(loss, inputs)


def test_one_sample_without_out_features(generated):
    layer, _, _ = _build(generated, (), True, "mean", False, None, 0.0)
    x = torch.randn(FEATURES, dtype=torch.float64, requires_grad=True)
    target = torch.tensor(2)
    got = layer(x, target)
    want = torch.nn.functional.linear_cross_entropy(x, layer.linear.weight, target, linear_bias=layer.linear.bias)
    torch.testing.assert_close(got, want)
    grads = torch.autograd.grad(got, [x, *_parameters(layer)])
    expected = torch.autograd.grad(want, [x, *_parameters(layer)])
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("out_features", [(), (2, 3)])
def test_saves_what_a_hand_written_function_saves(generated, out_features):
    """The input, the weight as the module holds it, the log-probabilities and the target: no logits, no
    copy of the weight, no shape of the logits."""
    layer, x, target = _build(generated, out_features, True, "mean", False, None, 0.0)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x, target)
    shapes = sorted(tuple(t.shape) for t in saved)
    expected = [(BATCH, *out_features), (BATCH, CLASSES, *out_features), (BATCH, FEATURES)]
    expected.append((CLASSES * math.prod(out_features), FEATURES))
    assert shapes == sorted(expected)
    assert any(t.data_ptr() == layer.linear.weight.data_ptr() for t in saved)  # the weight itself, not a copy
