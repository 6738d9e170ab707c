"""A segmented forward's nested `if`s and number locals on a side, written at the top of forward.

A forward of more `if` combinations than `loops.MAX_BRANCH_PLANS` takes each `if` at its top as a segment
of its own (`loops.Choice`), whose sides are straight runs of tensor statements. Before it is cut, an `if`
nested in a side is written at the top, testing both conditions:

    if a { p; if b { x } else { y }; s } else { q }

is

    if a { p } else { q }
    if a and b { x }
    if a and not b { y }
    if a { s }

The conditions test configuration values (arguments, lets, `training`, sizes, whether an optional input
is given), which are the same all through forward, so the same statements run in the same order. A local
that one side binds and the other leaves unbound (`p`'s, which only `x`, `y` and `s` read) is None after
the `if` when the other side ran (`loops.UNBOUND`).

A number a side binds (`src_len = src_len + 1` in `if add_bias_kv`) becomes a statement of its own at the
top, `src_len = src_len + 1 if add_bias_kv else src_len`, so that sides bind tensors only.

A number that measures a local those `if`s bind is followed back along each way through them
(`sizes_by_side`). A way's conditions say what they test of the inputs' ranks (`tgt.ndim == 2` not taken:
not 2), and with the layer's own `require`s (`tgt.ndim <= 3`, which the module checks before the Function
runs) they may fix it: on that way the walker (`local_sizes`) follows `x = tgt + attended` at exactly 3
dims, and `size_at(h, 0)` of `h = norm(x)` back to `tgt`'s. Only what the sizes are computed from is read
through (`reshape(a, [n, b, e])` has the sizes `n`, `b`, `e`, whatever `a`'s), so the `if`s that choose
masks or activations are not ways of their own.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TypeVar

from layerdsl.autodiff.loops import member_choice, on_arguments, presence, proves
from layerdsl.autodiff.tape import NotDerivable
from layerdsl.autodiff.unroll import Measured, prepared_forward
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.ir.visit import children, map_children, statements, walk
from layerdsl.semantics.evaluate import NotConstant, evaluate

T = TypeVar("T", bound=N.Node)


def flattened(body: list[N.Stmt], numbers: frozenset[str] = frozenset()) -> list[N.Stmt]:
    """`body` with each `if` at its top whose sides nest an `if` or bind a number written as `if`s at the
    top that nest none and number statements of their own. Where both sides of such an `if` end in a
    `return` (`plan.returns_closed`), each binds what it returns to locals instead (`return out, none`:
    the second left unbound, so None), returned after the `if`s. `numbers`: those bound before `body`."""
    out: list[N.Stmt] = []
    for stmt in _none_dropped(body, set(), top=True):
        bound = numbers | {s.target for s in out if isinstance(s, N.Assign) and s.value.kind in N.NUMBERS}
        nests = isinstance(stmt, N.If) and (_nests(stmt.body) or _nests(stmt.orelse))
        if isinstance(stmt, N.If) and nests and _returns(stmt) and (returned := _returned_locals(stmt, body)):
            closed, names = returned
            out += flattened([closed], bound) + [N.Return(stmt.span, [_local(n, stmt.span) for n in names])]
        elif isinstance(stmt, N.If) and nests and not _returns(stmt):
            then, then_rest = _straight_start(stmt.body)
            orelse, else_rest = _straight_start(stmt.orelse)
            if then or orelse:
                out.append(dataclasses.replace(stmt, body=then, orelse=orelse))
            seen = set(bound)  # a number the first side binds is bound for the second (`s = 1 if not c else s`)
            out += _guarded(stmt.cond, then_rest, seen) + _guarded(_negated(stmt.cond), else_rest, seen)
        else:
            out.append(stmt)
    return out


def _none_dropped(body: list[N.Stmt], nones: set[str], top: bool = False) -> list[N.Stmt]:
    """`body` with the locals an `if`'s side binds to `none` (`weights = none` of a sub's `return out,
    none`, inlined) left unbound there (a side binds tensors only; read later, they are None)."""
    out: list[N.Stmt] = []
    for stmt in body:
        if isinstance(stmt, N.If):
            stmt = dataclasses.replace(
                stmt, body=_none_dropped(stmt.body, nones), orelse=_none_dropped(stmt.orelse, nones)
            )
        elif isinstance(stmt, N.Assign) and not top:
            value = stmt.value
            if isinstance(value, N.NoneLit) or (
                isinstance(value, N.Name) and value.id in nones and value.kind != N.Kind.TENSOR
            ):
                nones.add(stmt.target)
                continue
        out.append(stmt)
    return out


def _returned_locals(stmt: N.If, body: list[N.Stmt]) -> tuple[N.If, list[str]] | None:
    """`stmt` with each side's closing `return a, b` as `returned = a; returned1 = b` (`none` left unbound),
    and those names; None when a side does not end in a `return` of tensors, or they return differently
    many."""
    ends = [side[-1] if side else None for side in (stmt.body, stmt.orelse)]
    if not all(isinstance(e, N.Return) for e in ends) or len({len(e.values) for e in ends}) != 1:  # type: ignore
        return None
    if any(v.kind not in (N.Kind.TENSOR, N.Kind.NONE) for e in ends for v in e.values):  # type: ignore
        return None
    taken = {n.id for s in body for n in walk(s) if isinstance(n, N.Name)}
    taken |= {s.target for s in statements(body) if isinstance(s, N.Assign)}
    names = [_fresh("returned" if k == 0 else f"returned{k}", taken) for k in range(len(ends[0].values))]  # type: ignore

    def bound(side: list[N.Stmt]) -> list[N.Stmt]:
        end = side[-1]
        assert isinstance(end, N.Return)
        assigns: list[N.Stmt] = [
            N.Assign(v.span, n, v.span, v) for n, v in zip(names, end.values) if not isinstance(v, N.NoneLit)
        ]
        return side[:-1] + assigns

    return dataclasses.replace(stmt, body=bound(stmt.body), orelse=bound(stmt.orelse)), names


def _fresh(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _local(name: str, span) -> N.Name:
    local = N.Name(span, name)
    local.ref, local.kind = N.Ref.LOCAL, N.Kind.TENSOR
    return local


def _returns(stmt: N.If) -> bool:
    return any(isinstance(s, N.Return) for side in (stmt.body, stmt.orelse) for s in side)


def _nests(side: list[N.Stmt]) -> bool:
    return any(isinstance(s, N.If) or _binds_number(s) for s in side)


def _binds_number(stmt: N.Stmt) -> bool:
    return isinstance(stmt, N.Assign) and stmt.value.kind in N.NUMBERS


def _straight_start(side: list[N.Stmt]) -> tuple[list[N.Stmt], list[N.Stmt]]:
    """The tensor statements `side` starts with, and the rest (from its first `if` or number)."""
    at = next((k for k, s in enumerate(side) if isinstance(s, N.If) or _binds_number(s)), len(side))
    return side[:at], side[at:]


def _guarded(cond: N.Expr, side: list[N.Stmt], bound: set[str]) -> list[N.Stmt]:
    """`side`'s statements, each run only when `cond` holds, as statements at the top of forward (a number
    not `bound` before it is None where `cond` does not hold: only this side reads it)."""
    out: list[N.Stmt] = []
    run: list[N.Stmt] = []

    def close_run() -> None:
        if run:
            out.append(N.If(run[0].span, cond, list(run), []))
            run.clear()

    for stmt in side:
        if isinstance(stmt, N.If):
            close_run()
            out += _guarded(_both(cond, stmt.cond), stmt.body, bound)
            out += _guarded(_both(cond, _negated(stmt.cond)), stmt.orelse, bound)
        elif _binds_number(stmt):
            assert isinstance(stmt, N.Assign)
            close_run()
            kept: N.Expr = N.Name(stmt.target_span, stmt.target) if stmt.target in bound else N.NoneLit(stmt.span)
            if isinstance(kept, N.Name):
                kept.ref, kept.kind = N.Ref.LOCAL, stmt.value.kind
            else:
                kept.kind = N.Kind.NONE
            bound.add(stmt.target)
            chosen = N.IfExp(stmt.value.span, cond, stmt.value, kept)
            chosen.kind = stmt.value.kind
            out.append(dataclasses.replace(stmt, value=chosen))
        else:
            run.append(stmt)
    close_run()
    return out


def _both(a: N.Expr, b: N.Expr) -> N.Expr:
    both = N.BoolOp(b.span, "and", a, b)
    both.kind = N.Kind.BOOL
    return both


def _negated(cond: N.Expr) -> N.Expr:
    if isinstance(cond, N.Not):
        return cond.operand
    if presence(cond) is not None:  # `u != none` is `u == none` (whether u is given is tested as written)
        assert isinstance(cond, N.Compare)
        flipped = N.Compare(cond.span, ["==" if cond.ops[0] == "!=" else "!="], list(cond.operands))
        flipped.kind = N.Kind.BOOL
        return flipped
    negated = N.Not(cond.span, cond)
    negated.kind = N.Kind.BOOL
    return negated


# ---------------------------------------------------------------- optional members read outside their `if`


def member_reads_chosen(layer: N.Layer, members: set[str]) -> N.Layer | None:
    """`layer` with each statement that reads an optional member of `members` outside the `if`s proving it
    built written as an `if` on the member's condition, the other side without it (`y = h @ w + b` as
    `if bias { y = h @ w + b } else { y = h @ w }`; `if b != none` where forward reads no argument of the
    condition, which the Function then does not take): only those statements branch, not the whole forward.
    None where a member's condition is not on arguments, or a read is not one left out so (`b - a`)."""
    assert layer.forward is not None
    conds = {t.name: t.cond for t in layer.tensors if t.name in members and t.cond is not None}
    if not all(on_arguments(c) for c in conds.values()):
        return None

    def chosen(stmts: list[N.Stmt], proven: set[str]) -> list[N.Stmt]:
        out: list[N.Stmt] = []
        for s in stmts:
            if isinstance(s, N.If):
                then = proven | {m for m, c in conds.items() if proves(s.cond, True, c)}
                orelse = proven | {m for m, c in conds.items() if proves(s.cond, False, c)}
                out.append(dataclasses.replace(s, body=chosen(s.body, then), orelse=chosen(s.orelse, orelse)))
                continue
            read = {n.id for n in walk(s) if isinstance(n, N.Name) and n.id in conds} - proven
            if not read:
                out.append(s)
                continue
            alone = dataclasses.replace(layer, forward=dataclasses.replace(forward, body=[s]))
            choice = member_choice(alone, read)  # the first member's condition, and the members built by it
            assert choice is not None, "the statement reads a member built when arguments say"
            _, _, without = choice
            first = next(m for m in conds if m in read)
            built = sorted(m for m in read if spec_text(conds[m]) == spec_text(conds[first]))
            assert without.forward is not None
            cond = conds[first]  # or, where forward reads its arguments nowhere (not passed), whether built
            if not {n.id for n in walk(cond) if isinstance(n, N.Name)} <= read_by_forward:
                cond = _all_given([t for t in layer.tensors if t.name in built], s)
            side = N.If(s.span, cond, chosen([s], proven | set(built)), chosen(without.forward.body, proven))
            out.append(side)
        return out

    forward = layer.forward
    read_by_forward = {n.id for s in forward.body for n in walk(s) if isinstance(n, N.Name)}
    try:
        body = chosen(forward.body, set())
    except NotDerivable:
        return None
    return layer.with_body(body)


