"""A composed Function (autodiff/sub_calls.py) checks what the module of a layer it calls checks before that
layer's Function's apply, where the call is on a value the Function computes (the norm after a loop): its
inputs and its `require`s, on the value passed and the members the call is given, raising the plain
module's error (codegen/function_sub_calls.call_checks)."""

from __future__ import annotations

import re

import pytest
import torch

from tests.support import compile_spec
from tests.test_function_sub_calls import SMALL

# Norm's own `require` on its input's rows, which the Function's forward reaches only after the loop
CAPPED = SMALL.replace(
    "        return layer_norm(x, [d], weight, none, eps)",
    '        require size_at(x, 0) <= 4, "at most 4 rows"\n        return layer_norm(x, [d], weight, none, eps)',
)


def _stacks(text: str, stem: str, n: int, d: int):
    made = []
    for k, spec in enumerate([text, text.replace("@function\n", "")]):
        ns = compile_spec(spec, f"{stem}_{k}")
        torch.manual_seed(0)
        made.append(ns["Stack"](ns["Block"](3), n, ns["Norm"](d)).double())
    made[1].load_state_dict(made[0].state_dict())
    return made


def _message(run, *inputs) -> str:
    with pytest.raises(ValueError) as caught:
        run(*inputs)
    return re.sub(r"capped_\d\.layer:\d+", "capped.layer", str(caught.value))  # the plain spec's lines differ


@pytest.mark.parametrize("n", [0, 2])
def test_a_require_of_a_layer_called_after_the_loop_is_checked_as_its_module_does(n):
    ours, plain = _stacks(CAPPED, "capped", n, 3)
    x = torch.randn(5, 3, dtype=torch.float64)
    assert _message(ours, x) == _message(plain, x)
    assert _message(ours, x).startswith("Norm: at most 4 rows (`require x.size(0) <= 4` at capped.layer;")
    good = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(good), plain(good))


@pytest.mark.parametrize("n", [0, 2])
def test_a_layer_called_after_the_loop_on_a_value_of_another_size_says_which(n):
    ours, plain = _stacks(SMALL, "sized", n, 4)
    x = torch.randn(2, 3, dtype=torch.float64)
    assert _message(ours, x) == _message(plain, x)
    assert _message(ours, x).startswith("Norm: input 'x' has size 3 at dim -1, expected d = 4")
