"""A loop whose body tests its variable against a bound the loop does not change, as loops in a row.

A loop kept as one (its count known only when forward runs) derives one body for every step, so an `if`
in it must pick the same side at every step (`loops.unswitched` takes one on arguments out). An `if`
comparing the loop's variable with an int the loop does not change (`t == 0`, `t > 0`, `t < k`,
`t == n - 1`) turns once at that bound, so the loop is split there into consecutive loops, each with the
`if` decided:

    for t in range(T) { if t == 0 { a } else { b } }

is written as

    for t in range(0, minimum(1, T)) { a }
    for t in range(minimum(1, T), T) { b }

each bound clamped to the range before it (`minimum(maximum(k, lo), hi)`), so that every range holds for any
run-time count (none, or a bound outside it, makes a range of no steps) and the pieces run the steps in
their order. The values the loop carries flow from one piece to the next, as between any loops in a row.
Several such `if`s (nested, or joined by `and`, `or`, `not`) split at each bound, up to `MAX_PIECES`
loops. A list the loop appends to is appended to by each piece in turn, one list collected over the loops
in a row (`loops.Loop.before`). A loop holding a loop is split at the `if`s of its body on its variable,
each piece but the first counted from 0 (`_from_zero`), and the loops in its body are split as well; there
a loop over `range(start, stop, n)` of a number n > 0 (holding no loop) is split too, into ranges of that
step, each after a turn starting at the first step at or after it (`Splitting.start_after`). A condition
testing the variable another way (`t % 2 == 0`), another range with a step (one at the forward's top level
is a choice per step), or more than `MAX_PIECES` pieces leave the loop whole: a choice per step
(`step_choices`) where its `if`s allow, else refused by `loops.Planner.loop` or `nest` saying why
(`unsplit_reason`). `stop_at_most` proves a piece's stop no more than a dim, for `loop_lists.unit_slices`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.ir.visit import clone, names_bound, statements, walk
from layerdsl.language.naming import fresh_name
from layerdsl.semantics.shapes import dim_text

# loops one loop may be split into; each `==` bound splits twice
MAX_PIECES = 8

_FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


@dataclass(frozen=True)
class Bound:
    """An int `base + offset` (`base` None: the number `offset`): where a loop's variable crosses it."""

    base: N.Expr | None
    offset: int

    @property
    def key(self) -> str:
        return spec_text(self.base) if self.base is not None else ""

    def plus(self, k: int) -> Bound:
        return Bound(self.base, self.offset + k)

    def expr(self, span) -> N.Expr:
        """The bound as an int expression."""
        if self.base is None:
            return B.int_valued(N.Num(span, self.offset, str(self.offset)))
        if self.offset == 0:
            return clone(self.base)
        right = B.int_valued(N.Num(span, abs(self.offset), str(abs(self.offset))))
        return B.int_valued(N.BinOp(span, "+" if self.offset > 0 else "-", clone(self.base), right))


@dataclass(frozen=True)
class Fact:
    """`var < bound` (`below`) or `var >= bound`, true at every step of a piece."""

    bound: Bound
    below: bool


class Unsplit(Exception):
    """The loop is kept as written: an `if` tests its variable another way, or it would make too many loops."""


def split_loops(body: list[N.Stmt], taken: set[str], nested: bool = False) -> list[N.Stmt]:
    """`body` with each loop (and each loop in a loop's body) whose `if`s compare its variable with bounds the
    loop does not change written as loops in a row, each `if` decided in each; `body` itself where none is. `taken`: the
    names in use, to which the locals holding where the loops turn (`t_at = minimum(1, T)`) are added. `nested`:
    `body` is that of a loop holding a loop, where a loop over a range with a step is split too (`_aligned`)."""
    out: list[N.Stmt] = []
    changed = False
    for stmt in body:
        new: list[N.Stmt] = [stmt]
        if isinstance(stmt, N.For):
            new = [_inner_split(s, taken) for s in split_loop(stmt, taken, nested and not _holds_loop(stmt))]
        elif isinstance(stmt, N.If):
            then, orelse = split_loops(stmt.body, taken, nested), split_loops(stmt.orelse, taken, nested)
            if then is not stmt.body or orelse is not stmt.orelse:
                new = [dataclasses.replace(stmt, body=then, orelse=orelse)]
        changed |= new != [stmt]
        out += new
    return out if changed else body


