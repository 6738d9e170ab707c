"""What round 20's attacker's trial found (ints rebound before an `if` on them, ...): each test fails on the
code before its fix, or is a strict xfail naming a problem still open."""

from __future__ import annotations

import pytest
import torch

from tests.support import assert_same_function, function_and_plain

# ---------------------------------------------------------------- fixed here

# An `if` on an int local bound from its own earlier value (`n = m`, `n = n * 2`, `if n > 1`; or `n = n + i` in
# a loop of a written count, unrolled into copies of that binding) sent the planner into endless recursion:
# the condition's number locals were written out by their last binding, which names itself (`n * 2` of `n`),
# a RecursionError from `gen`. Each binding is now written out from the ones before it. autodiff/plan.py.
INT_BEFORE_IF = """\
@function
layer IntBeforeIf(d: int, m: int = 1) {
    param w: [d, d] = uniform(-1, 1)
    example(d = 6)
    forward(x: [B, d]) {
        h = x
        BODY
        return h
    }
}
"""

REBOUND = {
    "rebound": """n = m
        n = n * 2
        if n > 1 {
            h = tanh(h @ w)
        } else {
            h = h @ w
        }""",
    "unrolled": """n = m
        for i in range(3) {
            n = n + i
            if n > 2 {
                h = tanh(h @ w) * x[:, n % d:n % d + 1]
            } else {
                h = h * 2.0
            }
        }""",
}


@pytest.mark.parametrize("m", [0, 2])
@pytest.mark.parametrize("name", sorted(REBOUND))
def test_an_if_on_an_int_bound_from_itself_derives(name, m):
    ours, plain = function_and_plain(INT_BEFORE_IF.replace("BODY", REBOUND[name]), "IntBeforeIf", 6, m)
    for batch in [0, 1, 3]:
        x = torch.randn(batch, 6, dtype=torch.float64, requires_grad=True)
        assert_same_function(ours, plain, x)
    assert torch.autograd.gradcheck(ours, (torch.randn(2, 6, dtype=torch.float64, requires_grad=True),))


# A slice bound written past int64 (`x[:, 99999999999999999999:]`, `x[:, -99999999999999999999:]`), which
# Python's slicing takes as the dim's end or start: the derived backward passed it to ATen's slice_backward,
# which takes an int64 ("Expected a value of type 'int' for argument 'start'"): a RuntimeError in backward.
# The bound is now the nearest int64, which slices alike. codegen/function.py.
@pytest.mark.filterwarnings("ignore:Truncating the start/stop/step of slice:UserWarning")  # torch's, both modules
@pytest.mark.parametrize("bound", ["99999999999999999999:", "-99999999999999999999:", ":99999999999999999999"])
def test_a_slice_bound_past_int64_derives(bound):
    text = f"""\
@function
layer HugeBound(d: int) {{
    param w: [d] = uniform(-1, 1)
    example(d = 4)
    forward(x: [B, d]) {{
        return tanh(x[:, {bound}] * w[{bound}]) + sum(x * w)
    }}
}}
"""
    ours, plain = function_and_plain(text, "HugeBound", 4)
    assert_same_function(ours, plain, torch.randn(3, 4, dtype=torch.float64, requires_grad=True))
