"""A composed Function (codegen/function_sub_calls.py) is the same bytes in every run: its backward declares
the gradients of the values its forward assigns in the order it assigns them (a set's order varies with
PYTHONHASHSEED: `grad_h = grad_m` in some runs, `grad_m = grad_h` in others)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.test_function_sub_calls import SMALL

ROOT = Path(__file__).resolve().parent.parent
EMIT = """
import sys
from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file
spec = parse_file("small.layer", sys.stdin.read())
sys.stdout.write(emit_file(spec, check_program([spec]), "small.layer", {}))
"""


def _emitted(seed: int) -> str:
    env = {**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", EMIT], input=SMALL, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def test_the_gradients_are_declared_in_the_order_forward_assigns_the_values():
    seeds = [_emitted(seed) for seed in (1, 6)]  # `{"h", "m"}` iterates in either order under these
    assert seeds[0] == seeds[1]
    assert "        grad_x = grad_y = grad_m = grad_h = None" in seeds[0]  # `m = first(x)` comes first