def _all_given(members: list[N.Tensor], at: N.Stmt) -> N.Expr:
    """`a != none and b != none`: the module passes None for a member not built (its condition's arguments
    need not reach the Function)."""
    tests: list[N.Expr] = []
    for m in members:
        name = B.name(m.name, at.span, m.kind)
        none = N.NoneLit(at.span)
        none.kind = N.Kind.NONE
        test = N.Compare(at.span, ["!="], [name, none])
        test.kind = N.Kind.BOOL
        tests.append(test)
    return functools.reduce(_both, tests)


# ---------------------------------------------------------------- sizes of locals the `if`s bind


MAX_SIZE_SIDES = 64  # the ways through the `if`s a size of a local is followed back along, at most


def sizes_by_side(body: list[N.Stmt], layer: N.Layer, measured: Measured) -> list[N.Stmt]:
    """`body` (`flattened`) with each number that measures a local the `if`s before it bind
    (`tgt_len = size_at(q_in, 0)`) written as the sizes of inputs and members it is on each side, chosen
    by the conditions (`query_size0 if query_ndim == 2 else (query_size1 if batch_first else
    query_size0)`): a later segment cannot know which side an earlier one ran, but the conditions are
    configuration values the Function has at hand in forward and backward. A number not followed back so
    is left as it is (the derivation reports it)."""
    out: list[N.Stmt] = []
    for stmt in body:
        if isinstance(stmt, N.Assign) and stmt.value.kind in N.NUMBERS and measures_a_local(stmt.value):
            value = _chosen_size(out, stmt, layer, measured)
            stmt = stmt if value is None else dataclasses.replace(stmt, value=value)
        elif isinstance(stmt, N.If) and measures_a_local(stmt.cond):  # `if h.ndim == 2`, h bound by an `if`
            tested = N.Assign(stmt.cond.span, "_tested", stmt.cond.span, stmt.cond)
            cond = _chosen_size(out, tested, layer, measured)
            stmt = stmt if cond is None else dataclasses.replace(stmt, cond=cond)
        out.append(stmt)
    return out


