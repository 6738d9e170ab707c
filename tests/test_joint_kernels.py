"""A kernel that gives several gradients at once (ATen's `native_layer_norm_backward`) runs once per
backward of the norm, in straight code and in each step of a loop, also where the input's gradient is a
sum (a residual connection): the passes of `optimize` run on a loop step's statements, and a joint
kernel's result is taken out of a sum to join its siblings (`optimize.joint`). Counted as ATen calls under
a TorchDispatchMode; the results against the plain module in float64, with gradcheck and gradgradcheck."""

from __future__ import annotations

import functools
from collections import Counter

import pytest
import torch

from .function_agreement import compare_with_plain
from .support import AtenCalls, compile_spec

LOOP = """
@function
layer NormSteps(d: int, n: int = 3) {
    for k in range(n) {
        param gain_l{k}: [d] = uniform(0.5, 1.5)
        param shift_l{k}: [d] = uniform(-0.5, 0.5)
    }
    example(d = 8)
    forward(x: [B, d]) -> [B, d] {
        h = x
        for k in range(n) {
            h = tanh(layer_norm(h, [d], gain_l{k}, shift_l{k}, 1e-5)) + h
        }
        return h
    }
}
"""

STRAIGHT = """
@function
layer NormOnce(d: int) {
    param gain: [d] = uniform(0.5, 1.5)
    param shift: [d] = uniform(-0.5, 0.5)
    example(d = 8)
    forward(x: [B, d]) -> [B, d] {
        return tanh(layer_norm(x, [d], gain, shift, 1e-5)) + x
    }
}
"""


@functools.cache
def _compiled(text: str, stem: str) -> dict:
    return compile_spec(text, stem)


def _backward_calls(module: torch.nn.Module, x: torch.Tensor) -> Counter[str]:
    out = module(x)
    seed = torch.randn_like(out)
    with AtenCalls() as counted:
        torch.autograd.backward(out, seed)
    return counted.calls


@pytest.mark.parametrize(
    ("text", "stem", "name", "kwargs", "runs"),
    [
        (LOOP, "norm_steps", "NormSteps", {"d": 8, "n": 3}, 3),
        (LOOP, "norm_steps", "NormSteps", {"d": 8, "n": 1}, 1),
        (STRAIGHT, "norm_once", "NormOnce", {"d": 8}, 1),
    ],
    ids=["loop_of_3", "loop_of_1", "straight"],
)
def test_the_layer_norm_kernel_runs_once_per_norm_in_backward(text, stem, name, kwargs, runs):
    module = _compiled(text, stem)[name](**kwargs)
    x = torch.randn(5, 8, requires_grad=True)
    calls = _backward_calls(module, x)
    assert calls["native_layer_norm_backward"] == runs
    assert all(p.grad is not None for p in module.parameters())


def test_a_parameter_not_asked_for_is_not_computed_by_the_joint_kernel():
    module = _compiled(LOOP, "norm_steps")["NormSteps"](d=8, n=2)
    shifts = [p for n, p in module.named_parameters() if n.startswith("shift_l")]
    gains = [p for n, p in module.named_parameters() if n.startswith("gain_l")]
    for p in shifts:
        p.requires_grad_(False)
    x = torch.randn(5, 8, requires_grad=True)
    calls = _backward_calls(module, x)
    assert calls["native_layer_norm_backward"] == 2
    assert len(shifts) == len(gains) == 2
    assert all(p.grad is None for p in shifts) and all(p.grad is not None for p in gains)


@pytest.mark.parametrize(
    ("text", "stem", "name", "kwargs"),
    [
        (LOOP, "norm_steps", "NormSteps", {"d": 4, "n": 3}),
        (LOOP, "norm_steps", "NormSteps", {"d": 4, "n": 0}),
        (STRAIGHT, "norm_once", "NormOnce", {"d": 4}),
    ],
    ids=["loop_of_3", "loop_of_0", "straight"],
)
def test_joined_gradients_agree_with_the_plain_module(text, stem, name, kwargs):
    ours = _compiled(text, stem)[name]
    plain = _compiled(text.replace("@function\n", ""), f"{stem}_plain")[name]
    torch.manual_seed(0)
    a = ours(**kwargs).double()
    b = plain(**kwargs).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)
