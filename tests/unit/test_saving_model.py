"""The recompute-or-save model (`optimize/saving.py`): a cheap intermediate is saved only where that keeps
no more bytes than recomputing it and recomputes less; the generated Functions follow it."""

from __future__ import annotations

import torch

from layerdsl.codegen.module import emit_file
from layerdsl.optimize.saving import SavingCost, chosen_saves, elements
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

SPEC = """
@function
layer Probe(n: int) {{
    param w: [n, n] = uniform(-0.5, 0.5)
    param b: [n] = uniform(-0.5, 0.5)
    param beta: [n] = ones
    example(n = 4)

    forward(x: [B, n]) -> [B, n] {{
        return {body}
    }}
}}
"""


def _function(body: str) -> tuple[str, dict]:
    spec = parse_file("probe.layer", SPEC.format(body=body))
    source = emit_file(spec, check_program([spec]), "probe.layer", {})
    namespace: dict = {}
    exec(compile(source, "probe.py", "exec"), namespace)
    return source, namespace


def _saved_shapes(ns: dict, x: torch.Tensor) -> list[tuple[int, ...]]:
    layer = ns["Probe"](4, dtype=torch.float64)
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        out = layer(x)
    want = ns["probe"](x, layer.w, layer.b, layer.beta)
    assert torch.allclose(out, want)
    params = [x, layer.w, layer.b, layer.beta]
    seed = torch.randn_like(want)
    got, ref = (torch.autograd.grad(y, params, seed, allow_unused=True) for y in (out, want))
    for a, r in zip(got, ref):
        assert (a is None and r is None) or torch.allclose(a, r)
    assert torch.autograd.gradgradcheck(layer, (x,))
    return shapes


def test_a_cheap_value_is_saved_where_it_replaces_what_recomputing_it_keeps():
    source, ns = _function("sigmoid(tanh(x @ w + b) * 3)")
    # tanh(mm + b) is saved instead of the product and b: as many bytes, two passes fewer in backward
    assert "saves th (saved: recomputing it would keep as many bytes or more)" in source
    assert "mm + b" not in source.split("def backward")[1]
    x = torch.rand(8, 4, dtype=torch.float64, requires_grad=True)
    assert sorted(_saved_shapes(ns, x)) == sorted([(8, 4), (4, 4), (8, 4), (8, 4)])  # x, w, th, the output


def test_a_cheap_value_that_would_add_bytes_is_recomputed():
    source, ns = _function("x * sigmoid(beta * x)")  # Swish: saving the sigmoid would add [B, n]
    assert "sigmoid" in source.split("def backward")[1] and "(saved:" not in source
    x = torch.rand(8, 4, dtype=torch.float64, requires_grad=True)
    assert sorted(_saved_shapes(ns, x)) == [(4,), (8, 4)]


def test_the_model_takes_saves_while_one_improves():
    costs = {
        frozenset(): SavingCost(100, 50),
        frozenset({"a"}): SavingCost(100, 20),  # as many bytes, less recomputation
        frozenset({"b"}): SavingCost(140, 0),  # more bytes: never, however much it saves
        frozenset({"a", "b"}): SavingCost(140, 0),
    }
    assert chosen_saves(["a", "b"], lambda s: costs[s]) == {"a"}
    assert chosen_saves(["b"], lambda s: costs[s]) == frozenset()


def test_elements_at_the_example_sizes():
    assert elements(("B", "n"), {"n": 4}) == 64 * 4  # an open dim counts 64
    assert elements(("...", "n"), {"n": 4}) == 64 * 4
    assert elements(("n", "1"), {"n": 4}) == 4
