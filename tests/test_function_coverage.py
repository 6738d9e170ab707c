"""Every shipped layer under `@function` (layerdsl/testing/function_coverage.py): each derived layer agrees
with autograd (outputs, first and second derivatives, float64, its configurations), each refused one is
located in its spec, and docs/function-coverage.md is current.

The survey and its generated package are the session's `function_derivation` (tests/conftest.py), which
tests/test_function_prelude.py reads too; the comparisons run once per session.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from layerdsl.testing import function_coverage as coverage_page

from .conftest import CASES, ROOT


@pytest.fixture(scope="module")
def result(function_derivation):
    return function_derivation.coverage, coverage_page.compare_all(function_derivation)


def test_every_derived_layer_agrees_with_autograd(result):
    _, comparisons = result
    failures = [f"{c.layer} {f}" for c in comparisons for f in c.failures]
    assert not failures, "\n".join(failures)


def test_every_layer_is_derived_or_refused(result):
    coverage, comparisons = result
    assert set(coverage.layers) == set(CASES)
    assert set(coverage.derived).isdisjoint(coverage.refusals)
    assert set(coverage.derived) | coverage.refusals.keys() == set(CASES)
    assert {c.layer for c in comparisons} == set(coverage.derived)
    assert all(c.configurations > 0 for c in comparisons if c.layer not in coverage.written_backward)
    assert coverage.written <= set(coverage.derived)  # the shipped @function layers derive


def test_a_layer_whose_function_name_is_taken_is_still_tried(result):
    """`Sigmoid` with @function generates `SigmoidFunction`, the name of the tutorial's layer: that layer
    is renamed in the copies, and both are compared."""
    coverage, _ = result
    if "Sigmoid" in CASES and "SigmoidFunction" in CASES:
        assert {"Sigmoid", "SigmoidFunction"} <= set(coverage.derived)


def test_refusals_are_located_in_the_shipped_spec(result):
    """Each refusal's location is a line of the layer's own spec, inside that layer."""
    coverage, _ = result
    for name, found in coverage.refusals.items():
        case = CASES[name]
        for r in found:
            assert r.path == case.layer.path and r.message
            lines = (ROOT / r.path).read_text(encoding="utf-8").split("\n")
            assert 1 <= r.col <= len(lines[r.line - 1]) + 1, r.location
            header = max(k for k, text in enumerate(lines[: r.line], 1) if re.match(r"\s*layer\s+\w", text))
            if r.message.endswith(f"inlined into '{name}')"):  # a sub's statement, where its layer writes it
                continue
            assert re.match(rf"\s*layer\s+{name}\b", lines[header - 1]), f"{r.location} is not in layer {name}"


def test_page_is_current(result):
    expected = coverage_page.render(*result)
    page = ROOT / coverage_page.DOC
    assert (
        page.exists() and page.read_text(encoding="utf-8") == expected
    ), "docs/function-coverage.md is stale: run `python -m layerdsl.testing.function_coverage`"


def test_page_groups_refusals_by_message(result):
    coverage, comparisons = result
    text = coverage_page.render(coverage, comparisons)
    for message, found in coverage_page.reasons(coverage).items():
        assert f"### {message}" in text
        assert all(f"`{r.location}`" in text for r in found)


WRONG = """\
@function
layer WrongBackward() {
    forward(x: [N]) -> [N] {
        return x * x
    }
    backward(grad_y) {
        grad x = grad_y * x
    }
}

layer Derived() {
    forward(x: [N]) -> [N] {
        return sin(x) * x
    }
}