def unfollowed_size(body: list[N.Stmt]) -> tuple[N.Expr, str] | None:
    """The first size of a local an `if` of `body` binds that a number statement or an `if` still measures
    (one `sizes_by_side` did not follow back), and how (`reads`, `tests`): forward cannot compute it before
    the `if`s run."""
    bound = {name for s in body if isinstance(s, N.If) for t in statements(s.body + s.orelse) for name in _binds(t)}
    for s in body:
        if isinstance(s, N.Assign) and s.value.kind in N.NUMBERS:
            measuring, how = s.value, "reads"
        elif isinstance(s, N.If):
            measuring, how = s.cond, "tests"
        else:
            continue
        found = [n for n in walk(measuring) if isinstance(n, N.Rank | N.Call) and measured_locals(n) & bound]
        if found:
            return found[0], how
    return None


def measures_a_local(e: N.Expr) -> bool:
    """Whether `e` measures a tensor forward computes (`size_at(q_in, 0)`, `h.ndim`)."""
    return bool(measured_locals(e))


def measured_locals(e: N.Expr) -> set[str]:
    """The tensors forward computes that `e` measures."""

    def local(x: N.Expr) -> bool:
        return isinstance(x, N.Name) and x.ref == N.Ref.LOCAL and x.kind == N.Kind.TENSOR

    out: set[str] = set()
    for n in walk(e):
        if isinstance(n, N.Call) and n.func == "size_at" and n.args and local(n.args[0]):
            out.add(n.args[0].id)  # type: ignore[attr-defined]
        elif isinstance(n, N.Rank) and local(n.value):
            out.add(n.value.id)
    return out


