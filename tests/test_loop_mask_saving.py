"""A comparison a loop's step reads in backward (`relu > 0` of a relu, the condition of `where(c, 1.0, 0.0)`
read as a factor) is kept per step as a stacked bool mask, not as the float value per step, where that keeps
less (issue 15: a straight Function's masks, `optimize.masks`, in a Function whose forward keeps its loop);
where the float is kept per step anyway (`h = relu(...)`: h is the next step's matmul operand), no mask is
added. Gradients and double backward agree with the plain module."""

from __future__ import annotations

import pytest
import torch

from .function_agreement import compare_with_plain
from .support import saved_bytes
from .test_function_sub_lists import plain_pair

RELU_SCAN = """
@function
layer ReluScan(d: int) {
    param w: [d, d]
    example(d = 3)
    forward(x: [B, T, d]) -> [B, d] {
        h = x[:, 0]
        for t in range(T) {
            h = relu(x[:, t] + h @ w)
        }
        return h
    }
}
"""

GATED_SCAN = """
@function
layer GatedScan(d: int) {
    param w: [d, d]
    param v: [d, d]
    example(d = 3)
    forward(x: [B, T, d]) -> [B, d] {
        h = x[:, 0]
        for t in range(T) {
            h = tanh(h @ w + relu(x[:, t] @ v))
        }
        return h
    }
}
"""

INDICATOR_SCAN = """
@function
layer IndicatorScan(d: int) {
    param w: [d, d]
    example(d = 3)
    forward(x: [B, T, d]) -> [B, d] {
        h = x[:, 0]
        for t in range(T) {
            h = (x[:, t] + h @ w) * where(x[:, t] > 0.1, 1.0, 0.0)
        }
        return h
    }
}
"""

B, T, D = 4, 6, 5


def _float(n: int) -> int:
    return n * torch.float64.itemsize


@pytest.mark.parametrize(
    "text, name, expected",
    [
        # x, and h per step (the matmul's operand at the next step), whose `h > 0` is relu's mask: no bool
        (RELU_SCAN, "ReluScan", _float(B * T * D) + T * _float(B * D)),
        # x, tanh's output per step (also the next matmul's operand), relu's mask per step (was the float)
        (GATED_SCAN, "GatedScan", _float(B * T * D) + T * _float(B * D) + T * B * D),
        # x, h per step but the first (x[:, 0], a view of x), the condition per step (was the float indicator)
        (INDICATOR_SCAN, "IndicatorScan", _float(B * T * D) + (T - 1) * _float(B * D) + T * B * D),
    ],
)
def test_a_loop_keeps_a_bool_mask_per_step_where_it_keeps_less(text, name, expected):
    a, b = plain_pair(text, name.lower(), name, d=D)
    x = torch.randn(B, T, D, dtype=torch.float64, requires_grad=True)
    assert saved_bytes(lambda: a(x), a) == expected  # the parameters are held by the module anyway
    compare_with_plain(a, b, torch.randn(2, 3, D, dtype=torch.float64, requires_grad=True))
