"""Optional members are skipped when absent, wherever they are used: here in a keyword argument."""

from __future__ import annotations

import pytest
import torch

from ..support import compile_spec

SPEC = """
layer Clamped(n: int, bias: bool) {
    param bias: [n] = constant(0.5) if bias
    example(n = 3, bias = true)

    forward(x: [B, n]) -> [B, n] {
        return clamp(x, min = x * 0 + bias)
    }
}
"""


@pytest.fixture(scope="module")
def clamped() -> type:
    namespace = compile_spec(SPEC, "clamped")
    return namespace["Clamped"]


def test_absent_member_in_a_keyword_argument_is_skipped(clamped):
    x = torch.tensor([[-1.0, 0.25, 2.0]])
    out = clamped(n=3, bias=False)(x)
    assert torch.equal(out, torch.tensor([[0.0, 0.25, 2.0]]))  # clamp(x, min = x * 0)


def test_present_member_in_a_keyword_argument_is_used(clamped):
    x = torch.tensor([[-1.0, 0.25, 2.0]])
    out = clamped(n=3, bias=True)(x)
    assert torch.equal(out, torch.tensor([[0.5, 0.5, 2.0]]))  # clamp(x, min = x * 0 + 0.5)
