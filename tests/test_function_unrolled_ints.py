"""Int locals a loop of a written count (unrolled under `@function`) carries from copy to copy: each copy
reads its own value (autodiff/unroll.py binds each copy's under a name of its own, in order), and a read after
the loop the last copy's. Each spec derives and agrees with the plain module: outputs, first and second
derivatives, in float64."""

from __future__ import annotations

import pytest
import torch

from tests.support import compile_spec


def _pair(text: str, name: str, *args) -> tuple[torch.nn.Module, torch.nn.Module]:
    """`name` of `text` as written (`@function`) and plain, float64, one state."""
    modules = []
    for k, spec in enumerate([text, text.replace("@function\n", "")]):
        torch.manual_seed(0)
        modules.append(compile_spec(spec, f"{name.lower()}_{k}")[name](*args).double())
    modules[1].load_state_dict(modules[0].state_dict())
    return modules[0], modules[1]


def _agree(ours: torch.nn.Module, plain: torch.nn.Module, x: torch.Tensor) -> None:
    """Same output, same first derivatives (of x and the parameters) and same second derivatives of x."""
    got, want = ours(x), plain(x)
    torch.testing.assert_close(got, want)
    weights = torch.linspace(-1, 2, got.numel(), dtype=got.dtype).reshape(got.shape)
    firsts = []
    for module, out in [(ours, got), (plain, want)]:
        grads = torch.autograd.grad((out * weights).sum(), [x, *module.parameters()], create_graph=True)
        firsts.append(grads)
    for g, w in zip(*firsts, strict=True):
        torch.testing.assert_close(g, w)
    probe = torch.linspace(0.5, -1.5, x.numel(), dtype=x.dtype).reshape(x.shape)
    seconds = [torch.autograd.grad((grads[0] * probe).sum(), x, allow_unused=True)[0] for grads in firsts]
    if seconds[1] is None:
        assert seconds[0] is None or not seconds[0].any()
    else:
        torch.testing.assert_close(seconds[0], seconds[1])


def _layer(body: str, args: str = "d: int") -> str:
    return f"""\
@function
layer Ints({args}) {{
    param w: [d, d] = uniform(-0.5, 0.5)
    example(d = 6)
    forward(x: [B, d]) -> [B, d] {{
{body}
    }}
}}
"""


COUNTER = """\
        h = x
        n = 0
        for t in range(3) {
            n = n + 1
            k = n
            h = tanh(h @ w) * x[:, k:k + 1]
        }
        return h"""

SWAP = """\
        h = x
        a = 1
        b = 3
        for t in range(3) {
            c = a
            a = b
            b = c
            h = tanh(h @ w) * x[:, a:a + 1] + h * x[:, b:b + 1]
        }
        return h"""

AFTER = """\
        h = x
        n = 1
        for t in range(2) {
            n = n * 2
            h = tanh(h @ w) + x[:, n - 1:n]
        }
        return h * x[:, n:n + 1]"""

# a counter that steps by an argument's choice: `if` on an argument, not unrolled away
BRANCH = """\
        h = x
        n = 0
        for t in range(2) {
            if wide {
                n = n + 2
            } else {
                n = n + 1
            }
            h = tanh(h @ w) * x[:, n:n + 1]
        }
        return h * x[:, n:n + 1]"""

# sizes measured when forward runs (x: [B, d], its dim 1 read as a number): carried, not constants
MEASURED = """\
        h = x
        n = size_at(x, 1) - 1
        for t in range(2) {
            n = n - size_at(x, 0)
            h = tanh(h @ w) * x[:, n:n + 1]
        }
        return h + x[:, n:n + 1]"""

NESTED = """\
        h = x
        n = 0
        for s in range(2) {
            m = n
            for t in range(2) {
                m = m + 1
                n = n + 1
                h = tanh(h @ w) * x[:, m:m + 1]
            }
            h = h + x[:, n:n + 1]
        }
        return h * x[:, n:n + 1]"""


