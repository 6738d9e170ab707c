"""The configuration matrix, and the four bugs of issue 16 it exists to catch.

Each of the layers in tests/configuration_specs/issue16_bugs.layer passed every check on its example and
failed in another configuration (or in a check that was wrong): an optional member switched off, a `[..., n]`
input given as a vector, a spec `sub` drawing random numbers before its parent's reset_parameters(), a
float buffer treated as trainable by the @function agreement check. Each test here fails without its fix.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from layerdsl.testing import configurations as matrix
from layerdsl.testing import layer_checks as checks

ROOT = Path(__file__).resolve().parent.parent
SPECS = Path(__file__).resolve().parent / "configuration_specs"
PACKAGE = "layerdsl_configuration_specs_under_test"


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, checks.Case]:
    root = tmp_path_factory.mktemp("configurations")
    return {c.name: c for c in checks.generate_package([str(SPECS)], root, PACKAGE)}


@pytest.fixture(scope="module")
def layers(cases):
    import importlib

    return importlib.import_module(f"{PACKAGE}.{cases['AddBias'].module}")


def failures(case: checks.Case) -> list[str]:
    outcomes = matrix.run_matrix([case], PACKAGE)
    return [f"[{matrix.label(o.case)}] {o.check}: {o.detail}" for o in outcomes if o.result == "FAIL"]


# ------------------------------------------------------------------ the four bugs


def test_an_absent_optional_member_has_no_shape_to_save(layers):
    x = torch.randn(2, 3, requires_grad=True)
    layers.AddBias(3, bias=False)(x).sum().backward()
    assert torch.allclose(x.grad, 1 - torch.tanh(x.detach()) ** 2)


def test_an_ellipsis_input_given_as_a_vector_has_a_backward(layers):
    layer = layers.VecMat(3, 2).double()
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    layer(x).sum().backward()
    assert torch.allclose(layer.w.grad, x.detach()[:, None].expand(3, 2))
    w = layer.w.detach().requires_grad_(True)
    assert torch.autograd.gradgradcheck(layers.VecMatFunction.apply, (x, w))


def test_construction_and_reset_parameters_agree_with_a_spec_sub(layers):
    torch.manual_seed(0)
    built = layers.Outer(3)
    torch.manual_seed(0)
    built.reset_parameters()
    torch.manual_seed(0)
    assert torch.equal(layers.Outer(3).w, built.w)


def test_a_float_buffer_takes_no_gradient_in_the_agreement_check(cases):
    assert checks.run_check("function-vs-autograd", cases["Scaled"], PACKAGE)[0] == "ok"


@pytest.mark.parametrize("layer", ["AddBias", "VecMat", "Outer", "Scaled"])
def test_the_matrix_passes_on_each_fixed_layer(cases, layer):
    assert not failures(cases[layer])


@pytest.mark.parametrize(
    ("layer", "needed"),
    [
        ("AddBias", lambda c: c.args.get("bias") is False),  # the optional member absent
        ("VecMat", lambda c: c.lead == () and c.dtype == torch.float64),  # x a vector, with a gradcheck
        ("Outer", lambda c: True),  # any configuration runs reset_parameters
        ("Scaled", lambda c: True),  # any configuration runs function-vs-autograd
    ],
)
def test_the_matrix_holds_the_configuration_each_bug_needs(cases, layer, needed):
    """What makes the matrix catch the bugs: the configuration each one needs is in it; the example's
    configuration alone (bias present, one leading dim) holds neither of the first two."""
    assert any(needed(c) for c in matrix.configurations(cases[layer]))
    example = cases[layer]
    assert not (layer in ("AddBias", "VecMat") and needed(checks.Config(example.args(), {}, example.lead())))


# ------------------------------------------------------------------ the matrix itself


def test_every_axis_of_the_matrix(cases):
    configs = matrix.configurations(cases["AddBias"])
    assert {c.args["bias"] for c in configs} == {True, False}
    assert {len(c.lead) for c in configs} == {0, 1, 2}
    assert {c.dtype for c in configs} == {torch.float32, torch.float64}
    assert len({c.dims["..."] for c in configs}) == 2
    assert len(configs) == 2 * 3 * 2 * 2


def test_training_varies_where_the_forward_reads_it():
    from tests.conftest import CASES

    assert {c.training for c in matrix.configurations(CASES["RunningCenter"])} == {True, False}
    assert {c.training for c in matrix.configurations(CASES["MyLayer"])} == {None}


def test_a_bool_the_example_gives_is_fixed(tmp_path):
    from layerdsl.driver.pipeline import check

    text = (SPECS / "issue16_bugs.layer").read_text(encoding="utf-8")
    (tmp_path / "narrowed.layer").write_text(text.replace("example(n = 3)", "example(n = 3, bias = false)", 1))
    sources, files, _ = check([str(tmp_path)])
    case = next(c for c in checks.cases(files, sources) if c.name == "AddBias")
    narrowed = matrix.configurations(case)
    assert case.args()["bias"] is False and {"bias" in c.args for c in narrowed} == {False}
    assert len(narrowed) == 3 * 2 * 2


def test_the_summary_names_the_failing_configuration(cases):
    case = cases["AddBias"]
    outcomes = matrix.run_matrix([case], PACKAGE)
    config = outcomes[0].case.config
    outcomes.append(matrix.Outcome(outcomes[0].case, "gradcheck", "FAIL", "Jacobian mismatch"))
    text = matrix.summary(outcomes)
    assert "AddBias" in text and "24" in text.splitlines()[1]
    assert f"AddBias [{config.label()}] gradcheck: Jacobian mismatch" in text


def _widened(tmp_path, examples: str) -> checks.Case:
    """AddBias with its example line replaced by `examples`."""
    from layerdsl.driver.pipeline import check

    text = (SPECS / "issue16_bugs.layer").read_text(encoding="utf-8")
    (tmp_path / "widened.layer").write_text(text.replace("example(n = 3)", examples, 1))
    sources, files, _ = check([str(tmp_path)])
    return next(c for c in checks.cases(files, sources) if c.name == "AddBias")


def test_more_examples_widen_the_matrix(tmp_path):
    """Each example is expanded like the first: bias free where the example leaves it, fixed where it gives it."""
    case = _widened(tmp_path, "example(n = [3, 5])\n    example(n = 4, bias = false)")
    configured = list(matrix.configured_cases(case))
    assert len(configured) == 24 + 24 + 12
    by_n = {n: [c for c in configured if c.args()["n"] == n] for n in (3, 4, 5)}
    assert {c.args()["bias"] for c in by_n[5]} == {True, False}
    assert {c.args()["bias"] for c in by_n[4]} == {False}
    assert [c.seed_label() for c in matrix.seeded_cases(case)] == ["", "n=5", "n=4, bias=false"]


def test_a_configuration_two_examples_share_runs_once(tmp_path):
    case = _widened(tmp_path, "example(n = 3)\n    example(n = 3, bias = true)")
    assert len(list(matrix.configured_cases(case))) == 24


def test_the_summary_counts_every_example_and_names_the_failing_one(tmp_path):
    case = _widened(tmp_path, "example(n = [3, 5])")
    configured = list(matrix.configured_cases(case))
    outcomes = [matrix.Outcome(c, "shapes", "ok", "") for c in configured]
    failing = next(c for c in configured if c.seed == 1)
    outcomes.append(matrix.Outcome(failing, "gradcheck", "FAIL", "Jacobian mismatch"))
    text = matrix.summary(outcomes)
    assert text.splitlines()[1].split()[:2] == ["AddBias", "48"]
    assert f"AddBias [n=5, {failing.config.label()}] gradcheck: Jacobian mismatch" in text


def test_an_example_of_an_input_distribution_feeds_the_layer(tmp_path):
    case = _widened(tmp_path, "example(n = 3, x = [normal(0, 1), uniform(5, 6)])")
    fed = [checks.inputs(seeded)[0] for seeded in matrix.seeded_cases(case)]
    assert fed[0].min() < 5 and bool((fed[1] >= 5).all())


def _layerdsl_test(*options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "layerdsl", "test", str(SPECS), *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )


def test_layerdsl_test_runs_the_matrix():
    run = _layerdsl_test()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "configuration matrix:" in run.stdout
    assert " 0 failed" in run.stdout


def test_layerdsl_test_example_only_skips_the_matrix():
    run = _layerdsl_test("--example-only")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "configuration matrix:" not in run.stdout and "AddBias" in run.stdout