def _chosen_size(before: list[N.Stmt], stmt: N.Assign, layer: N.Layer, measured: Measured) -> N.Expr | None:
    """`stmt`'s value on each side of the `if`s of `before` that bind what it measures, as one expression
    choosing by their conditions; None when a side's is not followed back to inputs and members, or when
    more than `MAX_SIZE_SIDES` straight forwards lead to it. The conditions are found as the statements it
    reads through lead to them, one atom at a time (an atom that an `and` already decides is not chosen),
    so only the `if`s on the way to the value are decided, not every combination of every atom."""
    budget = [MAX_SIZE_SIDES]
    atoms: dict[str, N.Expr] = {}
    named = {name: key for key, name in measured.items()}
    # what the layer requires of its inputs' ranks before the value (`require tgt.ndim <= 3`; the module
    # checks it before the Function runs, `local_sizes.sub_requires_dropped`)
    required = [
        _unnamed(t.cond, named, layer)
        for t in before
        if isinstance(t, N.Require) and t.guard is None and _tests_a_rank(t.cond, named)
    ]

    def value(holds: dict[str, bool]) -> N.Expr | None | _Unbound:
        straight, undecided = _read_through(before, stmt, holds)
        if undecided is not None:  # an `if` these conditions do not decide binds what it reads
            atom = _first_open(undecided.cond, holds)
            assert atom is not None, "an undecided condition has an atom not chosen"
            atoms[spec_text(atom)] = atom
            then = value({**holds, spec_text(atom): True})
            orelse = value({**holds, spec_text(atom): False})
            return _either(atom, then, orelse)
        budget[0] -= 1
        if budget[0] < 0:
            return None
        if not measured_locals(stmt.value) <= {name for t in straight for name in _binds(t)}:
            return UNBOUND_SIDE  # no side binds it here: conditions that cannot hold together
        way = [*(_on_way(t, holds, named, layer) for t in straight), stmt]
        taken = [_taken(atoms[a], holds[a], named, layer) for a in holds if _tests_a_rank(atoms[a], named)]
        if required or taken:  # in an `if` on what is known of the ranks here: the walker narrows them so
            way = [N.If(stmt.span, functools.reduce(_both, [*required, *taken]), way, [])]
        try:
            last = prepared_forward(layer.with_body(way), measured).forward.body[-1]  # type: ignore[union-attr]
        except NotDerivable:
            return None  # not followed back here: the plan refuses it
        if isinstance(last, N.If):
            last = last.body[-1]
        if not isinstance(last, N.Assign) or measures_a_local(last.value):
            return None
        return _folded(last.value)

    chosen = value({})
    return chosen if isinstance(chosen, N.Expr) else None


