"""`autodiff/loop_members.py` on a checked forward: the sides of `if`s that read a member not built left out,
the operands that may be none dropped, a member no way through the `if`s runs without required, and the
reads no `if` leaves out refused where they are."""

from __future__ import annotations

import pytest

from layerdsl.autodiff.loop_members import members_to_choose, without_members
from layerdsl.autodiff.loops import member_choice
from layerdsl.autodiff.tape import NotDerivable
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

SIDES = """
layer Sides(d: int, fused: bool = true, bias: bool = true) {
    param w_in: [2 * d, d] = uniform(-0.5, 0.5) if fused
    param w: [d, d] = uniform(-0.5, 0.5) if not fused
    param b: [d] = uniform(-0.5, 0.5) if bias
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        if fused {
            w_a, w_b = chunk(w_in, 2)
            h = x @ (w_a * w_b) + b
        } else {
            h = layer_norm(x @ w, [d], b)
        }
        return RESULT
    }
}
"""


def checked(result: str = "h - b") -> N.Layer:
    spec = parse_file("sides.layer", SIDES.replace("RESULT", result))
    check_program([spec])
    return spec.layers[0]


def lines(body: list[N.Stmt]) -> list[str]:
    """Each statement as `target = value`, an `if` as `if COND`."""
    out = []
    for s in body:
        if isinstance(s, N.If):
            out.append(f"if {spec_text(s.cond)}")
        elif isinstance(s, N.Assign):
            out.append(f"{s.target} = {spec_text(s.value)}")
        elif isinstance(s, N.Return):
            out.append(f"return {', '.join(spec_text(v) for v in s.values)}")
        else:
            out.append(type(s).__name__)
    return out


def test_the_side_reading_a_member_not_built_is_left_out():
    layer = checked()
    assert layer.forward is not None
    assert lines(without_members(layer.forward.body, {"w_in"})) == ["h = layer_norm(x @ w, [d], b)", "return h - b"]
    assert lines(without_members(layer.forward.body, {"w"})) == [
        "Unpack",
        "h = x @ (w_a * w_b) + b",
        "return h - b",
    ]


def test_operands_that_may_be_none_are_dropped_on_both_sides():
    layer = checked()
    assert layer.forward is not None
    body = without_members(layer.forward.body, {"b"})
    assert lines(body) == ["if fused", "return h"]
    branch = body[0]
    assert isinstance(branch, N.If)
    assert lines(branch.body) == ["Unpack", "h = x @ (w_a * w_b)"]
    assert lines(branch.orelse) == ["h = layer_norm(x @ w, [d], none)"]


def test_a_member_no_way_through_the_ifs_runs_without_is_required():
    layer = checked()
    assert layer.forward is not None
    optional = {"w_in", "w", "b"}
    same, left = members_to_choose(layer, optional, member_choice)
    assert left == optional and all(t.cond is not None for t in same.tensors)  # each side reads another
    choice = member_choice(layer, optional)
    assert choice is not None
    cond, built, absent = choice
    assert spec_text(cond) == "w_in != none"
    proven, left = members_to_choose(absent, optional - {"w_in"}, member_choice)
    assert left == {"b"}  # without w_in only the side reading w runs: w is built there
    assert [t.name for t in proven.tensors if t.cond is None] == ["w"]


def test_a_member_on_the_left_of_a_minus_is_refused_where_it_is_read():
    layer = checked("b - h")
    assert layer.forward is not None
    with pytest.raises(NotDerivable) as refused:
        without_members(layer.forward.body, {"b"})
    assert (refused.value.span.line, refused.value.span.col) == (14, 16)  # `return b - h`
    assert "reads the optional member 'b' as the right operand of - and / only" in refused.value.message
