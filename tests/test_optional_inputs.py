"""Optional forward inputs (`mask: bool[B, T]? = none`) and tuple inputs (`hx: ([B, n], [B, n])? = none`):
the generated signature, the paths with and without the input, a `+` skipped when it is none, unpacking,
a sub called with and without its optional input and with a tuple built in place (`cell(x, (h, c))`), and
the run-time checks of a given optional input."""

from __future__ import annotations

import inspect

import pytest
import torch

from .support import compile_spec

SPEC = """
layer Masked(n: int) {
    param w: [n] = ones

    example(n = 4)

    forward(x: [B, T, n], mask: bool[B, T]? = none, bias: [B, T, n]? = none) -> [B, T, n] {
        y = x * w + bias
        if mask != none {
            y = where(unsqueeze(mask, -1), y, 0.0)
        }
        return y
    }
}

layer Cell(n: int) {
    param w: [n, n] = normal(0.0, 1.0)

    example(n = 4)

    forward(x: [B, n], hx: ([B, n], [B, n])? = none) -> ([B, n], [B, n]) {
        if hx == none {
            return tanh(x @ w), x
        }
        h, c = hx
        return tanh(x @ w + h), c + x
    }
}

layer TwoSteps(n: int) {
    sub cell = Cell(n)

    example(n = 4)

    forward(x: [B, n], hx: ([B, n], [B, n])) -> [B, n] {
        h0, c0 = cell(x)
        h, c = cell(x, hx)
        h2, c2 = cell(x, (h, c0))
        return h + c + h0 + h2
    }
}
"""


@pytest.fixture(scope="module")
def ns() -> dict:
    return compile_spec(SPEC, "optional")


def test_signature_takes_optional_and_tuple_inputs_as_torch_does(ns):
    forward = inspect.signature(ns["Masked"].forward).parameters
    assert forward["mask"].default is None and forward["bias"].default is None
    hx = inspect.signature(ns["Cell"].forward).parameters["hx"]
    assert hx.annotation == "tuple[Tensor, Tensor] | None" and hx.default is None
    functional = inspect.signature(ns["masked"]).parameters
    assert functional["mask"].kind is inspect.Parameter.KEYWORD_ONLY  # after the members


def test_an_absent_optional_input_skips_its_operation_and_its_branch(ns):
    m = ns["Masked"](4, dtype=torch.float64)
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    mask = torch.rand(2, 3) > 0.5
    torch.testing.assert_close(m(x), x)
    torch.testing.assert_close(m(x, bias=x), 2 * x)
    torch.testing.assert_close(m(x, mask), torch.where(mask[..., None], x, 0.0))
    torch.testing.assert_close(m(x, mask, x), torch.where(mask[..., None], 2 * x, 0.0))


def test_a_given_optional_input_is_checked(ns):
    m = ns["Masked"](4, dtype=torch.float64)
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="input 'mask' has size 5 at dim 1, expected T = 3"):
        m(x, torch.ones(2, 5, dtype=torch.bool))
    cell = ns["Cell"](4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"input 'hx\[1\]' must have 2 dims"):
        cell(torch.randn(2, 4, dtype=torch.float64), (torch.zeros(2, 4).double(), torch.zeros(4).double()))


def test_tuple_input_is_unpacked_and_a_sub_takes_it_or_not(ns):
    torch.manual_seed(0)
    cell = ns["Cell"](4, dtype=torch.float64)
    x = torch.randn(2, 4, dtype=torch.float64)
    h0, c0 = cell(x)
    torch.testing.assert_close(h0, torch.tanh(x @ cell.w))
    h1, c1 = cell(x, (h0, c0))
    torch.testing.assert_close(h1, torch.tanh(x @ cell.w + h0))
    torch.testing.assert_close(c1, c0 + x)
    steps = ns["TwoSteps"](4, dtype=torch.float64)
    steps.cell.load_state_dict(cell.state_dict())
    h2, _ = cell(x, (h1, c0))
    torch.testing.assert_close(steps(x, (h0, c0)), h1 + c1 + h0 + h2)
