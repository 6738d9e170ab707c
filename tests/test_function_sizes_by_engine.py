"""`size_at` and `.ndim` of a local computed by an op that `autodiff/local_sizes.py` has no rule of its own
for (`pad`, `conv1d`, a reduction): followed by the shape engine, from the op table's shape rule, to sizes
of the inputs and members. Against the functional form (plain autograd) in float64: outputs, first and second
derivatives, gradcheck and gradgradcheck; and the generated forward reads the input's size, not the
local's."""

from __future__ import annotations

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .support import compile_spec

SPEC = """
@function
layer PaddedMean(n: int) {
    example(n = 4)

    forward(x: [B, n]) {
        h = sin(pad(x, [1, 2]))
        return sum(h, dim = -1) / size_at(h, -1) + h.ndim
    }
}

@function
layer ConvolvedMean(channels: int) {
    param w: [channels, channels, 3] = uniform(-0.5, 0.5)

    example(channels = 2)

    forward(x: [N, channels, L]) {
        h = conv1d(x, w)
        return h / (size_at(h, 2) * size_at(h, -2))
    }
}

@function
layer RowTotals() {
    forward(x: [B, n]) {
        h = sum(x * x, dim = 1)
        return h / size_at(h, 0)
    }
}
"""


@pytest.fixture(scope="module")
def ns() -> dict:
    return compile_spec(SPEC, "sizes_by_engine")


def _double(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, dtype=torch.float64).uniform_(-1, 1).requires_grad_()


def _agree(got: torch.Tensor, want: torch.Tensor, inputs: list[torch.Tensor]) -> None:
    torch.testing.assert_close(got, want)
    seed = torch.randn_like(got)
    first = [torch.autograd.grad(out, inputs, seed, create_graph=True) for out in (got, want)]
    for a, b in zip(*first):
        torch.testing.assert_close(a, b)
    weights = [torch.randn_like(g) for g in first[1]]
    second = [torch.autograd.grad(sum((g * w).sum() for g, w in zip(gs, weights)), inputs) for gs in first]
    for a, b in zip(*second):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("rows", [1, 3])
def test_a_size_and_rank_of_a_padded_local(ns, rows):
    torch.manual_seed(rows)
    x = _double(rows, 4)
    _agree(ns["PaddedMean"](4)(x), ns["padded_mean"](x, n=4), [x])
    assert torch.autograd.gradcheck(ns["PaddedMeanFunction"].apply, [x])
    assert torch.autograd.gradgradcheck(ns["PaddedMeanFunction"].apply, [x])


def test_the_padded_size_is_the_inputs_plus_the_widths(ns):
    spec = parse_file("sizes_by_engine.layer", SPEC)
    source = emit_file(spec, check_program([spec]), "sizes_by_engine.layer", {})
    function = source[source.index("class PaddedMeanFunction") : source.index("class PaddedMean(")]
    assert "x.shape[1]" in function and "h.shape" not in function and "h.dim()" not in function
    x = _double(2, 4)
    torch.testing.assert_close(
        ns["PaddedMeanFunction"].apply(x), torch.sin(torch.nn.functional.pad(x, [1, 2])).sum(-1) / 7 + 2
    )


@pytest.mark.parametrize("length", [3, 6])
def test_sizes_of_a_convolved_local(ns, length):
    torch.manual_seed(length)
    layer = ns["ConvolvedMean"](2, dtype=torch.float64)
    x = _double(2, 2, length)
    _agree(layer(x), ns["convolved_mean"](x, layer.w), [x, layer.w])
    apply = lambda x, w: ns["ConvolvedMeanFunction"].apply(x, w)  # noqa: E731
    assert torch.autograd.gradcheck(apply, [x, layer.w])
    assert torch.autograd.gradgradcheck(apply, [x, layer.w])
    y = layer(x)
    torch.testing.assert_close(y, torch.nn.functional.conv1d(x, layer.w) / ((length - 2) * 2))


def test_the_size_of_a_reduced_local(ns):
    torch.manual_seed(0)
    x = _double(3, 2)
    _agree(ns["RowTotals"]()(x), ns["row_totals"](x), [x])
    torch.testing.assert_close(ns["RowTotalsFunction"].apply(x), (x * x).sum(1) / 3)
    assert torch.autograd.gradgradcheck(ns["RowTotalsFunction"].apply, [x])


UNANSWERED = """
@function
layer Unanswered(n: int) {
    example(n = 4)

    forward(x: [..., n]) {
        h = pad(x, [1, 1, 1, 1])
        return h / size_at(h, 0)
    }
}
"""


def test_a_size_the_engine_cannot_place_stays_a_located_error():
    """Dim 0 of `pad(x, ...)` with x `[..., n]` may be in the `...` group or a padded dim: not followed."""
    spec = parse_file("unanswered.layer", UNANSWERED)
    check_program([spec])
    _, problems = plan_backwards([spec])
    (problem,) = problems
    assert (problem.span.line, problem.span.col) == (8, 28)
    assert "`h` is a tensor forward computes, whose size there is not followed back" in problem.message
