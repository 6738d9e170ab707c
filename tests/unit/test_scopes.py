"""Scoping: what a name refers to at a point of a layer (the checker's rules, replayed by `scope_at`)."""

from __future__ import annotations

import pytest

from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import Ref
from layerdsl.ir.visit import walk
from layerdsl.semantics.checker import check_program
from layerdsl.semantics.scopes import Scope, resolve, scope_at
from layerdsl.syntax.parser import parse_file

SPEC = """\
layer Scoped(n: int, bias: bool) {
    let m = n * 2
    let k = m + 1
    param w: [n, m] = uniform(-1, 1)
    param bias: [m] = zeros() if bias
    example(n = 3, bias = true)

    forward(x: [B, n]) -> [B, m] {
        h = x @ w
        if training {
            both = h
            once = h
        } else {
            both = h * 2
        }
        y[b, j] = sum[i](x[b, i] * w[i, j]) + h[b, j]
        return both + y + bias
    }
}

@function
layer Fn(s: float) {
    example(s = 2.0)

    forward(x: [B]) -> [B] {
        t = x * s
        return t
    }

    backward(grad_y) {
        grad x = grad_y * s + t * 0
    }
}
"""


@pytest.fixture(scope="module")
def layers() -> dict[str, N.Layer]:
    spec = parse_file("scoped.layer", SPEC)
    return check_program([spec]).layers


def at(needle: str, nth: int = 0) -> tuple[int, int]:
    """The (line, column) of the `nth` occurrence of `needle` in SPEC."""
    offset = -1
    for _ in range(nth + 1):
        offset = SPEC.index(needle, offset + 1)
    line = SPEC.count("\n", 0, offset) + 1
    return line, offset - (SPEC.rfind("\n", 0, offset) + 1) + 1


def test_a_let_sees_arguments_and_earlier_lets_only(layers):
    scope = scope_at(layers["Scoped"], *at("m + 1"))
    assert scope.construction
    assert scope.lookup("n") == Ref.ARG and scope.lookup("m") == Ref.LET
    assert scope.lookup("k") is None  # its own let, not bound yet
    assert scope.lookup("pi") == Ref.CONST
    assert scope.lookup("training") is None  # not a construction value
    assert scope_at(layers["Scoped"], *at("n * 2")).lookup("m") is None


def test_member_shapes_see_arguments_and_lets_but_not_members(layers):
    scope = scope_at(layers["Scoped"], *at("m] = zeros"))
    assert scope.lookup("k") == Ref.LET
    assert scope.lookup("w") is None and scope.binding("w") is None


def test_a_member_named_after_its_condition_takes_the_argument_name(layers):
    layer = layers["Scoped"]
    b = resolve(layer, "bias", *at("return both"))
    assert b is not None and b.ref == Ref.PARAM and b.decl is layer.tensor("bias")


def test_forward_sees_members_inputs_dims_and_earlier_locals(layers):
    layer = layers["Scoped"]
    scope = scope_at(layer, *at("x @ w"))
    assert scope.lookup("x") == Ref.INPUT and scope.binding("x").decl is layer.forward.inputs[0]
    assert scope.lookup("B") == Ref.DIM and isinstance(scope.binding("B").decl, N.Name)
    assert scope.lookup("w") == Ref.PARAM
    assert scope.lookup("training") == Ref.TRAINING
    assert scope.lookup("h") is None  # bound by this very statement
    later = resolve(layer, "h", *at("both = h", 0))
    assert later is not None and later.ref == Ref.LOCAL and later.decl is layer.forward.body[0]


def test_locals_of_an_if_are_bound_after_it_only_when_every_path_binds_them(layers):
    layer = layers["Scoped"]
    inside = scope_at(layer, *at("once = h"))
    assert inside.lookup("both") == Ref.LOCAL  # bound just before, in this branch
    assert scope_at(layer, *at("both = h * 2")).lookup("once") is None  # the other branch
    after = scope_at(layer, *at("return both"))
    assert after.lookup("both") == Ref.LOCAL
    assert after.lookup("once") is None


def test_index_variables_inside_an_index_statement(layers):
    layer = layers["Scoped"]
    in_sum = scope_at(layer, *at("x[b, i]"))
    assert in_sum.lookup("b") == Ref.INDEX and in_sum.lookup("j") == Ref.INDEX and in_sum.lookup("i") == Ref.INDEX
    outside_sum = scope_at(layer, *at("h[b, j]"))
    assert outside_sum.lookup("j") == Ref.INDEX and outside_sum.lookup("i") is None
    assert scope_at(layer, *at("return both")).lookup("b") is None


def test_backward_sees_forward_locals_and_its_gradients(layers):
    layer = layers["Fn"]
    scope = scope_at(layer, *at("grad_y * s"))
    assert scope.lookup("t") == Ref.LOCAL and scope.binding("t").decl is layer.forward.body[0]
    assert scope.lookup("grad_y") == Ref.LOCAL and scope.binding("grad_y").decl is layer.backward
    assert scope.lookup("s") == Ref.ARG
    assert scope_at(layer, *at("x * s")).lookup("grad_y") is None


def test_the_checker_annotates_names_as_scopes_resolve_them(layers):
    layer = layers["Scoped"]
    ret = layer.forward.body[-1]
    refs = {n.id: n.ref for n in walk(ret) if isinstance(n, N.Name)}
    line, col = ret.span.line, ret.span.col
    assert refs == {name: scope_at(layer, line, col).lookup(name) for name in refs}


def test_declaring_a_taken_name_fails_and_keeps_the_first():
    scope = Scope()
    first = N.Arg("a", N.NOWHERE, "int", N.NOWHERE, None)
    assert scope.declare("a", Ref.ARG, first, N.NOWHERE)
    assert not scope.declare("a", Ref.LET, None, N.NOWHERE)
    assert scope.binding("a").decl is first and scope.names() == ["a"]


def test_scope_at_agrees_with_the_checker_on_every_name_of_the_shipped_specs():
    from pathlib import Path

    specs = sorted(Path(__file__).resolve().parents[2].joinpath("specs").rglob("*.layer"))
    files = [parse_file(str(p), p.read_text()) for p in specs]
    program = check_program(files)
    compared = 0
    for layer in program.layers.values():
        blocks = [b for b in (layer.forward, layer.backward) if b is not None]
        for stmt in [s for b in blocks for s in b.body]:
            for node in walk(stmt):
                if isinstance(node, N.Name) and node.ref not in (Ref.INDEX, Ref.UNRESOLVED):
                    assert scope_at(layer, node.span.line, node.span.col).lookup(node.id) == node.ref, (
                        layer.name,
                        node.id,
                    )
                    compared += 1
    assert compared > 100
