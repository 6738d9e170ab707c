"""A dim's canonical text (`semantics.shapes.poly_text`) is read back as Python where the Function writes a
size from the leaves' sizes (`autodiff.shapes`, `autodiff.shape_sources`): it must mean the dim's value. A
quotient is an opaque factor written without parentheses, so beside a coefficient, another factor, a power or
a leading minus it was read otherwise (`2 * (d // 4)` written `2 * d // 4`, which is `(2 * d) // 4`)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from layerdsl.semantics.shapes import poly, poly_text
from layerdsl.syntax.parser import parse_expr

_LEAVES = st.sampled_from(["d", "n", "2", "3"])


def _expr(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    ops = st.sampled_from(["+", "-", "*", "//", "%"])
    binary = st.tuples(children, ops, children).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
    return st.one_of(binary, children.map(lambda c: f"-({c})"), children.map(lambda c: f"({c}) ** 2"))


EXPRS = st.recursive(_LEAVES, _expr, max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(EXPRS)
def test_a_dims_text_read_as_python_has_its_value(text):
    written = poly_text(poly(parse_expr(text)))
    for d in range(0, 9):
        for n in (1, 2, 5):
            try:
                value = eval(text, {"d": d, "n": n})
            except ZeroDivisionError:
                continue
            assert eval(written, {"d": d, "n": n}) == value, written


def test_a_quotient_beside_a_coefficient_keeps_its_parentheses():
    assert poly_text(poly(parse_expr("2 * (d // 4)"))) == "2 * (d // 4)"
    assert poly_text(poly(parse_expr("-(d // 4)"))) == "-(d // 4)"
    assert poly_text(poly(parse_expr("d // 4"))) == "d // 4"  # alone: as the checker's messages write it
