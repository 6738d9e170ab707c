"""Statement order and `del` placement on small hand-built backwards."""

from __future__ import annotations

from layerdsl.ir import build as B
from layerdsl.optimize.schedule import fresh_buffers, is_reduction, place_deletions, reductions_early
from layerdsl.optimize.statements import Facts, Stmt

FULL = ("B", "n")


def stmt(target: str, expr) -> Stmt:
    return Stmt(target, expr, {"x"})


def facts(**shapes) -> Facts:
    return Facts(shapes=shapes, kept={"x", "y", "grad_out"}, foldable=set(), full=[FULL], graph=False)


def product(a: str, b: str):
    return B.binop("*", B.name(a), B.name(b))


def test_is_reduction_sees_through_number_scales():
    assert is_reduction(B.call("sum", B.name("t")))
    assert is_reduction(B.binop("*", B.num(0.5), B.call("sum_to", B.name("t"), B.name("b"))))
    assert not is_reduction(B.binop("+", B.call("sum", B.name("t")), B.name("u")))
    assert not is_reduction(B.call("exp", B.name("t")))


def test_a_reduction_moves_up_to_just_after_what_it_reads():
    t = stmt("t", product("grad_out", "x"))
    u = stmt("u", product("grad_out", "y"))
    grad_x = stmt("grad_x", product("t", "x"))
    grad_b = stmt("grad_b", B.call("sum", B.name("t")))
    order = reductions_early([t, u, grad_x, grad_b])
    assert [s.target for s in order] == ["t", "grad_b", "u", "grad_x"]


def test_a_reduction_does_not_pass_a_guarded_statement_or_a_reader_of_its_target():
    t = stmt("t", product("grad_out", "x"))
    guarded = Stmt("u", product("u", "y"), {"x"}, guard="bias")
    grad_b = stmt("grad_b", B.call("sum", B.name("t")))
    assert [s.target for s in reductions_early([t, guarded, grad_b])] == ["t", "u", "grad_b"]
    reads_it = stmt("v", product("grad_b", "x"))  # reads the old grad_b: the reduction must not pass it
    assert [s.target for s in reductions_early([t, reads_it, grad_b])] == ["t", "v", "grad_b"]


def test_a_full_size_temporary_is_deleted_after_its_last_read():
    stmts = [
        stmt("t", product("grad_out", "x")),
        stmt("u", product("t", "y")),
        stmt("grad_x", product("t", "u")),
        stmt("grad_y", product("u", "x")),
    ]
    shapes = {"t": FULL, "u": FULL, "grad_x": FULL, "grad_y": FULL}
    place_deletions(stmts, facts(), shapes, updated=set())
    assert [s.dels for s in stmts] == [[], [], ["t"], []]  # u's last read is the last statement: no del


def test_no_del_for_kept_updated_or_small_names():
    stmts = [
        stmt("t", product("grad_out", "x")),
        stmt("s", B.call("sum", B.name("t"))),
        stmt("u", product("t", "s")),
        stmt("v", product("u", "s")),
        stmt("w", product("v", "x")),
    ]
    shapes = {"t": FULL, "s": (), "u": FULL, "v": FULL}
    place_deletions(stmts, facts(), shapes, updated={"u"})
    # t dies at u = t * s; s is small; u's storage lives on in v; x is kept.
    assert [s.dels for s in stmts] == [[], [], ["t"], [], []]


def test_fresh_buffers_counts_full_size_and_unknown_results():
    stmts = [
        stmt("t", product("grad_out", "x")),  # full size
        stmt("s", B.call("sum", B.name("t"))),  # a number-sized result
        stmt("r", B.call("reshape", B.name("t"), B.name("x"))),  # a view: not a fresh buffer
        stmt("q", product("unknown", "x")),  # unknown shape
    ]
    assert fresh_buffers(stmts, facts(grad_out=FULL, x=FULL)) == 2
