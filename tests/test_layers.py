"""Every layer of every shipped spec, through every check that applies to it (see layerdsl/testing/layer_checks.py)."""

from __future__ import annotations

import pytest

from layerdsl.testing import configurations
from layerdsl.testing import layer_checks as checks

from .conftest import CASES

PARAMS = [(case, name) for case in CASES.values() for name in checks.applicable(case, checks.CHECKS)]


@pytest.mark.parametrize(("case", "check"), PARAMS, ids=[f"{c.name}-{n}" for c, n in PARAMS])
def test_layer(case, check, package):
    try:
        checks.CHECKS[check][0](case, package)
    except checks.Skip as exc:
        pytest.skip(str(exc))


def test_every_spec_layer_is_checked():
    names = {c.name for c, _ in PARAMS}
    assert names == set(CASES)
    assert {"MyLayer", "RMSNorm", "Swish", "LeNet", "Perceptron"} <= names


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_every_configuration(case, package):
    """The configuration matrix (layerdsl/testing/configurations.py): no check fails in any configuration."""
    outcomes = configurations.run_matrix([case], package)
    failures = [f"[{configurations.label(o.case)}] {o.check}: {o.detail}" for o in outcomes if o.result == "FAIL"]
    assert not failures, "\n".join(failures)