layer Refused(n: int) {
    buffer total: [n] = zeros
    example(n = 3)
    forward(x: [n]) -> [n] {
        update total = total + x
        return x
    }
}
"""


def test_the_comparison_can_fail_and_refusals_are_recorded(tmp_path):
    """A written backward that forgets a factor 2 differs from autograd; a layer that updates a buffer is
    refused where it does (or derives, once buffer updates derive); a plain layer derives and agrees."""
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "few.layer").write_text(WRONG, encoding="utf-8")
    coverage, comparisons = coverage_page.run(specs, tmp_path / "work", "layerdsl_function_coverage_few")
    by_layer = {c.layer: c for c in comparisons}
    assert by_layer["WrongBackward"].failures and "differ" in by_layer["WrongBackward"].failures[0]
    assert by_layer["Derived"].configurations == 2 and not by_layer["Derived"].failures  # two sets of sizes
    if "Refused" in coverage.refusals:
        [refusal] = coverage.refusals["Refused"]
        assert refusal.location == "specs/few.layer:21:9"
    text = coverage_page.render(coverage, comparisons)
    assert "## Differences from autograd" in text and "`WrongBackward`" in text


def test_a_backward_without_second_derivatives_is_caught(tmp_path, monkeypatch):
    """The double-backward comparison fails for a Function whose backward autograd cannot go through."""
    import torch

    from layerdsl.testing.function_vs_autograd import compare_second_derivatives, compare_with_functional
    from layerdsl.testing.layer_checks import CheckFailed, build, functional_form, inputs

    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "few.layer").write_text(WRONG, encoding="utf-8")
    coverage = coverage_page.survey(specs, tmp_path / "work")
    package = "layerdsl_function_coverage_detached"
    [case] = [
        c for c in coverage_page.derived_cases(coverage, specs, tmp_path / "work", package) if c.name == "Derived"
    ]
    module, functional = build(case, package), functional_form(case, package)
    function = type(module).forward.__globals__["DerivedFunction"]
    derived_backward = function.backward

    def detached(ctx, *grads):
        with torch.no_grad():
            return derived_backward(ctx, *grads)

    monkeypatch.setattr(function, "backward", staticmethod(detached))
    compare_with_functional(case, module, functional, inputs)  # first derivatives still agree
    with pytest.raises(CheckFailed, match="second derivatives differ"):
        compare_second_derivatives(case, module, functional, inputs)


def test_a_layer_without_functional_form_is_compared_with_its_plain_module(tmp_path):
    """A layer with subs has no functional form: its Function is compared with the plain module of the
    shipped spec, given the same state (here layers that have one, to see the comparison agree, and fail
    for the written backward that forgets a factor 2)."""
    from layerdsl.testing.function_vs_autograd import compare_with_functional
    from layerdsl.testing.layer_checks import CheckFailed, build, generate_package, inputs

    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "few.layer").write_text(WRONG, encoding="utf-8")
    coverage = coverage_page.survey(specs, tmp_path / "work")
    package = "layerdsl_function_coverage_plain_few"
    cases = {c.name: c for c in coverage_page.derived_cases(coverage, specs, tmp_path / "work", package)}
    plain = f"{package}_plain"
    plain_specs = tmp_path / "plain_specs" / "specs"
    plain_specs.mkdir(parents=True)
    backward = WRONG[WRONG.index("    backward") : WRONG.index("}\n\nlayer Derived")]
    (plain_specs / "few.layer").write_text(WRONG.replace("@function\n", "").replace(backward, ""), encoding="utf-8")
    generate_package([str(plain_specs)], tmp_path / "plain", plain)
    module = build(cases["Derived"], package)
    compare_with_functional(
        cases["Derived"],
        module,
        coverage_page.as_functional(cases["Derived"], module, build(cases["Derived"], plain)),
        inputs,
    )
    module = build(cases["WrongBackward"], package)
    reference = coverage_page.as_functional(cases["WrongBackward"], module, build(cases["WrongBackward"], plain))
    with pytest.raises(CheckFailed, match="gradients differ"):
        compare_with_functional(cases["WrongBackward"], module, reference, inputs)


# What the coverage run found, each the smallest layer that showed it (all agree with autograd now):
# an `ints` size given as an int and a stride left none (pooling's ATen backward took neither); an
# optional padding_idx or loss weight left none (read unconditionally); the sum over `dim = [-2, -1]`
# unsqueezed back in the wrong order; an optional input, absent, standing in for another value's shape;
# an input declared without a shape taken for a vector (nll_loss's class dim 0); a norm's weight declared
# with `if`, absent (group norm's gradient multiplied by it). And one refusal that was a bug: `if weight
# != none` on a tensor argument (fixed at construction, as whether an optional input is given).
FOUND = """\
@function
layer WeightedSquare(weight: tensor? = none) {
    forward(x: [N]) -> [N] {
        loss = x * x
        if weight != none {
            loss = loss * weight
        }
        return loss
    }
}