def split_loop(loop: N.For, taken: set[str], stepped: bool = False) -> list[N.Stmt]:
    """`loop` as the locals holding where it turns and loops in a row, its `if`s on its variable decided in
    each; `[loop]` where it cannot be split. `stepped`: a range with a step of a number > 0 is split too."""
    try:
        return _pieces_of(loop, taken, stepped)
    except Unsplit:
        return [loop]


def _inner_split(stmt: N.Stmt, taken: set[str]) -> N.Stmt:
    """`stmt`, a loop holding a loop (a nest) with the loops of its body split."""
    if not (isinstance(stmt, N.For) and _holds_loop(stmt)):
        return stmt
    inner = split_loops(stmt.body, taken, nested=True)
    return stmt if inner is stmt.body else dataclasses.replace(stmt, body=inner)


def unsplit_reason(loop: N.For, cond: N.Expr) -> tuple[str, str] | None:
    """Why `loop` (holding `if cond`) was not split where its `if`s turn, and the hint; None when `cond` does
    not test the loop's variable."""
    if loop.var not in _names(cond):
        return None
    variant = _variant(loop)
    atom = next((a for a in _var_atoms(cond, loop.var) if _atom(a, loop.var, variant) is None), None)
    if atom is not None and _atom(atom, loop.var, set()) is not None:  # `t < n` of an `n` the body binds
        return (
            f", and its condition compares the loop's variable `{loop.var}` with an int the loop changes, so the"
            " loop cannot be split where the `if` turns",
            "compute the bound before the loop (an int the loop does not change), or compute both sides and"
            " choose with where(cond, a, b) on a tensor condition",
        )
    if atom is not None:
        return (
            f", and its condition tests the loop's variable `{loop.var}` other than by comparing it (==, !=, <,"
            " <=, >, >=) with an int the loop does not change, so the loop cannot be split where the `if` turns",
            f"compare `{loop.var}` with an int the loop does not change (`if {loop.var} < k`), or compute both"
            " sides and choose with where(cond, a, b) on a tensor condition",
        )
    if isinstance(loop.iter, N.Call) and len(loop.iter.args) == 3:
        return (
            ", and its range has a step: a loop is split where its `if`s turn over range(stop), range(start,"
            " stop), or in a loop holding a loop range(start, stop, n) of a number n > 0 only (not derived yet)",
            f"loop over range(n) and compute the index from `{loop.var}` (`x[2 * {loop.var}]`), or drop @function",
        )
    try:
        _pieces_of(loop, set())
    except Unsplit:
        return (
            f" (splitting the loop where its `if`s turn would make more than {MAX_PIECES} loops)",
            "test fewer bounds in one loop (write the singled-out steps before the loop), or drop @function",
        )
    return (  # it splits on its own: `split_loops` splits the loops of the forward's top level only
        ", and it is inside another loop whose count is known only when forward runs: a loop is split where its"
        " `if`s turn outside other loops only (not derived yet)",
        "write the singled-out steps before the inner loop, or drop @function",
    )


def _pieces_of(loop: N.For, taken: set[str], stepped: bool = False) -> list[N.Stmt]:
    it = loop.iter
    if not (isinstance(it, N.Call) and it.func == "range" and len(it.args) in (1, 2, 3)):
        raise Unsplit
    step = _positive_step(it) if len(it.args) == 3 else None
    if len(it.args) == 3 and (step is None or not stepped):
        raise Unsplit
    tests = [s for s in walk(loop) if isinstance(s, N.If) and loop.var in _names(s.cond)]
    if not tests:
        raise Unsplit
    variant = _variant(loop)
    for s in tests:
        if any(_atom(a, loop.var, variant) is None for a in _var_atoms(s.cond, loop.var)):
            raise Unsplit
    lo = it.args[0] if len(it.args) >= 2 else B.int_valued(N.Num(it.span, 0, "0"))
    hi = it.args[1] if len(it.args) == 3 else it.args[-1]
    facts = (Fact(_bound(lo), False), Fact(_bound(hi), True))
    pieces: list[tuple[N.Expr, N.Expr, list[N.Stmt]]] = []
    turns: list[N.Assign] = []
    _split(Splitting(loop, variant, set(taken), turns, step), loop.body, lo, hi, facts, pieces)
    taken |= {a.target for a in turns}
    out: list[N.Stmt] = list(turns)
    for start, stop, body in pieces:
        args = [start, stop] if step is None else [start, stop, clone(it.args[2])]
        iter_ = B.int_valued(N.Call(it.span, "range", it.func_span, args, []))
        iter_.kind = it.kind
        piece = dataclasses.replace(loop, iter=iter_, body=clone(body))
        out.append(_from_zero(piece, taken) if _holds_loop(loop) else piece)
    return out


