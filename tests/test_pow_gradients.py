"""The derived gradients of `x ** y` are torch's at every corner torch defines (a zero base with a zero, a
positive and a negative exponent; a negative base with an integer exponent), first and second order, for a
tensor, a literal and an argument on either side, and `pow(x, y)`: float64, against autograd on the plain
module. language/ops.py (the pow row: torch's pow_backward_self/_exponent) and autodiff/reverse.py (a
`where` a number operand decides is a side or a Python conditional)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.support import compile_spec

SPEC = """\
@function
layer Power(d: int, p: float = 2.0, a: float = 2.0) {
    example(d = 3)
    forward(x: [B, d], y: [B, d]) -> [B, d] {
        return EXPR
    }
}
"""

BASES = [0.0, -2.0, 1.5, -1.5]
EXPONENTS = [0.0, 2.0, -1.0, 0.5, -0.5, 3.0, 1.0]

CASES = [
    ("x ** y", {}),
    ("pow(x, y)", {}),
    ("x ** 2", {}),
    ("x ** 0.5", {}),
    ("x ** 0", {}),
    ("x ** -1", {}),
    ("2.0 ** y", {}),
    ("x ** p", {"p": 0.0}),
    ("x ** p", {"p": 3.0}),
    ("x ** p", {"p": 0.5}),
    ("a ** y", {"a": 2.0}),
    ("x ** y * a ** y", {"a": 0.5}),
]


def _pair(expr: str, args: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The layer returning `expr` with `@function` and plain (autograd's), float64."""
    text = SPEC.replace("EXPR", expr)
    ours = compile_spec(text, "power_0")["Power"](len(BASES) * len(EXPONENTS), **args)
    plain = compile_spec(text.replace("@function\n", ""), "power_1")["Power"](len(BASES) * len(EXPONENTS), **args)
    return ours.double(), plain.double()


def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    """Every base against every exponent, side by side in one row."""
    x = torch.tensor(BASES, dtype=torch.float64).repeat_interleave(len(EXPONENTS))[None]
    y = torch.tensor(EXPONENTS, dtype=torch.float64).repeat(len(BASES))[None]
    return x.requires_grad_(), y.requires_grad_()


def _derivatives(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The output, its gradients with respect to x and y, and the gradients of those (zeros where none)."""
    out = module(x, y)
    weights = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).reshape(out.shape)
    firsts = torch.autograd.grad((out * weights).sum(), [x, y], create_graph=True, allow_unused=True)
    firsts = [torch.zeros_like(x) if g is None else g for g in firsts]
    seconds = []
    for g in firsts:
        if g.requires_grad:
            seconds += torch.autograd.grad(g.sum(), [x, y], retain_graph=True, allow_unused=True)
        else:
            seconds += [None, None]
    return [out, *firsts, *[torch.zeros_like(x) if g is None else g for g in seconds]]


@pytest.mark.parametrize(("expr", "args"), CASES, ids=[f"{e} {a}" for e, a in CASES])
def test_the_power_derives_torchs_gradients_at_every_corner(expr, args):
    ours, plain = _pair(expr, args)
    names = ["output", "d/dx", "d/dy", "d/dx d/dx", "d/dy d/dx", "d/dx d/dy", "d/dy d/dy"]
    for name, got, want in zip(names, _derivatives(ours, *_grid()), _derivatives(plain, *_grid()), strict=True):
        torch.testing.assert_close(got, want, equal_nan=True, msg=lambda m, name=name: f"{expr} {name}: {m}")


@pytest.mark.parametrize("expr", ["x ** y", "x ** 2", "x ** p", "a ** y", "pow(x, y)"])
def test_the_powers_second_derivative_passes_gradgradcheck_where_finite(expr):
    ours, _ = _pair(expr, {"p": 1.5, "a": 0.7})
    torch.manual_seed(0)
    x = (torch.rand(1, len(BASES) * len(EXPONENTS), dtype=torch.float64) + 0.5).requires_grad_()
    y = (torch.rand(1, len(BASES) * len(EXPONENTS), dtype=torch.float64) * 4 - 2).requires_grad_()
    assert torch.autograd.gradcheck(ours, (x, y))
    assert torch.autograd.gradgradcheck(ours, (x, y))


@pytest.mark.parametrize(
    ("expr", "args"),
    [
        ("0.0 ** y", {}),
        ("a ** y", {"a": 0.0}),
        ("a ** y", {"a": -0.0}),
        ("a ** y", {"a": -2.0}),
        ("a ** y", {"a": math.inf}),
        ("a ** y", {"a": -math.inf}),
        ("x ** y * a ** y", {"a": 0.0}),
    ],
    ids=["literal 0", "argument 0", "argument -0", "argument -2", "argument inf", "argument -inf", "product 0"],
)
def test_a_number_base_derives_torchs_gradients_at_its_corners(expr, args):
    """The exponent's gradient reads log(base): a number's at 0 is -inf (masked where the exponent is >= 0),
    below 0 nan, as torch's pow backward gives them."""
    ours, plain = _pair(expr, args)
    for got, want in zip(_derivatives(ours, *_grid()), _derivatives(plain, *_grid()), strict=True):
        torch.testing.assert_close(got, want, equal_nan=True)


LOG = """\
layer NumberLog(a: float) {
    example(a = 2.0)
    forward(x: [n]) -> [n] {
        return x * log(a)
    }
}
"""


@pytest.mark.parametrize("a", [0.0, -0.0, -1.0, math.inf, -math.inf, math.nan, 1e-300, 2.0])
def test_the_log_of_a_number_is_torchs(a):
    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    got = compile_spec(LOG, "number_log")["NumberLog"](a)(x)
    torch.testing.assert_close(got, x * torch.log(torch.tensor(a, dtype=torch.float64)), equal_nan=True)
