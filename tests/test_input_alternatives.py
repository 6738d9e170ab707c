"""Inputs of several forms (`targets: long[N, S] | long[L]`, `lengths: long[N] | ints`) and the argument type
`[int?]` (ints whose entries may be none): the generated signatures, the run-time checks of each form, and
the values torch's CTCLoss and adaptive pooling give for them."""

from __future__ import annotations

import inspect

import pytest
import torch

from .support import compile_spec

SPEC = """
layer Ctc(blank: int = 0) {
    forward(
        log_probs: [T, N, C],
        targets: long[N, S] | long[L],
        input_lengths: long[N] | ints,
        target_lengths: long[N] | ints,
    ) {
        return ctc_loss(log_probs, targets, input_lengths, target_lengths, blank = blank, reduction = "none")
    }
}

layer RankOf() {
    forward(x: [B, n] | [n]) {
        if x.ndim == 2 {
            return sum(x, dim = 1)
        }
        return sum(x)
    }
}

layer Pool(output_size: [int?] = [2, none]) {
    forward(input: [N, C, H, W]) {
        return adaptive_avg_pool2d(input, output_size)
    }
}
"""


@pytest.fixture(scope="module")
def ns() -> dict:
    return compile_spec(SPEC, "alternatives")


def _ctc_inputs():
    torch.manual_seed(0)
    log_probs = torch.randn(12, 3, 5, dtype=torch.float64).log_softmax(-1)
    lengths = (4, 2, 3)
    padded = torch.randint(1, 5, (3, 4))
    joined = torch.cat([padded[i, :n] for i, n in enumerate(lengths)])
    return log_probs, padded, joined, lengths


def test_signature_says_tensor_or_tuple_of_ints(ns):
    params = inspect.signature(ns["Ctc"].forward).parameters
    assert params["input_lengths"].annotation == "Tensor | tuple[int, ...]"
    assert params["targets"].annotation == "Tensor"
    assert inspect.signature(ns["Pool"]).parameters["output_size"].annotation == "int | tuple[int | None, ...]"


def test_every_form_of_targets_and_lengths_gives_torchs_loss(ns):
    log_probs, padded, joined, lengths = _ctc_inputs()
    ours, theirs = ns["Ctc"](), torch.nn.CTCLoss(reduction="none")
    input_lengths = (12, 10, 11)
    for targets in (padded, joined):
        for as_tensor in (False, True):
            il = torch.tensor(input_lengths) if as_tensor else input_lengths
            tl = torch.tensor(lengths) if as_tensor else lengths
            torch.testing.assert_close(ours(log_probs, targets, il, tl), theirs(log_probs, targets, il, tl))


def test_a_rank_no_alternative_has_is_refused_naming_them(ns):
    log_probs, padded, _, lengths = _ctc_inputs()
    with pytest.raises(ValueError, match=r"'targets' must have 2 dims \[N, S\] or 1 dim \[L\], got 3 dims"):
        ns["Ctc"]()(log_probs, padded[None], (12, 10, 11), lengths)


def test_each_alternative_checks_its_own_sizes(ns):
    log_probs, padded, _, lengths = _ctc_inputs()
    with pytest.raises(ValueError, match="'targets' has size 2 at dim 0, expected N = 3"):
        ns["Ctc"]()(log_probs, padded[:2], (12, 10, 11), lengths)
    with pytest.raises(ValueError, match="'input_lengths' has size 2 at dim 0"):
        ns["Ctc"]()(log_probs, padded, torch.tensor([12, 10]), lengths)
    m = ns["RankOf"]()
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(m(x), x.sum(1))
    torch.testing.assert_close(m(x[0]), x[0].sum())


def test_a_none_entry_keeps_the_input_size(ns):
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    assert ns["Pool"]()(x).shape == (2, 3, 2, 5)
    torch.testing.assert_close(ns["Pool"]((None, 3))(x), torch.nn.AdaptiveAvgPool2d((None, 3))(x))


def test_ints_arguments_are_passed_on_to_subs():
    spec = compile_spec(
        """
layer Keep(output_size: [int?] = 3) {
    forward(input: [N, C, H, W]) {
        return adaptive_avg_pool2d(input, output_size)
    }
}

layer Pools(output_size: [int?] = [4, none], kernel_size: ints = 2) {
    sub keep = Keep(output_size)
    sub adaptive = nn.AdaptiveAvgPool2d(output_size)
    sub pool = nn.MaxPool2d(kernel_size)
    forward(input: [N, C, H, W]) {
        return keep(input) + adaptive(input) + pool(pool(input))
    }
}
""",
        "pools",
    )
    x = torch.randn(1, 2, 16, 5)
    # two (2, 1) poolings of non-overlapping windows are one (4, 1) pooling
    want = 2 * torch.nn.functional.adaptive_avg_pool2d(x, (4, None)) + torch.nn.functional.max_pool2d(x, (4, 1))
    assert torch.allclose(spec["Pools"](kernel_size=(2, 1))(x), want)