def _from_zero(nest: N.For, taken: set[str]) -> N.For:
    """A piece of a loop holding a loop, `for l in range(a, b) { body }`, as `for l_step in range(b - a) {
    l = l_step + a; body }` (`codegen.function_nest` keeps what a step reads at its variable's index)."""
    it = nest.iter
    assert isinstance(it, N.Call)
    start, stop = it.args
    if isinstance(start, N.Num) and start.value == 0:
        return nest
    span = it.span
    step = fresh_name(f"{nest.var}_step", taken)
    taken.add(step)
    index = N.Name(span, step)
    index.ref = N.Ref.LOCAL
    count = B.int_valued(N.BinOp(span, "-", clone(stop), clone(start)))
    iter_ = B.int_valued(N.Call(span, "range", it.func_span, [count], []))
    iter_.kind = it.kind
    var = N.Assign(span, nest.var, nest.var_span, B.int_valued(N.BinOp(span, "+", B.int_valued(index), clone(start))))
    return dataclasses.replace(nest, var=step, iter=iter_, body=[var, *nest.body])


@dataclass
class Splitting:
    """A loop being split: the names its body binds, the names in use, and the locals holding where it turns."""

    loop: N.For
    variant: set[str]
    taken: set[str]
    turns: list[N.Assign]
    step: int | None = None  # of a range with a step

    def turn(self, value: N.Expr, local: bool = False) -> N.Expr:
        """`value` (where a loop turns), as a local of its own bound before the loops when it is a call (or
        `local`)."""
        if not isinstance(value, N.Call) and not local:
            return value
        name = fresh_name(f"{self.loop.var}_at", self.taken)
        self.taken.add(name)
        self.turns.append(N.Assign(self.loop.iter.span, name, self.loop.var_span, value))
        ref = N.Name(self.loop.iter.span, name)
        ref.ref = N.Ref.LOCAL
        return B.int_valued(ref)

    def start_after(self, at: N.Expr) -> N.Expr:
        """Where the piece after a turn at `at` starts: `at`, or in a range with a step the first step at or
        after it, `start + (at - start + step - 1) // step * step` (`at` may be before `start`)."""
        if self.step is None:
            return clone(at)
        it = self.loop.iter
        assert isinstance(it, N.Call)
        span, start = it.span, it.args[0]

        def num(k: int) -> N.Expr:
            return B.int_valued(N.Num(span, k, str(k)))

        def op(o: str, a: N.Expr, b: N.Expr) -> N.Expr:
            return B.int_valued(N.BinOp(span, o, a, b))

        ahead = op("+", op("-", clone(at), clone(start)), num(self.step - 1))
        return self.turn(op("+", clone(start), op("*", op("//", ahead, num(self.step)), num(self.step))), local=True)


def _split(
    s: Splitting,
    body: list[N.Stmt],
    lo: N.Expr,
    hi: N.Expr,
    facts: tuple[Fact, ...],
    pieces: list[tuple[N.Expr, N.Expr, list[N.Stmt]]],
) -> None:
    """Append to `pieces` the loops over [lo, hi) (where `facts` hold) that `body`'s `if`s on the variable
    split it into, each with its `if`s decided."""
    var = s.loop.var
    body = _decided(body, var, s.variant, facts)
    bound = next(
        (
            b
            for i in walk_ifs(body)
            for a in _var_atoms(i.cond, var)
            for b in _atom_bounds(a, var, s.variant)
            if _less(b, facts) is None
        ),
        None,
    )
    if bound is None:
        pieces.append((lo, hi, body))
        if len(pieces) > MAX_PIECES:
            raise Unsplit
        return
    at = s.turn(_clamped(bound, lo, hi, s.loop.iter.span))
    _split(s, body, lo, at, (*facts, Fact(bound, True)), pieces)
    _split(s, body, s.start_after(at), hi, (*facts, Fact(bound, False)), pieces)


