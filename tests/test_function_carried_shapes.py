"""A value a loop of a run-time count carries must keep one shape over its steps for a derived backward:
the Function keeps its steps stacked at the first step's shape (its start may be smaller and broadcast up,
`h = new_zeros(x, [H])` then `[B, H]`). One whose shape changes at every step (`h = tanh(h[:, 1:])`) was
derived anyway and failed inside the generated backward with torch's own error at the second step; it is
now refused where the spec changes it, before any tensor exists."""

from __future__ import annotations

import pytest
import torch

from layerdsl.diagnostics import SpecError
from tests.support import assert_same_function, compile_spec, function_and_plain

SHRINKING = """\
@function
layer Shrinking(d: int) {
    example(d = 4)
    forward(x: [T, B, d], y: [B, d]) -> [B] {
        h = y
        for t in range(T) {
            h = tanh(h[:, 1:]) * sum(x[t], dim = 1, keepdim = true)
        }
        return sum(h, dim = 1)
    }
}
"""

# the same loop with the shape kept: the slice is put back to d columns
KEPT = SHRINKING.replace("Shrinking", "Kept").replace("tanh(h[:, 1:])", "cat([tanh(h[:, 1:]), h[:, :1]], dim = 1)")


def test_a_carried_value_that_changes_shape_at_every_step_is_refused_where_it_changes():
    with pytest.raises(SpecError) as error:
        compile_spec(SHRINKING, "shrinking")
    message = str(error.value)
    assert "shrinking.layer:7:17: error: a derived backward keeps the steps of a value a loop carries" in message
    assert "'h' changes shape at every step ([B, d] -> [B, d - 1], ...; not derived yet)" in message
    assert "hint: give it the same shape at every step, or drop @function" in message


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_the_same_loop_keeping_its_shape_derives(steps):
    function, plain = function_and_plain(KEPT, "Kept", 4)
    x = torch.randn(steps, 3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert_same_function(function, plain, x, y)
    assert torch.autograd.gradcheck(function, (x, y))
    assert torch.autograd.gradgradcheck(function, (x, y))
