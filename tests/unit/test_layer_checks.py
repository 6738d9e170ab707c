"""The run-time checks give their verdicts by raising CheckFailed, so a broken layer fails them even under
`python -O`, which strips `assert` statements."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.autograd.gradcheck import GradcheckError

from layerdsl.testing import layer_checks as checks

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "layerdsl_broken_layers_under_test"
SPEC = """\
@function
layer LearnedOffset(features: int) {
    param offset: [features] = zeros

    example(features = 4)

    forward(x: [..., features]) -> [..., features] {
        return x + offset
    }
}
"""


class _DoubleWithWrongGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return grad  # should be 2 * grad


def _layer_with(**methods):
    """A breakage: the generated layer with some methods replaced."""
    return lambda module: {"LearnedOffset": type("LearnedOffset", (module.LearnedOffset,), methods)}


def _initialise_once(self) -> None:
    """A reset_parameters that initialises at construction only: later calls leave the values as they are.
    (A reset that does nothing at all leaves torch.empty's memory, which two builds may or may not share:
    the check would fail at a different step from run to run.)"""
    if not getattr(self, "initialised", False):
        torch.nn.init.zeros_(self.offset)
        self.initialised = True


# check -> a breakage of the property it looks for: module -> the module attributes to replace
BREAKAGES = {
    "shapes": _layer_with(forward=lambda self, x: (x + self.offset)[..., :1]),
    "gradcheck": _layer_with(forward=lambda self, x: _DoubleWithWrongGradient.apply(x) + self.offset),
    "reset_parameters": _layer_with(reset_parameters=_initialise_once),
    "repr": _layer_with(extra_repr=lambda self: ""),
    "function-vs-autograd": lambda module: {"learned_offset": lambda x, offset: x + 2 * offset},
}


def generate(root: Path) -> checks.Case:
    """SPEC's package, generated under `root` and importable; its one case."""
    spec = root / "specs" / "learned_offset.layer"
    spec.parent.mkdir(parents=True)
    spec.write_text(SPEC, encoding="utf-8")
    (case,) = checks.generate_package([str(spec.parent)], root, PACKAGE)
    return case


def verdicts_of_broken_layers(root: Path) -> dict[str, list[str]]:
    """Each check of BREAKAGES, run on a copy of SPEC's layer broken for it: (result, detail)."""
    case = generate(root)
    module = importlib.import_module(f"{PACKAGE}.{case.module}")
    verdicts = {}
    for check, breakage in BREAKAGES.items():
        broken = breakage(module)
        intact = {name: getattr(module, name) for name in broken}
        vars(module).update(broken)
        try:
            verdicts[check] = list(checks.run_check(check, case, PACKAGE))
        finally:
            vars(module).update(intact)
    return verdicts


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> checks.Case:
    return generate(tmp_path_factory.mktemp("broken"))


@pytest.mark.parametrize("check", sorted(BREAKAGES))
def test_the_intact_layer_passes(case, check):
    assert checks.run_check(check, case, PACKAGE)[0] == "ok"


@pytest.mark.parametrize("check", sorted(BREAKAGES))
def test_a_broken_layer_raises_check_failed(case, check, monkeypatch):
    module = importlib.import_module(f"{PACKAGE}.{case.module}")
    for name, value in BREAKAGES[check](module).items():
        monkeypatch.setattr(module, name, value)
    with pytest.raises(checks.CheckFailed) as failure:
        checks.CHECKS[check][0](case, PACKAGE)
    assert str(failure.value)
    result, detail = checks.run_check(check, case, PACKAGE)
    assert (result, detail) == ("FAIL", str(failure.value))


def test_checks_fail_under_python_dash_O(tmp_path):
    script = (
        "import json, sys; from pathlib import Path; "
        "from tests.unit.test_layer_checks import verdicts_of_broken_layers; "
        "print(json.dumps({'optimize': sys.flags.optimize, 'verdicts': verdicts_of_broken_layers(Path(sys.argv[1]))}))"
    )
    run = subprocess.run(
        [sys.executable, "-O", "-c", script, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.splitlines()[-1])
    assert report["optimize"] == 1
    assert set(report["verdicts"]) == set(BREAKAGES)
    for check, (result, detail) in report["verdicts"].items():
        assert result == "FAIL" and detail, f"{check} under -O: {result} {detail!r}"


CTC_SPEC = """\
layer Ctc(blank: int = 4) {
    example(C = 5)

    forward(log_probs: [T, N, C], targets: long[N, S], input_lengths: long[N], target_lengths: long[N]) {
        return ctc_loss(log_probs, targets, input_lengths, target_lengths, blank = blank, zero_infinity = true)
    }
}
"""


def test_log_probs_operands_are_drawn_and_checked_as_log_probabilities(tmp_path):
    """torch's ctc_loss derivative holds only at log-probabilities: the checks draw `log_probs` normalised
    and differentiate it through log_softmax, so gradcheck passes; plain random values would fail it."""
    spec = tmp_path / "specs" / "ctc.layer"
    spec.parent.mkdir(parents=True)
    spec.write_text(CTC_SPEC, encoding="utf-8")
    (case,) = checks.generate_package([str(spec.parent)], tmp_path, "layerdsl_ctc_under_test")
    assert checks.log_prob_inputs(case) == {"log_probs"}
    log_probs = checks.inputs(case)[0]
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(log_probs.shape[:-1], dtype=log_probs.dtype))
    checks.check_gradcheck(case, "layerdsl_ctc_under_test")
    m = checks.build(case, "layerdsl_ctc_under_test")
    raw = [torch.randn(log_probs.shape, dtype=torch.float64, requires_grad=True), *checks.inputs(case)[1:]]
    with pytest.raises(GradcheckError):
        torch.autograd.gradcheck(lambda x: m(x, *raw[1:]), (raw[0],), eps=1e-6, atol=1e-5, rtol=1e-4)