def _positive_step(it: N.Call) -> int | None:
    """The step of `range(start, stop, step)`, a number > 0; None for another step."""
    step = it.args[2]
    return step.value if isinstance(step, N.Num) and isinstance(step.value, int) and step.value > 0 else None


def walk_ifs(body: list[N.Stmt]):
    """Every `if` of `body`, in the sides of `if`s and the bodies of loops too."""
    for s in body:
        if isinstance(s, N.If):
            yield s
            yield from walk_ifs(s.body)
            yield from walk_ifs(s.orelse)
        elif isinstance(s, N.For):
            yield from walk_ifs(s.body)


def _decided(body: list[N.Stmt], var: str, variant: set[str], facts: tuple[Fact, ...]) -> list[N.Stmt]:
    """`body` with each `if` whose condition `facts` decide as the side it picks."""
    out: list[N.Stmt] = []
    for s in body:
        if isinstance(s, N.For):  # an inner loop: the facts hold at each of its steps
            out.append(dataclasses.replace(s, body=_decided(s.body, var, variant, facts)))
            continue
        if not isinstance(s, N.If):
            out.append(s)
            continue
        cond = _reduced(s.cond, var, variant, facts)
        if isinstance(cond, bool):
            out += _decided(s.body if cond else s.orelse, var, variant, facts)
            continue
        then, orelse = _decided(s.body, var, variant, facts), _decided(s.orelse, var, variant, facts)
        out.append(dataclasses.replace(s, cond=cond, body=then, orelse=orelse))
    return out


def _reduced(cond: N.Expr, var: str, variant: set[str], facts: tuple[Fact, ...]) -> N.Expr | bool:
    """`cond` with its comparisons of `var` that `facts` decide as their truth: a bool where that decides
    it, else what is left of it."""
    if var not in _names(cond):
        return cond
    if isinstance(cond, N.Not):
        operand = _reduced(cond.operand, var, variant, facts)
        return (not operand) if isinstance(operand, bool) else dataclasses.replace(cond, operand=operand)
    if isinstance(cond, N.BoolOp):
        left, right = (_reduced(e, var, variant, facts) for e in (cond.left, cond.right))
        for known, other in ((left, right), (right, left)):
            if isinstance(known, bool):
                if known == (cond.op == "or"):
                    return known
                return other
        assert not isinstance(left, bool) and not isinstance(right, bool)
        return dataclasses.replace(cond, left=left, right=right)
    truth = _truth(cond, var, variant, facts)
    return cond if truth is None else truth


def _truth(cond: N.Expr, var: str, variant: set[str], facts: tuple[Fact, ...]) -> bool | None:
    """Whether the comparison `cond` of `var` holds where `facts` do; None where they do not decide it."""
    atom = _atom(cond, var, variant)
    assert atom is not None, "a loop with another test of its variable is not split (`_pieces_of`)"
    op, k = atom
    below, below_next = _less(k, facts), _less(k.plus(1), facts)
    if op == "<":
        return below
    if op == ">=":
        return None if below is None else not below
    if op == "<=":
        return below_next
    if op == ">":
        return None if below_next is None else not below_next
    equal = _and(None if below is None else not below, below_next)
    return equal if op == "==" or equal is None else not equal


