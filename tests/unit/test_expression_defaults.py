"""Defaults computed from earlier arguments: None in the signature, computed first in __init__ and the
functional form."""

from __future__ import annotations

import pytest
import torch

from ..support import compile_spec

SPEC = """
layer FeedForward(dim: int, mult: int = 4, hidden: int = mult * dim, scale: float = 1 / sqrt(hidden)) {
    param w1: [hidden, dim] = normal(0, 0.02)
    param w2: [dim, hidden] = normal(0, 0.02)
    example(dim = 4)
    forward(x: [B, dim]) -> [B, dim] {
        return relu(x @ transpose(w1, 0, 1)) @ transpose(w2, 0, 1) * scale
    }
}
"""


@pytest.fixture(scope="module")
def namespace() -> dict:
    return compile_spec(SPEC, "ffn")


def test_defaults_are_computed_from_the_earlier_arguments(namespace):
    m = namespace["FeedForward"](3)
    assert (m.hidden, m.w1.shape, m.scale) == (12, (12, 3), 1 / 12**0.5)
    m = namespace["FeedForward"](3, mult=2, hidden=5)
    assert (m.hidden, m.w1.shape, m.scale) == (5, (5, 3), 1 / 5**0.5)


def test_the_functional_form_computes_them_too(namespace):
    m = namespace["FeedForward"](3, mult=2)
    x = torch.randn(2, 3)
    y = namespace["feed_forward"](x, m.w1, m.w2, dim=3, mult=2)
    torch.testing.assert_close(y, m(x))