class _Unbound:
    """No side binds the measured local under the conditions chosen (they cannot hold together)."""


UNBOUND_SIDE = _Unbound()


def _either(atom: N.Expr, then: N.Expr | None | _Unbound, orelse: N.Expr | None | _Unbound) -> N.Expr | None | _Unbound:
    """`then if atom else orelse`, one of them where the other is unbound or both are the same."""
    if then is None or orelse is None:
        return None
    if isinstance(then, _Unbound):
        return orelse
    if isinstance(orelse, _Unbound) or spec_text(then) == spec_text(orelse):
        return then
    if isinstance(then, N.Bool) or isinstance(orelse, N.Bool):  # a test: `atom and orelse`, not an `if`
        return _folded(_either_test(atom, then, orelse))
    chosen = N.IfExp(then.span, atom, then, orelse)
    chosen.kind = then.kind
    return chosen


def _folded(e: N.Expr) -> N.Expr:
    """A test with its constant parts decided (`not 2 == 2 and batch_first`, of a rank the way decides, is
    `false`)."""
    if e.kind != N.Kind.BOOL:
        return e
    if isinstance(e, N.Compare) and all(isinstance(o, N.Num) for o in e.operands):
        return _bool(bool(evaluate(e, {})), e)
    if isinstance(e, N.Not):
        inner = _folded(e.operand)
        return _bool(not inner.value, e) if isinstance(inner, N.Bool) else _negated(inner)
    if isinstance(e, N.BoolOp):
        left, right = _folded(e.left), _folded(e.right)
        for a, b in ((left, right), (right, left)):
            if isinstance(a, N.Bool):  # `false and b` is false, `true and b` is b (`or` alike)
                return a if a.value == (e.op == "or") else b
        return dataclasses.replace(e, left=left, right=right)
    return e


def _bool(value: bool, at: N.Expr) -> N.Bool:
    out = N.Bool(at.span, value)
    out.kind = N.Kind.BOOL
    return out


def _tests_a_rank(atom: N.Expr, named: dict[str, tuple[str, int | None]]) -> bool:
    """Whether `atom` compares an input's measured rank (`tgt_ndim == 2`)."""
    return any(isinstance(n, N.Name) and n.id in named and named[n.id][1] is None for n in walk(atom))


def _taken(atom: N.Expr, holds: bool, named: dict[str, tuple[str, int | None]], layer: N.Layer) -> N.Expr:
    """`atom` as it holds on a way (negated where it does not), its measured sizes written as the spec's."""
    atom = _unnamed(atom, named, layer)
    return atom if holds else _negated(atom)


def _on_way(stmt: N.Stmt, holds: dict[str, bool], named: dict[str, tuple[str, int | None]], layer: N.Layer) -> N.Stmt:
    """`stmt` on the way `holds` decides: each `a if cond else b` it decides as its side (`bsz = 1 if
    tgt_ndim == 2 else ...` is `bsz = 1` where the rank is 2), its measured sizes written as the spec's
    (`size_at(tgt, 0)`, `tgt.ndim`): what the walker compares and narrows."""

    def go(e):
        if isinstance(e, N.IfExp) and (taken := _decided(e.cond, holds)) is not None:
            return go(e.then if taken else e.orelse)
        return map_children(e, go) if isinstance(e, N.Expr) else e

    return _unnamed(map_children(stmt, go), named, layer)


def _unnamed(e: T, named: dict[str, tuple[str, int | None]], layer: N.Layer) -> T:
    """`e` with each measured size (`tgt_size0`, `tgt_ndim`) as the spec writes it (`size_at(tgt, 0)`,
    `tgt.ndim`)."""
    assert layer.forward is not None
    refs = {i.name: N.Ref.INPUT for i in layer.forward.inputs} | {t.name: t.kind for t in layer.tensors}

    def go(n):
        if isinstance(n, N.Name) and n.ref == N.Ref.DIM and n.id in named:
            leaf, k = named[n.id]
            of = B.name(leaf, n.span, refs[leaf])
            if k is None:
                rank = N.Rank(n.span, of)
                rank.kind = N.Kind.INT
                return rank
            size = N.Call(n.span, "size_at", n.span, [of, B.num(k)], [])
            size.kind = N.Kind.INT
            return size
        return map_children(n, go) if isinstance(n, N.Expr) else n

    return go(e) if isinstance(e, N.Expr) else map_children(e, go)


