"""Deriving a `@function` layer whose loop of a written count is unrolled: the time grows gently with the
count (the save choice walks what the backward reads once per greedy round and prices each candidate by
what only it reaches, `optimize/saving.py` `Pricing`; the common-factor pass learns the statements once
per rewrite, `optimize/sharing.py`), and the derived Function still agrees with the plain module.
`benchmarks/bench_derivation_time.py` measures the growth."""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys

import pytest
import torch

import layerdsl.optimize.statements as statements_module
import layerdsl.semantics.shapes as shapes_module
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.ir.visit import walk
from layerdsl.optimize import pipeline
from layerdsl.optimize.fusion import aliases_dropped, explicit_sums, fold, narrow_expansions
from layerdsl.optimize.inplace import update_in_place
from layerdsl.optimize.saving import Pricing, ReadGraph, chosen_saves
from layerdsl.optimize.statements import Facts, Stmt
from layerdsl.optimize.transposes import transposes_cancelled
from tests.support import compile_spec


def unrolled_spec(steps: int, function: bool = True) -> str:
    """A layer whose loop of `steps` steps is unrolled (`benchmarks/bench_derivation_time.py` times it too)."""
    return f"""\
{"@function" + chr(10) if function else ""}layer Unrolled(d: int) {{
    param w: [d, d] = uniform(-0.5, 0.5)
    example(d = 4)
    forward(x: [B, d]) {{
        h = x
        for t in range({steps}) {{
            h = tanh(h @ w) + sigmoid(h) * h
        }}
        return h
    }}
}}
"""


def test_generating_a_64_step_unrolled_function_takes_bounded_cpu_time(tmp_path):
    path = tmp_path / "unrolled.layer"
    path.write_text(unrolled_spec(64), encoding="utf-8")
    # The bound is on the child's CPU time (about 47 s on a loaded machine, 210 s before the save choice
    # priced candidates on a graph; the generated code grows as 64 ** 2, so no tighter bound can hold on a
    # loaded CI machine): wall time on a loaded machine says little, and the wall timeout only stops a run
    # that would take minutes.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "layerdsl", "show", str(path)],  # `check` derives no backward
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "LAYERDSL_NO_CACHE": "1"},
        )
    except subprocess.TimeoutExpired:
        pytest.fail("layerdsl show ran past 600 s")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "class Unrolled" in run.stdout
    assert cpu < 120, f"layerdsl show took {cpu:.1f} s of CPU"


def test_a_16_step_unrolled_function_agrees_with_the_plain_module():
    modules = []
    for k, function in enumerate([True, False]):
        torch.manual_seed(0)
        modules.append(compile_spec(unrolled_spec(16, function), f"unrolled_time_{k}")["Unrolled"](4).double())
    ours, plain = modules
    plain.load_state_dict(ours.state_dict())
    x = torch.linspace(-1.5, 1.5, 12, dtype=torch.float64).reshape(3, 4).requires_grad_()
    got, want = ours(x), plain(x)
    torch.testing.assert_close(got, want)
    weights = torch.linspace(-1, 2, got.numel(), dtype=got.dtype).reshape(got.shape)
    firsts = [
        torch.autograd.grad((out * weights).sum(), [x, *module.parameters()], create_graph=True)
        for module, out in [(ours, got), (plain, want)]
    ]
    for g, w in zip(*firsts, strict=True):
        torch.testing.assert_close(g, w)
    probe = torch.linspace(0.5, -1.5, x.numel(), dtype=x.dtype).reshape(x.shape)
    seconds = [torch.autograd.grad((grads[0] * probe).sum(), x)[0] for grads in firsts]
    torch.testing.assert_close(seconds[0], seconds[1])


def _random_graph(rng: random.Random, n: int, sections: int) -> ReadGraph:
    """Steps v0..v{n-1}, each reading earlier ones (some twice), a few always kept, some inputs."""
    edges = {
        f"v{i}": [rng.choice([f"v{j}" for j in range(i)] + ["x", "y"]) for _ in range(rng.randint(1, 3))]
        for i in range(n)
    }
    always = {f"v{i}" for i in range(n) if rng.random() < 0.15}
    starts = [rng.sample(sorted(edges), rng.randint(1, min(n, 4))) for _ in range(sections)]
    return ReadGraph(edges, always, starts, [[] for _ in starts], [], set())


