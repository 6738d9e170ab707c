"""A loop holding a loop (`autodiff.nest.Nest`) on its own keeps no more bytes for backward than autograd
does (the plain module), at 0, 1 and several outer and inner steps (issue 15), and agrees with it (outputs,
gradcheck and gradgradcheck over inputs and parameters):

- the nest's last value read after it is the last row of its inner loop's steps at the last outer step
  (`h2_steps_layers[-1][-1]`), saved itself only where that stack is None (`function_nest.ends_in_layers`);
- an inner loop's last value read in the body (`g * h`) is not stacked over the outer steps: read back at
  each as the last row of that loop's steps, or its start where the loop ran no steps
  (`function_nest.inner_ends`);
- a start read only by the inner loop's steps (`h0`) is not saved where the inner loop runs no steps, its
  gradient's zeros made of its shape on ctx (`function_nest.start_zeros`)."""

from __future__ import annotations

import pytest
import torch

from .function_agreement import compare_with_plain
from .support import function_and_plain, saved_bytes

LAYER = """\
@function
layer Nest(d: int) {
    param w: [d, d] = uniform(-1, 1)
    param u: [d, d] = uniform(-1, 1)
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d], z: [L, d]) -> [...] {
        h = h0
        BODY
    }
}
"""

SPECS = {
    # issue 15's nest alone: each outer step's last value stacked
    "stack of the outer steps": """outs = []
        for l in range(size_at(z, 0)) {
            for t in range(T) {
                h = tanh(x[t] @ w + h @ u)
            }
            outs.append(h)
        }
        return stack(outs)""",
    # its last value read by value after it
    "last value read after it": """for l in range(size_at(z, 0)) {
            for t in range(T) {
                h = tanh(x[t] @ w + h @ u)
            }
        }
        return h * h0""",
    # the inner loop's last value read in the body, its start a value of the body
    "inner loop's last value read in the body": """outs = []
        for l in range(size_at(z, 0)) {
            g = h * 0.5
            for t in range(T) {
                g = tanh(x[t] @ w + g @ u)
            }
            outs.append(g * h)
            h = g
        }
        return stack(outs)""",
}

# (inner steps T, outer steps L)
COUNTS = [(0, 1), (0, 3), (1, 0), (1, 1), (1, 3), (3, 1), (3, 4)]


def _inputs(inner: int, outer: int) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(10 * inner + outer)
    x = torch.randn(inner, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    return x, h0, torch.randn(outer, 3, dtype=torch.float64, requires_grad=True)


def _raises(plain: torch.nn.Module, *inputs: torch.Tensor) -> bool:
    """Whether the plain module raises (a stack of no items): then the nest of no steps is not compared."""
    try:
        plain(*inputs)
    except RuntimeError:
        return True
    return False


@pytest.mark.parametrize(
    "name, counts",
    [(name, counts) for name in sorted(SPECS) for counts in COUNTS],
    ids=lambda v: f"T{v[0]}-L{v[1]}" if isinstance(v, tuple) else v,
)
def test_the_nest_keeps_no_more_than_autograd(name, counts):
    ours, plain = function_and_plain(LAYER.replace("BODY", SPECS[name]), "Nest", 3)
    inputs = _inputs(*counts)
    if _raises(plain, *inputs):
        assert counts[1] == 0
        return
    assert saved_bytes(lambda: ours(*inputs), ours) <= saved_bytes(lambda: plain(*inputs), plain)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("counts", COUNTS, ids=lambda c: f"T{c[0]}-L{c[1]}")
@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_nest_agrees_with_autograd(name, counts):
    ours, plain = function_and_plain(LAYER.replace("BODY", SPECS[name]), "Nest", 3)
    inputs = _inputs(*counts)
    if _raises(plain, *inputs):
        with pytest.raises(RuntimeError):
            ours(*inputs)
        return
    compare_with_plain(ours, plain, *inputs)