def _and(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    return True if a and b else None


def _less(bound: Bound, facts: tuple[Fact, ...]) -> bool | None:
    """Whether `var < bound` holds where `facts` do (of bounds with the same base); None where they do
    not decide it."""
    for f in facts:
        if f.bound.key != bound.key:
            continue
        if f.below and f.bound.offset <= bound.offset:
            return True
        if not f.below and f.bound.offset >= bound.offset:
            return False
    return None


def _clamped(bound: Bound, lo: N.Expr, hi: N.Expr, span) -> N.Expr:
    """`minimum(maximum(bound, lo), hi)`, folded where the bounds share a base."""
    low, high = _bound(lo), _bound(hi)
    if bound.key == low.key:
        at: N.Expr | Bound = bound if bound.offset >= low.offset else low
    else:
        at = B.int_valued(N.Call(span, "maximum", span, [bound.expr(span), clone(lo)], []))
    if isinstance(at, Bound) and at.key == high.key:
        return (at if at.offset <= high.offset else high).expr(span)
    first = at.expr(span) if isinstance(at, Bound) else at
    return B.int_valued(N.Call(span, "minimum", span, [first, clone(hi)], []))


def _atom_bounds(cond: N.Expr, var: str, variant: set[str]) -> list[Bound]:
    """The bounds where comparison `cond` of `var` turns: `t < k` at k, `t <= k` at k + 1, `t == k` at both."""
    atom = _atom(cond, var, variant)
    assert atom is not None
    op, k = atom
    return {"<": [k], ">=": [k], "<=": [k.plus(1)], ">": [k.plus(1)]}.get(op, [k, k.plus(1)])


def _atom(cond: N.Expr, var: str, variant: set[str]) -> tuple[str, Bound] | None:
    """`(op, k)` for `var op k` (or `k op var`) with `k` an int the loop does not change; None otherwise."""
    if not (isinstance(cond, N.Compare) and len(cond.ops) == 1 and cond.ops[0] in _FLIPPED):
        return None
    (left, right), op = cond.operands, cond.ops[0]
    if _is_var(right, var) and not _is_var(left, var):
        left, right, op = right, left, _FLIPPED[op]
    if not _is_var(left, var) or right.kind != N.Kind.INT or _names(right) & (variant | {var}):
        return None
    return op, _bound(right)


def _var_atoms(cond: N.Expr, var: str) -> list[N.Expr]:
    """The parts of `cond` under `and`, `or` and `not` that read `var`."""
    if isinstance(cond, N.Not):
        return _var_atoms(cond.operand, var)
    if isinstance(cond, N.BoolOp):
        return _var_atoms(cond.left, var) + _var_atoms(cond.right, var)
    return [cond] if var in _names(cond) else []


def _bound(e: N.Expr) -> Bound:
    """`e` as a base and an int offset (`n - 1`: n, -1; `3`: none, 3)."""
    if isinstance(e, N.Num) and isinstance(e.value, int):
        return Bound(None, e.value)
    if isinstance(e, N.BinOp) and e.op in ("+", "-") and isinstance(e.right, N.Num) and isinstance(e.right.value, int):
        inner = _bound(e.left)
        return inner.plus(e.right.value if e.op == "+" else -e.right.value)
    return Bound(e, 0)


def _variant(loop: N.For) -> set[str]:
    """The names `loop`'s body binds (and its variable)."""
    return names_bound([loop])


def stop_at_most(stop: N.Expr, dim: str, body: list[N.Stmt]) -> bool:
    """Whether the int `stop` is proven no more than the dim `dim` (its canonical text): that dim, `minimum`
    of such, or a local `body` binds once to such (where a split loop turns, `t_at = minimum(1, T)`)."""
    if dim_text(stop) == dim:
        return True
    if isinstance(stop, N.Name) and stop.ref == N.Ref.LOCAL:
        values = [s.value for s in statements(body) if isinstance(s, N.Assign) and s.target == stop.id]
        return len(values) == 1 and stop_at_most(values[0], dim, body)
    if isinstance(stop, N.Call) and stop.func == "minimum" and len(stop.args) == 2:
        return any(stop_at_most(a, dim, body) for a in stop.args)
    return False


def _holds_loop(loop: N.For) -> bool:
    return any(isinstance(s, N.For) for s in walk(loop) if s is not loop)


def _is_var(e: N.Expr, var: str) -> bool:
    return isinstance(e, N.Name) and not isinstance(e, N.FamilyName) and e.id == var


def _names(e: N.Node) -> set[str]:
    return {n.id for n in walk(e) if isinstance(n, N.Name)}
