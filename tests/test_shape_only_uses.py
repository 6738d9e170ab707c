"""A backward that reads an intermediate only for its shape (`mean`'s gradient expands to it) keeps only the
shape: a comparison's shape is followed like an elementwise operation's, so PoissonNLLLoss's backward no
longer recomputes the whole loss (Stirling's term included) to expand to its shape; and an elementwise
intermediate of unknown static shape has its shape kept on ctx as its leaves' broadcast. Counted as ATen
calls under a TorchDispatchMode; the results against the plain form in float64."""

from __future__ import annotations

import re

import pytest
import torch

from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .conftest import SPECS
from .function_agreement import compare_with_plain
from .support import AtenCalls, compile_spec


def _poisson() -> str:
    text = (SPECS / "torch_nn/loss.layer").read_text(encoding="utf-8")
    start = re.search(r"^layer PoissonNLLLoss\(", text, re.M)
    assert start is not None
    return "@function\n" + text[start.start() : text.index("\n}\n", start.start()) + 3]


@pytest.fixture(scope="module")
def poisson() -> dict:
    return compile_spec(_poisson(), "poisson_function")


@pytest.mark.parametrize("log_input", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_poisson_nll_loss_backward_does_not_recompute_the_loss_for_its_shape(poisson, log_input, reduction):
    loss = poisson["PoissonNLLLoss"](log_input=log_input, full=True, reduction=reduction)
    x = (torch.rand(6, 5) + 0.5).requires_grad_()
    target = torch.rand(6, 5) * 3
    out = loss(x, target)
    with AtenCalls() as counted:
        out.backward()
    # Stirling's term (`log(target)`, `where(target > 1, ...)`) only matters for the target's gradient
    assert counted.calls["log"] == 0 and counted.calls["where"] == 0 and counted.calls["gt"] == 0
    x64 = x.detach().double().requires_grad_()
    (got,) = torch.autograd.grad(loss(x64, target.double()), x64)
    want_loss = torch.nn.PoissonNLLLoss(log_input=log_input, full=True, reduction=reduction)
    (want,) = torch.autograd.grad(want_loss(x64, target.double()), x64)
    torch.testing.assert_close(got, want)


ALTERNATIVES = """
@function
layer ShapeKept(n: int) {
    param w: [n]
    example(n = 4)
    forward(x: [B, n] | [n]) -> [] {
        return mean(tanh(x) * w + x)
    }
}
"""


def test_an_intermediate_of_unknown_shape_read_for_its_shape_keeps_its_leaves_broadcast():
    ours = compile_spec(ALTERNATIVES, "shape_kept")
    plain = compile_spec(ALTERNATIVES.replace("@function\n", ""), "shape_kept_plain")
    spec = parse_file("shape_kept.layer", ALTERNATIVES)
    source = emit_file(spec, check_program([spec]), "shape_kept.layer", {})
    assert "ctx.add_shape = torch.broadcast_shapes(x.shape, w.shape)" in source
    a, b = ours["ShapeKept"](4).double(), plain["ShapeKept"](4).double()
    b.load_state_dict(a.state_dict())
    for shape in [(3, 4), (4,)]:
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        compare_with_plain(a, b, x)
        out = a(x)
        with AtenCalls() as counted:
            out.backward()
        # `tanh(x) * w` is not recomputed for its shape: the products are the gradients' of w and tanh(x)
        assert counted.calls["mul"] == 2
