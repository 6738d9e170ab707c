"""`a, b, c, e = chunk(v, 4, dim = 1)` of a size the checker cannot tell (a cat of a run-time loop's items):
torch.chunk cuts parts of ceil(size / 4), so a size of 5 gives 3 parts (2, 2, 1), 6 gives 3 and 9 gives 3.
The plain module raises Python's ValueError at the unpacking line; the `@function` form, which takes each
part as a slice, raises a ValueError naming the call, its spec line and the parts torch gives
(`autodiff/unpack_checks.py`) rather than giving an empty fourth part, and agrees with the module wherever
the size cuts into 4."""

from __future__ import annotations

import re

import pytest
import torch

from tests.support import assert_same_function, compile_spec, function_and_plain

LAYER = """\
@function
layer Quarters(d: int) {
    param w: [d, d] = uniform(-1, 1)
    example(d = 1)
    forward(x: [T, B, d], y: [B, d]) -> [B, ...] {
        h = y
        outs = []
        for t in range(size_at(x, 0)) {
            h = tanh(h @ w + x[t])
            outs.append(h)
        }
        a, b, c, e = chunk(cat(outs, dim = 1), 4, dim = 1)
        return a * 2.0 + sum(b * c, dim = 1, keepdim = true) + sum(e, dim = 1, keepdim = true)
    }
}
"""


def _inputs(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(steps)
    x = torch.randn(steps, 2, 1, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 1, dtype=torch.float64, requires_grad=True)
    return x, y


def _parts(size: int) -> int:
    return len(torch.chunk(torch.empty(size), 4))


@pytest.mark.parametrize("steps", [4, 5, 6, 7, 8, 9])
def test_both_forms_cut_as_torch_chunk_or_raise_the_same_error(steps):
    ours, plain = function_and_plain(LAYER, "Quarters", 1)
    x, y = _inputs(steps)
    if _parts(steps) == 4:
        assert_same_function(ours, plain, x, y)
        return
    with pytest.raises(ValueError) as module_error:
        plain(x, y)
    with pytest.raises(ValueError) as function_error:
        ours(x, y)
    assert str(module_error.value) == f"not enough values to unpack (expected 4, got {_parts(steps)})"
    assert str(function_error.value) == (
        f"Quarters: chunk() at quarters_0.layer:12 gives {_parts(steps)} tensors here (dim 1 has size {steps}),"
        " unpacked into 4 names"
    )


def test_the_check_names_the_unpacking_spec_line():
    source = compile_spec(LAYER, "quarters")["SOURCE"]
    test = re.search(r"chunk\(\) at quarters\.layer:(\d+) gives \{len\(torch\.chunk\(\w+, 4, 1\)\)\}", source)
    assert test is not None, source
    assert LAYER.splitlines()[int(test.group(1)) - 1].strip().startswith("a, b, c, e = chunk(")


def test_a_size_the_checker_tells_is_not_checked():
    """`[B, 4 * d]` cuts into 4 whatever d is: no run-time check."""
    told = LAYER.replace("cat(outs, dim = 1)", "cat([h, h, h, h], dim = 1)")
    source = compile_spec(told, "told")["SOURCE"]
    assert "torch.chunk" in source  # the module's unpacking
    assert "unpacked into" not in source
