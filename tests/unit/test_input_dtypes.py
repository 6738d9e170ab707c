"""The input dtypes the generated forward checks (docs/language.md, Dtypes): a `float` input must be a
floating-point tensor, a `bool` input a bool tensor unless forward handles a float mask itself."""

from __future__ import annotations

import pytest
import torch

from ..support import compile_spec

MASKED = """layer MaskedFill(n: int) {
    example(n = 3)

    forward(x: [B, n], mask: bool[B, n]) -> [B, n] {
        return where(mask, 0.0, x)
    }
}

layer MaskOfEitherDtype(n: int) {
    example(n = 3)

    forward(x: [B, n], mask: bool[B, n]) -> [B, n] {
        m = mask
        if is_floating_point(m) {
            return x + m
        }
        return where(m, 0.0, x)
    }
}
"""


@pytest.fixture(scope="module")
def layers():
    return compile_spec(MASKED, "masked")


def test_a_bool_input_must_be_a_bool_tensor(layers):
    layer, x = layers["MaskedFill"](3), torch.randn(2, 3)
    assert torch.equal(layer(x, torch.ones(2, 3, dtype=torch.bool)), torch.zeros(2, 3))
    for wrong in (torch.ones(2, 3), torch.ones(2, 3, dtype=torch.long)):
        with pytest.raises(
            TypeError, match=r"MaskedFill: input 'mask' must be a bool tensor, got torch\.(float32|int64)"
        ):
            layer(x, wrong)


def test_a_bool_input_that_forward_asks_is_floating_point_of_takes_a_float_mask(layers):
    layer, x = layers["MaskOfEitherDtype"](3), torch.randn(2, 3)
    assert torch.equal(layer(x, torch.ones(2, 3)), x + 1)
    assert torch.equal(layer(x, torch.ones(2, 3, dtype=torch.bool)), torch.zeros(2, 3))


def test_a_float_input_must_be_floating_point(layers):
    with pytest.raises(TypeError, match="MaskedFill: input 'x' must be a floating-point tensor, got torch.int64"):
        layers["MaskedFill"](3)(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool))