def _either_test(atom: N.Expr, then: N.Expr, orelse: N.Expr) -> N.Expr:
    """`then if atom else orelse` of tests, one of them constant, written with `and`, `or` and `not`."""
    if isinstance(then, N.Bool):
        return _any(atom, orelse) if then.value else _both(_negated(atom), orelse)
    assert isinstance(orelse, N.Bool)
    return _any(_negated(atom), then) if orelse.value else _both(atom, then)


def _any(a: N.Expr, b: N.Expr) -> N.Expr:
    either = N.BoolOp(b.span, "or", a, b)
    either.kind = N.Kind.BOOL
    return either


def _first_open(cond: N.Expr, holds: dict[str, bool]) -> N.Expr | None:
    """The first atom of `cond` that `holds` does not give and that decides it (`a and b` with `a` false
    needs no `b`); None when `holds` decides `cond`."""
    if isinstance(cond, N.BoolOp):
        for part in (cond.left, cond.right):
            decided = _decided(part, holds)
            if decided is not None and decided == (cond.op == "or"):
                return None  # `a or b` with a true, `a and b` with a false
        return _first_open(cond.left, holds) or _first_open(cond.right, holds)
    if isinstance(cond, N.Not):
        return _first_open(cond.operand, holds)
    if isinstance(cond, N.Bool) or spec_text(cond) in holds:
        return None
    return cond


def _decided(cond: N.Expr, holds: dict[str, bool]) -> bool | None:
    """`cond` under `holds`, `and`/`or` short-circuited; None when an atom it needs is not given."""
    if isinstance(cond, N.BoolOp):
        left, right = _decided(cond.left, holds), _decided(cond.right, holds)
        stop = cond.op == "or"  # the value of either side that decides `cond`
        if stop in (left, right):
            return stop
        return None if None in (left, right) else not stop
    if isinstance(cond, N.Not):
        inner = _decided(cond.operand, holds)
        return None if inner is None else not inner
    if isinstance(cond, N.Bool):
        return bool(cond.value)
    return holds.get(spec_text(cond))


def _read_through(before: list[N.Stmt], stmt: N.Assign, holds: dict[str, bool]) -> tuple[list[N.Stmt], N.If | None]:
    """The statements of `before` that `stmt` reads through (its locals, what they are computed from), with
    each `if` as the side `holds` chooses; or the first `if` they lead to that `holds` does not decide."""
    wanted = {n.id for n in walk(stmt.value) if isinstance(n, N.Name)}
    kept: list[N.Stmt] = []
    for s in reversed(before):
        if isinstance(s, N.If):
            decided = _decided(s.cond, holds)
            if decided is None:  # an atom not chosen yet
                if any(_binds(t) & wanted for t in statements([s])):
                    return [], s
                continue
            side = s.body if decided else s.orelse
        else:
            side = [s]
        for t in reversed(side):
            if _binds(t) & wanted:
                wanted = (wanted - _binds(t)) | _shape_reads(t)
                kept.append(t)
    return kept[::-1], None


LISTED = ("reshape", "expand", "new_zeros")  # a tensor whose shape is the list of sizes it is given


def _shape_reads(stmt: N.Stmt) -> set[str]:
    """The names `stmt`'s sizes are computed from: all it reads, but where it reshapes (or expands, or makes
    new zeros) to a list of sizes without `-1`, only the list's (`reshape(attended, [tgt_len, bsz, e])`
    has the sizes `tgt_len`, `bsz`, `e` whatever `attended`'s were)."""

    def reads(e: N.Node) -> set[str]:
        if isinstance(e, N.Name):
            return {e.id}
        if isinstance(e, N.Call) and e.func in LISTED and not e.sub:
            sizes = e.args[1] if len(e.args) == 2 else None
            if isinstance(sizes, N.ListExpr) and not any(isinstance(i, N.Spread) or _minus_one(i) for i in sizes.items):
                return reads(sizes)
        return set().union(*(reads(c) for c in children(e)))

    return reads(stmt)


def _minus_one(e: N.Expr) -> bool:
    try:
        return evaluate(e, {}) == -1
    except (NotConstant, ArithmeticError, TypeError):
        return False


def _binds(stmt: N.Stmt) -> set[str]:
    if isinstance(stmt, N.Assign):
        return {stmt.target}
    return {name for name, _ in stmt.targets} if isinstance(stmt, N.Unpack) else set()
