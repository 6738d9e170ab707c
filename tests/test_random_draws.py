"""A random draw under `@function` is drawn at each call, as the plain module draws it: two dropouts of one
value get a mask each (the tape computes the same operation on the same operands once, but never a draw)."""

from __future__ import annotations

import torch

from tests.support import compile_spec

TWO_DROPS = """\
@function
layer TwoDrops(d: int) {
    param w: [d, d]
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        h = x @ w
        return dropout(h, 0.5) + dropout(h, 0.5)
    }
}
"""


def test_two_dropouts_of_one_value_draw_two_masks():
    ns = compile_spec(TWO_DROPS, "two_drops")
    assert ns["SOURCE"].count(".bernoulli_(") == 2
    layer = ns["TwoDrops"](8).double().train()
    x = torch.randn(64, 8, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(0)
    y = layer(x)
    h = (x @ layer.w).detach()
    # one mask: each element is 0 or 4h; two: 2h where one keeps it and the other drops it (half of them)
    once = torch.isclose(y.detach(), 2 * h)
    assert 0.3 < once.double().mean().item() < 0.7
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad, (y.detach() / h) @ layer.w.detach().T)
