"""A condition as numbers, used as a factor (`x * where(c, 1.0, 0.0)`, `x * where(c, 1, 0)`): the Function
saves the bool condition, as relu's and clamp's masks, not the float or int64 tensor (issue 15: ¼ of the
bytes for float32, ⅛ for float64 and int64), and its backward multiplies by the bool (`grad * mask`, the
same product); a costly value the condition reads (`x @ w > 0`), returned for the mask, gets no
double-backward section (no gradient passes a bool), so what that section read is not saved either;
gradients, double backward and vmap stay right."""

from __future__ import annotations

import pytest
import torch

from .support import saved_bytes
from .test_saving import _compile, _saved, vmapped_input_grads_agree

BOOL_8x4 = [(torch.bool, (8, 4))]


@pytest.mark.parametrize(
    "body",
    [
        "x * where(x > b, 1.0, 0.0)",  # was the float64 tensor (256 bytes)
        "x * where(x > b, 1, 0)",  # was the int64 tensor (256 bytes)
        "where(x > b, 1.0, 0.0) * x",  # the indicator first
    ],
)
def test_an_indicator_factor_saves_its_bool_condition(body):
    assert _saved(body) == BOOL_8x4  # (_saved checks the gradients against autograd's)
    _gradients_double_backward_and_vmap(body)


def test_the_minimal_bytes_against_autograd_and_the_gradient_dtype():
    _, ns = _compile("x * where(x > b, 1.0, 0.0)")
    torch.manual_seed(0)
    layer = ns["Probe"](4)
    x = torch.randn(8, 4, requires_grad=True)
    ours = saved_bytes(lambda: layer(x), layer)
    assert ours == 8 * 4  # the bool condition alone, one byte an element
    assert ours * 4 == saved_bytes(lambda: ns["probe"](x, layer.w, layer.b), layer)  # autograd: the float32
    (g,) = torch.autograd.grad(layer(x).sum(), x)
    assert g.dtype == torch.float32 and torch.equal(g, (x > layer.b).float())


@pytest.mark.parametrize("body", ["x * where(x @ w > 0, 1.0, 0.0)", "x * (x @ w > 0)"])
def test_a_condition_on_a_costly_value_saves_the_bool_alone(body):
    # the matmul is returned for the mask (as clamp(x @ w)'s), and only for it: no gradient reaches it through
    # a bool, so x is not saved for a double-backward section of its own (was: x and the float, or x and the bool)
    assert _saved(body) == BOOL_8x4
    _gradients_double_backward_and_vmap(body)


def _gradients_double_backward_and_vmap(body: str) -> None:
    _, ns = _compile(body)
    torch.manual_seed(0)
    layer = ns["Probe"](4, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)

    def fn(x, w, b):  # the module's call of its Function (which returns the matmul too when it is costly)
        return torch.func.functional_call(layer, {"w": w, "b": b}, (x,))

    assert torch.autograd.gradcheck(fn, (x, layer.w, layer.b))
    assert torch.autograd.gradgradcheck(fn, (x, layer.w, layer.b))
    vmapped_input_grads_agree(fn, ns["probe"], layer, torch.equal)
