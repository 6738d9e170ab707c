"""Every shipped layer under `@function` (layerdsl/testing/function_coverage.py): each derived layer agrees
with autograd (outputs, first and second derivatives, float64, its configurations), each refused one is
located in its spec, and docs/function-coverage.md is current.

The whole run (the survey, one generated package, every comparison) takes about 20 s here; it runs once
per session.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from layerdsl.testing import function_coverage as coverage_page

from .conftest import CASES, ROOT, SPECS


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return coverage_page.run(SPECS, tmp_path_factory.mktemp("function_coverage"))


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