@pytest.mark.parametrize(
    ("body", "args"),
    [
        (COUNTER, "d: int"),
        (SWAP, "d: int"),
        (AFTER, "d: int"),
        (BRANCH, "d: int, wide: bool = true"),
        (BRANCH, "d: int, wide: bool = false"),
        (MEASURED, "d: int"),
        (NESTED, "d: int"),
    ],
    ids=["counter", "swap", "after", "branch-true", "branch-false", "measured", "nested"],
)
def test_an_unrolled_loops_carried_int_derives(body, args):
    ours, plain = _pair(_layer(body, args), "Ints", 6)
    _agree(ours, plain, torch.randn(2, 6, dtype=torch.float64, requires_grad=True))


# a loop kept as one (its count an input's size) around the unrolled one: the count carries on from step to step
KEPT = """\
@function
layer Ints(d: int) {
    param w: [d, d] = uniform(-0.5, 0.5)
    example(d = 6)
    forward(x: [T, B, d]) -> [B, d] {
        h = x[0]
        n = 0
        for s in range(T) {
            for t in range(2) {
                n = n + 1
                h = tanh(h @ w) * x[s, :, n % 3:n % 3 + 1]
            }
            h = h + x[s, :, n % 3:n % 3 + 1]
        }
        return h
    }
}
"""


def test_an_unrolled_loops_carried_int_in_a_kept_loop_derives():
    ours, plain = _pair(KEPT, "Ints", 6)
    _agree(ours, plain, torch.randn(3, 2, 6, dtype=torch.float64, requires_grad=True))


# A number bound again after a tensor's statement read it: the Function computes its number locals before
# the tensors, so the first read saw the second value (a wrong output, without a word). Each binding read by a
# tensor before the next now takes a name of its own.
REBOUND = """\
        n = 1
        h = x * x[:, n:n + 1]
        n = 3
        h = tanh(h @ w) * x[:, n:n + 1]
        return h"""

# read before the loop, then bound by each copy from the loop's variable (`k = t + 1`)
REBOUND_BY_COPIES = """\
        k = 4
        h = x * x[:, k:k + 1]
        for t in range(2) {
            k = t + 1
            h = tanh(h @ w) * x[:, k:k + 1]
        }
        return h + x[:, k:k + 1]"""

REBOUND_ON_A_SIDE = """\
        n = 1
        h = x * x[:, n:n + 1]
        if wide {
            n = 3
        }
        return tanh(h @ w) * x[:, n:n + 1]"""


@pytest.mark.parametrize(
    ("body", "args"),
    [
        (REBOUND, "d: int"),
        (REBOUND_BY_COPIES, "d: int"),
        (REBOUND_ON_A_SIDE, "d: int, wide: bool = true"),
        (REBOUND_ON_A_SIDE, "d: int, wide: bool = false"),
    ],
    ids=["rebound", "rebound-by-copies", "side-true", "side-false"],
)
def test_a_number_bound_again_after_a_tensor_read_it_derives(body, args):
    ours, plain = _pair(_layer(body, args), "Ints", 6)
    _agree(ours, plain, torch.randn(2, 6, dtype=torch.float64, requires_grad=True))


# a number bound again after a tensor read it, then read (`n`) or bound again (`m = m + 1`) by a kept loop
KEPT_AFTER_REBINDING = """\
@function
layer Ints(d: int) {
    param w: [d, d] = uniform(-0.5, 0.5)
    example(d = 6)
    forward(x: [T, B, d]) -> [B, d] {
        n = 1
        m = 0
        h = x[0] * x[0, :, n:n + 1] * x[0, :, m:m + 1]
        n = 3
        m = 2
        for s in range(T) {
            m = m + 1
            h = tanh(h @ w) * x[s, :, n:n + 1] + x[s, :, m % 4:m % 4 + 1]
        }
        return h * x[0, :, m:m + 1]
    }
}
"""


def test_a_kept_loop_reads_and_binds_a_number_bound_again_before_it():
    ours, plain = _pair(KEPT_AFTER_REBINDING, "Ints", 6)
    _agree(ours, plain, torch.randn(3, 2, 6, dtype=torch.float64, requires_grad=True))
