"""Deriving a `@function` layer whose loop of a written count is unrolled: the time grows gently with the
count (the save choice prices each candidate on edges found once, `codegen/function.py` `_ReadKeys`; the
common-factor pass learns the statements once per rewrite, `optimize/sharing.py`), and the derived
Function still agrees with the plain module."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest
import torch

from tests.support import compile_spec


def _unrolled(steps: int, function: bool = True) -> str:
    return f"""\
{"@function" + chr(10) if function else ""}layer Unrolled(d: int) {{
    param w: [d, d] = uniform(-0.5, 0.5)
    example(d = 4)
    forward(x: [B, d]) {{
        h = x
        for t in range({steps}) {{
            h = tanh(h @ w) + sigmoid(h) * h
        }}
        return h
    }}
}}
"""


def test_generating_a_64_step_unrolled_function_takes_bounded_cpu_time(tmp_path):
    path = tmp_path / "unrolled.layer"
    path.write_text(_unrolled(64), encoding="utf-8")
    # The bound is on the child's CPU time (about 60 s on a loaded machine, 210 s before: the save choice
    # pricing each candidate by walking the whole tape again): wall time on a loaded machine says little,
    # and the wall timeout only stops a run that would take minutes.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "layerdsl", "show", str(path)],  # `check` derives no backward
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "LAYERDSL_NO_CACHE": "1"},
        )
    except subprocess.TimeoutExpired:
        pytest.fail("layerdsl show ran past 600 s")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "class Unrolled" in run.stdout
    assert cpu < 120, f"layerdsl show took {cpu:.1f} s of CPU"


def test_a_16_step_unrolled_function_agrees_with_the_plain_module():
    modules = []
    for k, function in enumerate([True, False]):
        torch.manual_seed(0)
        modules.append(compile_spec(_unrolled(16, function), f"unrolled_time_{k}")["Unrolled"](4).double())
    ours, plain = modules
    plain.load_state_dict(ours.state_dict())
    x = torch.linspace(-1.5, 1.5, 12, dtype=torch.float64).reshape(3, 4).requires_grad_()
    got, want = ours(x), plain(x)
    torch.testing.assert_close(got, want)
    weights = torch.linspace(-1, 2, got.numel(), dtype=got.dtype).reshape(got.shape)
    firsts = [
        torch.autograd.grad((out * weights).sum(), [x, *module.parameters()], create_graph=True)
        for module, out in [(ours, got), (plain, want)]
    ]
    for g, w in zip(*firsts, strict=True):
        torch.testing.assert_close(g, w)
    probe = torch.linspace(0.5, -1.5, x.numel(), dtype=x.dtype).reshape(x.shape)
    seconds = [torch.autograd.grad((grads[0] * probe).sum(), x)[0] for grads in firsts]
    torch.testing.assert_close(seconds[0], seconds[1])
