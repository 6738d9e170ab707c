"""A `@function` layer with no parameter of its own (a sub, a list of subs, a family) checks its inputs'
device and dtype against one of its subs' or family's parameters, as a layer with its own does: the layer's
message, not torch's error from inside the Function's `@`."""

from __future__ import annotations

import pytest
import torch

from .support import compile_spec

BLOCKS = """
layer Block(d: int) {
    param w: [d, d]
    example(d = 3)
    forward(x: [..., d]) -> [..., d] {
        return x + relu(x @ w)
    }
}

@function
layer Blocks(d: int, depth: int = 2) {
    sub blocks = [Block(d) for i in range(depth)]
    example(d = 3)
    forward(x: [..., d]) -> [..., d] {
        h = x
        for item in blocks {
            h = item(h)
        }
        return h
    }
}

@function
layer OneBlock(d: int) {
    sub inner = Block(d)
    example(d = 3)
    forward(x: [..., d]) -> [..., d] {
        return tanh(inner(x))
    }
}
"""

FAMILY = """
@function
layer Family(d: int, n: int = 2) {
    for k in range(n) {
        param w_l{k}: [d, d]
    }
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        h = x
        for k in range(n) {
            h = tanh(h @ w_l{k})
        }
        return h
    }
}
"""


@pytest.fixture(scope="module")
def blocks():
    return compile_spec(BLOCKS, "blocks")


@pytest.fixture(scope="module")
def family():
    return compile_spec(FAMILY, "family")


def test_a_list_of_subs_checks_the_dtype_against_its_first_item(blocks):
    layer = blocks["Blocks"](3)
    with pytest.raises(TypeError, match=r"Blocks: input 'x' is torch.float64 but the parameters are torch.float32"):
        layer(torch.randn(2, 3, dtype=torch.float64))


def test_a_sub_checks_the_dtype_against_its_parameter(blocks):
    layer = blocks["OneBlock"](3)
    with pytest.raises(TypeError, match=r"OneBlock: input 'x' is torch.float64 but the parameters are torch.float32"):
        layer(torch.randn(2, 3, dtype=torch.float64))


def test_a_family_checks_the_dtype_against_its_first_member(family):
    layer = family["Family"](3)
    with pytest.raises(TypeError, match=r"Family: input 'x' is torch.float64 but the parameters are torch.float32"):
        layer(torch.randn(2, 3, dtype=torch.float64))


def test_the_device_is_checked_as_well(blocks, family):
    x = torch.empty(2, 3, device="meta")
    for layer in (blocks["Blocks"](3), blocks["OneBlock"](3), family["Family"](3)):
        with pytest.raises(ValueError, match=r"input 'x' is on meta but the parameters are on cpu"):
            layer(x)


def test_an_empty_list_or_family_takes_any_float_input(blocks, family):
    x = torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(blocks["Blocks"](3, depth=0)(x), x)
    torch.testing.assert_close(family["Family"](3, n=0)(x), x)


def test_inputs_of_the_parameters_dtype_still_run(blocks, family):
    x = torch.randn(2, 3)
    for layer in (blocks["Blocks"](3), blocks["OneBlock"](3), family["Family"](3)):
        assert layer(x).shape == (2, 3)
