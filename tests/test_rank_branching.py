"""Rank branching: `if x.ndim == 2 { ... }` runs by the input's rank (`x.dim()`), and under it the `...` of
`x: [..., L, n]` is known to be empty, so the branch's shapes are exact (and checked)."""

from __future__ import annotations

import pytest
import torch

from layerdsl.codegen.module import emit_file
from layerdsl.diagnostics import SpecError
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

SPEC = """
layer RowGram(n: int) {
    example(n = 4)

    forward(x: [..., L, n]) -> [..., L, L] {
        if x.ndim == 2 {
            return x @ transpose(x, 0, 1) + 1.0
        }
        return x @ transpose(x, -2, -1)
    }
}
"""


def test_the_branch_is_chosen_by_the_rank():
    spec = parse_file("rank.layer", SPEC)
    source = emit_file(spec, check_program([spec]), "rank.layer", {})
    assert "if x.dim() == 2:" in source
    ns: dict = {}
    exec(compile(source, "rank.py", "exec"), ns)
    m = ns["RowGram"](3)
    x = torch.randn(4, 3)
    torch.testing.assert_close(m(x), x @ x.T + 1.0)
    xs = torch.randn(2, 4, 3)
    torch.testing.assert_close(m(xs), xs @ xs.transpose(-2, -1))


def test_shapes_under_the_branch_are_exact():
    bad = SPEC.replace("x @ transpose(x, 0, 1) + 1.0", "x @ x")  # [L, n] @ [L, n]
    spec = parse_file("rank.layer", bad)
    with pytest.raises(SpecError, match="rank.layer:7:20"):
        check_program([spec])
    spec = parse_file("rank.layer", SPEC)
    assert not check_program([spec]).shapes["RowGram"].unproven  # both returns proven against [..., L, L]
