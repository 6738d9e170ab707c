"""The operation table's formulas for list operands: cat's, stack's and einsum's per-tensor gradients are
rows' data in the spec language, instantiated once per tensor (`item`, at `index`). What a formula cannot
say by itself (where a cat's tensor starts, an einsum gradient's equation and operands) is a folded
internal row (`Op.folded`): computed where the formula is instantiated, never emitted."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from layerdsl.autodiff.formulas import FOLDS, Underivable, einsum_grad_equation, formula
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import walk
from layerdsl.language.ops import OPS

from .function_agreement import compare_with_plain
from .support import compile_spec
from .test_function_sub_lists import plain_pair


def test_every_list_operand_formula_is_the_spec_language_over_the_rows_operands():
    lists = [(op, p.name) for op in OPS.values() for p in op.params if p.tensors and op.grads.get(p.name)]
    assert {op.name for op, _ in lists} >= {"cat", "stack", "einsum"}
    for op, param in lists:
        nodes = list(walk(formula(op.name, param)))
        assert {n.func for n in nodes if isinstance(n, N.Call)} <= set(OPS), op.name
        names = {p.name for p in op.params} | {"grad", "result", "item", "index"}
        assert {n.id for n in nodes if isinstance(n, N.Name)} <= names, op.name


def test_every_folded_row_is_internal_and_has_its_value():
    folded = {op.name for op in OPS.values() if op.folded}
    assert folded == set(FOLDS) >= {"cat_offset", "einsum_grad_equation", "einsum_grad_operands"}
    assert all(OPS[name].internal for name in folded)


@pytest.mark.parametrize(
    ("equation", "index", "wanted"),
    [
        ("bi,ik->bk", 0, "bk,ik->bi"),
        ("bi,ik->bk", 1, "bk,bi->ik"),
        ("ijk,bi,bj->bk", 0, "bk,bi,bj->ijk"),
        ("ijk,bi,bj->bk", 2, "bk,ijk,bi->bj"),
        ("i,bk,k->bk", 1, "bk,i,k->bk"),  # i, only the first operand's, is summed in the gradient
        ("bi,bi->", 1, ",bi->bi"),  # a full contraction: the incoming gradient is a number
    ],
)
def test_an_einsum_gradients_equation(equation, index, wanted):
    assert einsum_grad_equation(equation, index) == wanted


@pytest.mark.parametrize(
    ("equation", "index", "why"),
    [("i,bk,k->bk", 0, "only one tensor has"), ("ii,i->i", 0, "diagonal")],
)
def test_an_einsum_operand_without_a_gradient_equation(equation, index, why):
    with pytest.raises(Underivable, match=why):
        einsum_grad_equation(equation, index)


LISTS = """
@function
layer Lists(n: int, m: int) {
    param w: [m]
    buffer c: [n] = ones
    example(n = 2, m = 3)
    forward(a: [B, n], b: [B, m], d: [B, n]) {
        y[r, k] = sum[i](c[i] * b[r, k] * w[k])
        s = stack([a, d * 2, tanh(a)], dim = -1)
        return cat([s[..., 0], y * w, d, s[..., 2]], dim = 1)
    }
}
"""


def test_cat_stack_and_einsum_derive_from_the_rows():
    """`c` (a buffer) alone has `i`: its gradient, which no einsum gives, is not asked for, so the others'
    are derived (each an einsum that sums c over i)."""
    ours, plain = plain_pair(LISTS, "lists", "Lists", n=2, m=3)
    inputs = [torch.randn(2, *shape, dtype=torch.float64, requires_grad=True) for shape in [(2,), (3,), (2,)]]
    compare_with_plain(ours, plain, *inputs)


@pytest.mark.parametrize(
    ("op", "param"),
    [("cat", "tensors"), ("stack", "tensors"), ("einsum", "operands")],
)
def test_the_derivation_reads_the_list_formulas_from_the_table(monkeypatch, op, param):
    """Another formula on the row is what the derived backward computes."""
    before = compile_spec(LISTS, f"lists_{op}")["SOURCE"]
    row = OPS[op]
    monkeypatch.setitem(OPS, op, dataclasses.replace(row, grads={**row.grads, param: f"{row.grads[param]} * 7"}))
    after = compile_spec(LISTS, f"lists_{op}_times_7")["SOURCE"]
    times_7 = re.compile(r"(?<![\w:.])7(?![\w.])")  # `7 * g`, `.mul_(7)`: not a line number (`lists.layer:7`)
    assert not times_7.search(before) and times_7.search(after)


def test_a_cat_offset_sums_the_sizes_of_the_tensors_before():
    source = compile_spec(LISTS, "lists_offsets")["SOURCE"]
    starts = re.findall(r"torch\.narrow\(grad_out, 1, ([^,]*),", source)
    assert "0" in starts and sorted(s.count(" + ") for s in starts) == [0, 0, 1, 2]
