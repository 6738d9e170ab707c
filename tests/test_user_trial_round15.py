"""What round 15's user's and attacker's trial of `@function` found (its derivation through `if`s, loops,
subs and long forwards): each test fails on the code before its fix, or is a strict xfail naming a problem
left to the owners of `layerdsl/autodiff`."""

from __future__ import annotations

import torch

from layerdsl.testing import layer_checks as checks
from tests.support import compile_spec

# A focal loss's `mean` of a [N, 1] value: the derived backward divided by `(ctx.logits_shape[-2], 1).numel()`,
# a tuple's, and failed with AttributeError in every backward.
PICKED_MEAN = """\
@function
layer PickedMean() {
    forward(logits: [N, C], target: long[N]) {
        picked = gather(logits, 1, unsqueeze(target, 1))
        return mean(picked * picked)
    }
}
"""


def test_a_mean_over_a_partly_static_shape_divides_by_its_product():
    ns = compile_spec(PICKED_MEAN, "picked_mean")
    assert ".numel()" not in ns["SOURCE"].split("def backward")[1]
    logits = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 2, 1])
    layer = ns["PickedMean"]()
    assert torch.autograd.gradcheck(lambda x: layer(x, target), (logits,))
    assert torch.autograd.gradgradcheck(lambda x: layer(x, target), (logits,))


# A layer that drops out in training: gradgradcheck's calls each drew a new mask, so its finite differences
# were of a different function at every call ("Jacobian mismatch") for every training configuration.
GATED_DROPOUT = """\
@function
layer GatedDropout(d: int, p: float = 0.25) {
    param w: [d, d]
    example(d = 3)

    forward(x: [B, d]) -> [B, d] {
        y = sigmoid(x @ w) * x
        if training {
            y = dropout(y, p)
        }
        return x + y
    }
}
"""


def test_gradgradcheck_of_a_dropout_in_training_draws_one_mask(tmp_path):
    from dataclasses import replace

    from layerdsl.testing.configurations import configurations

    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "gated_dropout.layer").write_text(GATED_DROPOUT, encoding="utf-8")
    (case,) = checks.generate_package([str(specs)], tmp_path, "layerdsl_trial15_dropout")
    training = [c for c in configurations(case) if c.training and c.dtype == torch.float64]
    assert training
    for config in training:
        result, detail = checks.run_check("gradgradcheck", replace(case, config=config), "layerdsl_trial15_dropout")
        assert result == "ok", detail