def test_pricing_each_candidate_agrees_with_walking_the_graph_again():
    rng = random.Random(15)
    for _ in range(200):
        n = rng.randint(2, 14)
        graph = _random_graph(rng, n, rng.randint(1, 3))
        size = {f"v{i}": rng.randint(1, 9) for i in range(n)} | {"x": 5, "y": 7}
        pricing = Pricing(graph, size.__getitem__, lambda v: v != "v1", masks=())
        chosen = frozenset(rng.sample(sorted(graph.edges), rng.randint(0, n // 2)))
        pending = [v for v in graph.edges if v not in chosen]
        assert pricing.each(chosen, pending) == [pricing.cost(chosen | {v}) for v in pending]


def test_a_greedy_round_walks_what_the_backward_reads_once():
    steps = 200  # h_t = tanh(h_{t-1} @ w) + sigmoid(h_{t-1}): each h read by backward, each tanh costly
    edges: dict[str, list[str]] = {}
    for t in range(1, steps + 1):
        h = f"h{t - 1}" if t > 1 else "x"
        edges |= {f"s{t}": [h], f"h{t}": [f"th{t}", f"s{t}", h]}
    walks = []

    class Counted(ReadGraph):
        def reached(self, saved):
            walks.append(saved)
            return super().reached(saved)

    hs = [f"h{t}" for t in range(1, steps + 1)]
    graph = Counted(edges, {f"th{t}" for t in range(1, steps + 1)}, [hs], [[]], [], set())
    pricing = Pricing(graph, lambda v: 4, lambda v: True, masks=())
    chosen = chosen_saves(list(edges), pricing.cost, pricing.each)
    assert chosen == set(hs)  # each h saved in place of its tanh: as many bytes, less recomputed
    assert len(walks) == len(chosen) + 2  # the first choice's price, then one walk per round


# ------------------------------------------------------------------ bounded optimisation work per section

FULL = ("B", "n")


def _facts(graph: bool) -> Facts:
    return Facts(
        shapes={"grad_out": FULL, "x": FULL, "y": FULL},
        kept={"x", "y", "grad_out", "grad_x", "grad_y"},
        foldable={"t"},
        full=[FULL],
        roots={"grad_out": frozenset({"x"})},
        incoming={"grad_out"},
        graph=graph,
        floating=frozenset({"x", "y", "grad_out"}),
    )


def _product(a: str, b: str) -> N.Expr:
    return B.binop("*", B.name(a), B.name(b))


def _chain(depth: int) -> N.Expr:
    """`grad_out * x * x * ...`: each product's left operand a fresh temporary the next may update."""
    e: N.Expr = B.name("grad_out")
    for _ in range(depth):
        e = B.binop("*", e, B.name("x"))
    return e


def _update_in_place(stmts: list[Stmt], facts: Facts) -> list[Stmt]:
    update_in_place(stmts, facts)
    return stmts


def _explicit_sums(stmts: list[Stmt], facts: Facts) -> list[Stmt]:
    explicit_sums(stmts, facts)
    return stmts


@pytest.mark.parametrize(
    "rewrite",
    [fold, aliases_dropped, transposes_cancelled, narrow_expansions, _explicit_sums, _update_in_place],
    ids=lambda f: f.__name__.strip("_"),
)
def test_a_pass_with_nothing_to_rewrite_keeps_the_statements_nodes(rewrite):
    # Each pass used to copy every node of every statement (the old in-place pass: a third of a section's
    # optimisation); a statement a pass leaves as it was keeps its very nodes.
    for graph in (True, False):
        stmts = [
            Stmt("grad_x", _product("grad_out", "x"), {"x"}),
            Stmt("grad_y", B.call("sigmoid", B.name("y")), {"y"}),
        ]
        before = [s.expr for s in stmts]
        after = rewrite(stmts, _facts(graph))
        assert [spec_text(s.expr) for s in after] == ["grad_out * x", "sigmoid(y)"]
        assert all(s.expr is e for s, e in zip(after, before, strict=True)), f"{rewrite.__name__} copied"


def test_the_in_place_pass_computes_each_nodes_shape_once(monkeypatch):
    # Asked at each operation of a statement for the shapes of the operation and its operand, the pass
    # computed them from scratch: as many steps as the nodes have descendants (quadratic in a product
    # chain's length). It computes each node's shape once.
    calls = 0
    real = shapes_module.expr_shape

    def counted(*args, **kwargs):
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(shapes_module, "expr_shape", counted)
    monkeypatch.setattr(statements_module, "expr_shape", counted)
    depth = 40
    stmts = [Stmt("t", _chain(depth), {"x"})]
    nodes = len(list(walk(stmts[0].expr)))
    update_in_place(stmts, _facts(graph=False))
    assert spec_text(stmts[0].expr) == "(grad_out * x)" + ".mul_(x)" * (depth - 1)
    # once for each node read and once for each node the pass builds (its in-place calls): at most twice
    # the nodes, where computing them afresh took about depth ** 2 (some 3000)
    assert calls <= 2 * nodes, f"{calls} shape computations for {nodes} nodes"


def test_one_schedule_is_finished_when_moving_reductions_early_keeps_the_order(monkeypatch):
    # Two schedules compete (the derivation's order, and reductions early); when both are the same order,
    # the second finished the same statements again (twice the in-place pass, in each grad mode).
    runs = []
    real = pipeline.update_in_place
    monkeypatch.setattr(pipeline, "update_in_place", lambda stmts, facts: runs.append(1) or real(stmts, facts))
    facts = _facts(graph=False)
    same = [Stmt("t", _product("grad_out", "x"), {"x"}), Stmt("grad_x", _product("t", "x"), {"x"})]
    stmts, schedule = pipeline.scheduled(same, facts, prefer=1)
    assert (len(runs), schedule) == (1, 1)
    assert [spec_text(s.expr) for s in stmts] == ["grad_out * x", "t.mul_(x)"]
    runs.clear()
    moved = [  # the sum moves up before `grad_y`: two orders, both finished
        Stmt("t", _product("grad_out", "x"), {"x", "y"}),
        Stmt("grad_y", _product("grad_out", "y"), {"y"}),
        Stmt("grad_x", B.call("sum", B.name("t")), {"x"}),
    ]
    pipeline.scheduled(moved, facts)
    assert len(runs) == 2
