"""A `@function` forward takes `mean(x * x, ...)` as a norm (`optimize.fusion.mean_of_squares_as_norm`): no
full-size `x * x` temporary, the same values and gradients as plain autograd."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

SPEC = """
@function
layer Probe(n: int) {{
    param w: [n] = uniform(0.5, 1.5)
    example(n = 4)

    forward(x: [B, C, n]) -> [B, C, n] {{
        return x * rsqrt({reduced} + 1e-3) * w
    }}
}}
"""


def _compile(reduced: str) -> tuple[str, dict]:
    spec = parse_file("probe.layer", SPEC.format(reduced=reduced))
    source = emit_file(spec, check_program([spec]), "probe.layer", {})
    namespace: dict = {}
    exec(compile(source, "probe.py", "exec"), namespace)
    return source, namespace


class _Muls(TorchDispatchMode):
    """The shapes of the operands of each `mul` whose two operands are one tensor (`x * x`)."""

    def __init__(self) -> None:
        super().__init__()
        self.squares: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in ("mul", "mul_") and len(args) == 2 and args[0] is args[1]:
            self.squares.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


REDUCED = [
    "mean(x * x, dim = -1, keepdim = true)",
    "mean(x ** 2, dim = -1, keepdim = true)",
    "mean(x * x, dim = [1, 2], keepdim = true)",
    "mean(x * x)",
]


@pytest.mark.parametrize("reduced", REDUCED)
def test_forward_squares_no_full_size_temporary_and_agrees_with_autograd(reduced):
    _, ns = _compile(reduced)
    torch.manual_seed(0)
    fn, plain = ns["Probe"](4, dtype=torch.float64), ns["probe"]
    x = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    with _Muls() as muls, torch.no_grad():
        y = fn(x)
    assert muls.squares == []  # the norm kernel squares as it sums
    x_ref = x.detach().clone().requires_grad_()
    expected = plain(x_ref, fn.w)
    torch.testing.assert_close(y, expected)
    g = torch.randn_like(y)
    got = torch.autograd.grad(fn(x), [x, fn.w], g)
    want = torch.autograd.grad(plain(x_ref, fn.w), [x_ref, fn.w], g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda x, w: ns["ProbeFunction"].apply(x, w)[0], (x, fn.w))
    with warnings.catch_warnings():  # every op has a batching rule (`square_` has none: a slow fallback)
        warnings.simplefilter("error")
        batched = torch.func.vmap(fn)(torch.stack([x.detach(), 2 * x.detach()]))
        torch.testing.assert_close(batched[0], expected.detach())


def test_a_mean_of_two_different_factors_is_left_as_written():
    source, _ = _compile("mean(x * (x + 1), dim = -1, keepdim = true)")
    forward = source.split("def forward(x: Tensor, w: Tensor)")[1].split("def setup_context")[0]
    assert "vector_norm" not in forward and "torch.mean(" in forward


def test_the_norm_divides_by_the_sizes_reduced():
    source, _ = _compile("mean(x * x, dim = [1, 2], keepdim = true)")
    assert ".div_(x.shape[1] * x.shape[2])" in source
