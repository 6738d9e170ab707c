"""A sub's parameters read by name (`linear.weight`), and an `object` argument passed on to an operation."""

from __future__ import annotations

import pytest
import torch

from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

SPEC = """
layer Affine(n: int, k: int, bias: bool = true) {
    param weight: [k, n] = normal(0, 1)
    param bias: [k] = normal(0, 1) if bias
    example(n = 4, k = 3)
    forward(x: [B, n]) -> [B, k] {
        return x @ transpose(weight, 0, 1) + bias
    }
}

layer Loss(n: int, k: int, bias: bool = true, options: object? = none) {
    sub proj = Affine(n, k, bias)
    example(n = 4, k = 3)
    forward(input: [B, n], target: long[B]) {
        return linear_cross_entropy(input, proj.weight, target, linear_bias = proj.bias, options = options)
    }
}
"""


@pytest.fixture(scope="module")
def generated() -> tuple[str, dict]:
    spec = parse_file("loss.layer", SPEC)
    source = emit_file(spec, check_program([spec]), "loss.layer", {})
    namespace: dict = {}
    exec(compile(source, "loss.py", "exec"), namespace)
    return source, namespace


def test_sub_members_are_the_subs_attributes(generated):
    source, _ = generated
    assert "self.proj.weight," in source and "linear_bias=self.proj.bias," in source
    assert "options: object | None = None" in source and "options=self.options" in source


@pytest.mark.parametrize("bias", [True, False])
def test_the_loss_is_torchs_on_the_subs_parameters(generated, bias):
    loss = generated[1]["Loss"](4, 3, bias=bias, options=torch.nn.LinearCrossEntropyOptions(batch_chunk_size=2))
    x, target = torch.randn(5, 4), torch.tensor([0, 2, 1, 1, 0])
    logits = torch.nn.functional.linear(x, loss.proj.weight, loss.proj.bias)
    torch.testing.assert_close(loss(x, target), torch.nn.functional.cross_entropy(logits, target))
    assert loss.options.batch_chunk_size == 2


KDIM = """
layer Affine(n: int, k: int, bias: bool = true) {
    param weight: [k, n] = normal(0, 1)
    param bias: [k] = normal(0, 1) if bias
    example(n = 4, k = 3)
    forward(x: [B, n]) -> [B, k] {
        return x @ transpose(weight, 0, 1) + bias
    }
}

layer KLoss(n: int, c: int, out_features: ints = [], bias: bool = false) {
    sub linear = Affine(n, c * prod(out_features), bias)
    example(n = 4, c = 3)
    forward(input: [B, n], target: long[...]) {
        w = reshape(linear.weight, [c, *out_features, n])
        if linear.bias != none {
            return linear_cross_entropy(input, w, target, linear_bias = reshape(linear.bias, [c, *out_features]))
        }
        return linear_cross_entropy(input, w, target)
    }
}
"""


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("out_features", [(), (2, 3), 2])
def test_spread_ints_and_prod_size_the_flat_weight_like_torch(out_features, bias):
    spec = parse_file("kloss.layer", KDIM)
    source = emit_file(spec, check_program([spec]), "kloss.layer", {})
    assert "c * math.prod(out_features)" in source and "[self.c, *self.out_features, self.n]" in source
    namespace: dict = {}
    exec(compile(source, "kloss.py", "exec"), namespace)
    mine = namespace["KLoss"](4, 3, out_features=out_features, bias=bias)
    dims = (out_features,) if isinstance(out_features, int) else out_features
    theirs = torch.nn.LinearCrossEntropyLoss(4, 3, out_features=dims, bias=bias)
    mine.load_state_dict(theirs.state_dict(), strict=True)
    x, target = torch.randn(5, 4), torch.randint(0, 3, (5, *dims))
    torch.testing.assert_close(mine(x, target), theirs(x, target))
