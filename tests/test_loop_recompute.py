"""A loop Function recomputes in backward a per-step value that is a cheap elementwise function of what
each step keeps anyway (`1 - z` beside `z`), rather than keeping a buffer of it for every step."""

from __future__ import annotations

import torch

from tests.support import compile_spec

CELL = """\
@function
layer Gated(d: int) {
    param w: [d, d]
    example(d = 3)

    forward(x: [B, T, d]) -> [B, T, d] {
        h = x[:, 0]
        outputs = []
        for t in range(T) {
            z = sigmoid(x[:, t] @ w)
            keep = (1 - z) * (1 - z)
            h = keep * h + z * tanh(h)
            outputs.append(h)
        }
        return stack(outputs, dim = 1)
    }
}
"""


def test_a_cheap_value_of_a_kept_one_is_recomputed_not_stacked():
    ns = compile_spec(CELL, "gated")
    source = ns["SOURCE"]
    forward = source.split("def setup_context")[0].split("class GatedFunction")[1]
    assert "z_steps[t] = z" in forward
    assert "sub_steps" not in source and "keep_steps" not in source
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    run = lambda x, w: ns["GatedFunction"].apply(x, w)[0]  # noqa: E731
    torch.testing.assert_close(run(x, w), ns["gated"](x, w))
    assert torch.autograd.gradcheck(run, (x, w))
    assert torch.autograd.gradgradcheck(run, (x, w))
