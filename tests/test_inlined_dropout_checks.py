"""A sub's dropout inlined into a `@function` layer's Function: its p, computed from the arguments the sub is
built with, is checked before `Function.apply` (codegen/module.py, `checked_dropouts`), in train and eval,
as the plain module's F.dropout raises at every call; the message names the sub's dropout line."""

from __future__ import annotations

import pytest
import torch

from tests.support import compile_spec, function_and_plain

SPEC = """\
layer Drop(p: float) {
    example(p = 0.5)
    forward(x: [n, d]) -> [n, d] {
        return dropout(x, p * 1.0) * 2.0
    }
}

@function
layer Outer(d: int, p: float) {
    example(d = 3, p = 0.5)
    sub first = Drop(p)
    sub second = Drop(p)
    param w: [d, d] = normal
    forward(x: [n, d]) -> [n, d] {
        return second(first(x @ w))
    }
}
"""


@pytest.mark.parametrize("p", [-0.25, 1.5])
def test_an_inlined_subs_dropout_probability_outside_0_1_raises(p):
    ours, plain = function_and_plain(SPEC, "Outer", 3, p)
    x = torch.randn(2, 3, dtype=torch.float64)
    line = 1 + SPEC.splitlines().index("        return dropout(x, p * 1.0) * 2.0")
    for training in (False, True):
        plain.train(training)
        ours.train(training)
        with pytest.raises(ValueError, match="dropout probability"):
            plain(x)
        with pytest.raises(ValueError) as error:
            ours(x)
        assert str(error.value) == (
            f"Outer: dropout probability has to be between 0 and 1 (dropout() at outer_0.layer:{line};"
            f" got p * 1.0 = {p})"
        )


def test_an_inlined_subs_dropout_is_checked_once_and_derives_in_range():
    ours, plain = function_and_plain(SPEC, "Outer", 3, 0.0)
    source = compile_spec(SPEC, "outer")["SOURCE"]
    assert source.count("if not 0.0 <= self.p * 1.0 <= 1.0:") == 1  # the sub called twice: one check
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(ours(x), plain(x))
    assert torch.autograd.gradcheck(ours, (x,))
