"""The optimisation stage on small hand-built backwards: folding, plain sums, addcmul, in-place updates."""

from __future__ import annotations

from layerdsl.ir import build as B
from layerdsl.ir.printer import spec_text
from layerdsl.optimize import Facts, Stmt, optimize
from layerdsl.optimize.fusion import addcmul_form, explicit_sums, fold

FULL = ("B", "n")
SHAPES = {"grad_out": FULL, "x": FULL, "y": FULL, "bias": ("n",), "row": ("1", "n"), "scale": ()}
LEAVES = {"x", "y", "bias", "row", "scale"}


def facts(graph: bool = True, foldable: frozenset[str] = frozenset()) -> Facts:
    return Facts(
        shapes=dict(SHAPES),
        kept=LEAVES | {"grad_out"} | {f"grad_{leaf}" for leaf in LEAVES},
        foldable=set(foldable),
        full=[FULL],
        roots={"grad_out": frozenset({"x"})},
        incoming={"grad_out"},
        graph=graph,
        floating=frozenset(LEAVES | {"grad_out"}),
    )


def product(a: str, b: str):
    return B.binop("*", B.name(a), B.name(b))


def texts(stmts: list[Stmt]) -> list[str]:
    return [f"{s.target} = {spec_text(s.expr)}" + (f"; del {', '.join(s.dels)}" if s.dels else "") for s in stmts]


def my_layer_backward() -> list[Stmt]:
    return [
        Stmt("grad_add", product("grad_out", "x"), {"x", "bias"}),
        Stmt("grad_x", product("grad_add", "x"), {"x"}),
        Stmt("grad_bias", B.call("sum_to", B.name("grad_add"), B.name("bias")), {"bias"}),
        Stmt("grad_y", product("grad_out", "y"), {"y"}),
    ]


def test_the_sum_moves_first_so_the_last_reader_updates_in_place():
    for graph in (True, False):
        stmts, schedule = optimize(my_layer_backward(), facts(graph))
        assert schedule == 0  # reductions early
        assert texts(stmts) == [
            "grad_add = grad_out * x",
            "grad_bias = sum_to(grad_add, bias)",
            "grad_x = grad_add.mul_(x)",
            "grad_y = grad_out * y",
        ]


def test_an_input_or_incoming_gradient_is_never_updated():
    stmts, _ = optimize([Stmt("grad_x", product("grad_out", "x"), {"x"})], facts(graph=False))
    assert texts(stmts) == ["grad_x = grad_out * x"]


def test_a_recomputed_value_read_once_is_folded_into_its_reader():
    stmts = [
        Stmt("e", B.call("exp", B.name("x")), {"x"}, recompute=True),
        Stmt("grad_x", product("grad_out", "e"), {"x"}),
    ]
    assert texts(fold(stmts, facts(foldable=frozenset({"e"})))) == ["grad_x = grad_out * exp(x)"]
    stmts = [
        Stmt("e", B.call("exp", B.name("x")), {"x"}, recompute=True),
        Stmt("grad_x", product("grad_out", "e"), {"x"}),
    ]
    assert len(fold(stmts, facts())) == 2  # a spec local stays named


def test_sums_to_known_shapes_are_plain_sums():
    stmts = [
        Stmt("grad_row", B.call("sum_to", B.name("grad_out"), B.name("row")), {"row"}),
        Stmt("grad_scale", B.call("sum_to", B.name("grad_out"), B.name("scale")), {"scale"}),
        Stmt("grad_bias", B.call("sum_to", B.name("grad_out"), B.name("bias")), {"bias"}),
    ]
    explicit_sums(stmts, facts())
    assert texts(stmts) == [
        "grad_row = sum(grad_out, dim = -2, keepdim = true)",
        "grad_scale = sum(grad_out)",
        "grad_bias = sum_to(grad_out, bias)",  # another rank: left to sum_to_size
    ]


def test_a_sum_with_a_product_is_one_addcmul():
    e = B.binop("+", B.name("p"), product("q", "r"))
    assert spec_text(addcmul_form(e)) == "addcmul(p, q, r)"
    number = B.binop("+", B.name("p"), B.binop("*", B.num(2), B.name("r")))
    assert spec_text(addcmul_form(number)) == "p + 2 * r"  # a number factor is not a tensor product
