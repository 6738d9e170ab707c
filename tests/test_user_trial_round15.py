"""What round 15's user's and attacker's trial of `@function` found (its derivation through `if`s, loops,
subs and long forwards): each test fails on the code before its fix, or is a strict xfail naming a problem
left to the owners of `layerdsl/autodiff`."""

from __future__ import annotations

import re

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


def _flags_spec(count: int) -> str:
    flags = ", ".join(f"f{k}: bool = true" for k in range(count))
    ifs = "\n".join(f"        if f{k} {{\n            h = h * {k + 2}.0\n        }}" for k in range(count))
    return (
        f"@function\nlayer Flags(d: int, {flags}) {{\n    example(d = 3)\n"
        f"    forward(x: [B, d]) -> [B, d] {{\n        h = x\n{ifs}\n        return tanh(h)\n    }}\n}}\n"
    )


def test_a_segmented_forward_that_saves_its_output_alone_unpacks_it_whole():
    """Six flags' `if`s (64 combinations: one segment per `if`) before a tanh, whose backward reads only
    the output: setup_context wrote `th, = output` of a forward returning `th` alone, unpacking the tensor
    along its first dim (ValueError at every call with a batch of more than one)."""
    ns = compile_spec(_flags_spec(6), "flags")
    assert "th = output" in ns["SOURCE"]
    x = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    for off in (None, "f0", "f5"):
        layer = ns["Flags"](3, **({off: False} if off else {}))
        assert torch.autograd.gradcheck(layer, (x,))


def _mode_chain(count: int) -> str:
    chain = " else ".join(f'if mode == "m{k}" {{\n            h = x * {k}.0 + w\n        }}' for k in range(count))
    return (
        f'@function\nlayer Modes(d: int, mode: str = "m3") {{\n    param w: [d]\n    example(d = 3)\n'
        f"    forward(x: [B, d]) -> [B, d] {{\n        {chain} else {{\n            h = x\n        }}\n"
        f"        return tanh(h)\n    }}\n}}\n"
    )


def test_many_gradient_parts_of_one_input_are_numbered_not_underscored():
    """An `else if` chain of 36 strings (a segment each): the parts of x's and w's gradients were named
    `grad_x_part`, `grad_x_part_`, ... up to forty underscores."""
    ns = compile_spec(_mode_chain(36), "modes")
    assert re.search(r"[a-z0-9]___", ns["SOURCE"]) is None
    assert "grad_x_part_2 " in ns["SOURCE"]
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    for mode in ("m0", "m35", "other"):
        layer = ns["Modes"](3, mode=mode).double()
        torch.nn.init.normal_(layer.w)
        assert torch.autograd.gradcheck(layer, (x,))
