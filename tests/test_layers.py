"""Every layer of every shipped spec, through every check that applies to it (see layerdsl/testing/layer_checks.py)."""

from __future__ import annotations

import pytest

from layerdsl.testing import configurations
from layerdsl.testing import layer_checks as checks

from .conftest import CASES

PARAMS = [(key, case, name) for key, case in CASES.items() for name in checks.applicable(case, checks.CHECKS)]
# The specs of torch.nn (specs/torch_nn/) run their examples here; their other configurations are torch's own
# module test samples, in tests/test_torch_nn_parity.py (the whole matrix of 50 more layers would double the
# suite's time).
MATRIX_CASES = {name: case for name, case in CASES.items() if not case.module.startswith("torch_nn.")}


@pytest.mark.parametrize(("key", "case", "check"), PARAMS, ids=[f"{k}-{n}" for k, _, n in PARAMS])
def test_layer(key, case, check, package):
    try:
        checks.CHECKS[check][0](case, package)
    except checks.Skip as exc:
        pytest.skip(str(exc))


def test_every_spec_layer_is_checked():
    names = {k for k, _, _ in PARAMS}
    assert names == set(CASES)
    assert {"MyLayer", "RMSNorm", "specs/torch_nn/RMSNorm", "Swish", "LeNet", "Perceptron"} <= names


@pytest.mark.parametrize("case", list(MATRIX_CASES.values()), ids=list(MATRIX_CASES))
def test_every_configuration(case, package):
    """The configuration matrix (layerdsl/testing/configurations.py): no check fails in any configuration."""
    outcomes = configurations.run_matrix([case], package)
    failures = [f"[{configurations.label(o.case)}] {o.check}: {o.detail}" for o in outcomes if o.result == "FAIL"]
    assert not failures, "\n".join(failures)