@function
layer GroupNormNoAffine(groups: int, channels: int, affine: bool = true) {
    param weight: [channels] = ones if affine
    example(groups = 2, channels = 4)
    forward(x: [B, channels, L]) -> [B, channels, L] {
        return group_norm(x, groups, weight)
    }
}

@function
layer PoolIntKernel(kernel_size: ints, stride: ints? = none) {
    example(kernel_size = 2)
    forward(x: [C, L]) {
        return avg_pool1d(x, kernel_size, stride)
    }
}

@function
layer Pool2dNoStride(kernel_size: ints, stride: ints? = none) {
    example(kernel_size = 2)
    forward(x: [C, H, W]) {
        return avg_pool2d(x, kernel_size, stride)
    }
}

@function
layer LpPoolIntKernel(kernel_size: ints) {
    example(kernel_size = 2)
    forward(x: [C, L]) {
        return lp_pool1d(x, 2.0, kernel_size)
    }
}

@function
layer LookupNoPadding(num: int, dim: int, padding_idx: int? = none) {
    param weight: [num, dim] = normal
    example(num = 5, dim = 3)
    forward(i: long[...]) -> [..., dim] {
        return embedding(i, weight, padding_idx)
    }
}

@function
layer SumLastTwo(n: int) {
    param w: [n, 1, 3] = normal
    example(n = 4)
    forward(x: [..., 3]) -> [..., n] {
        return sum(unsqueeze(unsqueeze(x, -2), -2) * w, dim = [-2, -1])
    }
}

@function
layer OptionalStateShape(n: int, d: int) {
    param w: [n, 2 * d] = normal
    param s: [d] = ones
    example(n = 3, d = 4)
    forward(x: [..., n], h: [..., d]? = none) -> [..., d] {
        g = x @ w
        a = g[..., 0:d]
        if h != none {
            return a * h
        }
        return tanh(a + g[..., d : 2 * d] * s)
    }
}
"""

# Under torch_nn/: compared on their example only (an input without a declared shape is drawn [..., k],
# which the matrix's other ranks of `...` do not fit with the target).
FOUND_LOSSES = """\
@function
layer NllNoWeight(weight: tensor? = none, reduction: str = "none") {
    forward(input, target: long[...]) {
        return nll_loss(input, target, weight, reduction = reduction)
    }
}

@function
layer NllClassDim(reduction: str = "none") {
    forward(input, target: long[...]) {
        return nll_loss(input, target, reduction = reduction)
    }
}
"""


def test_what_the_coverage_found_stays_fixed(tmp_path):
    specs = tmp_path / "specs"
    (specs / "torch_nn").mkdir(parents=True)
    (specs / "found.layer").write_text(FOUND, encoding="utf-8")
    (specs / "torch_nn" / "losses.layer").write_text(FOUND_LOSSES, encoding="utf-8")
    coverage, comparisons = coverage_page.run(specs, tmp_path / "work", "layerdsl_function_coverage_found")
    assert not coverage.refusals
    assert len(comparisons) == FOUND.count("@function") + FOUND_LOSSES.count("@function")
    failures = [f"{c.layer} {f}" for c in comparisons for f in c.failures]
    assert not failures, "\n".join(failures)
    import importlib

    import torch

    found = importlib.import_module("layerdsl_function_coverage_found.found")
    weight = torch.rand(3, dtype=torch.float64)
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    layer = found.WeightedSquare(weight=weight)
    assert torch.autograd.gradcheck(layer, (x,)) and torch.autograd.gradgradcheck(layer, (x,))
    assert torch.allclose(layer(x), x * x * weight)


def test_with_function_keeps_the_lines_of_the_spec():
    from layerdsl.syntax.parser import parse_file

    parsed = parse_file("few.layer", WRONG)
    copy = coverage_page.with_function(WRONG, parsed.layers, {"Derived", "Refused"}, {})
    lines = copy.text.split("\n")
    assert lines.count("@function") == 3
    for k, line in enumerate(lines, 1):
        if line != "@function":
            assert WRONG.split("\n")[copy.original_line[k] - 1] == line


def test_page_path_is_the_docs_page():
    assert Path(ROOT / coverage_page.DOC).parent.name == "docs"
