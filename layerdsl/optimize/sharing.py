"""A product that two gradients share, found up to reassociation: RMSNorm's `xhat = x * rstd`.

Reverse mode writes each gradient apart, so a product that the forward computed once is taken apart by
the chain rule: RMSNorm's grad_weight reads `x * rsqr` where grad_x reads `sum(g * x) * rsqr ** 3 * x`. When
a recomputed `m = a * b` has a narrow `b` (`[..., 1]`), a product chain holding `a` and, in another factor,
`b` is the same chain with `m` for `a` and one `b` fewer: `sum(g * x) * rsqr ** 3 * x` is
`sum(g * m) * rsqr * m`, since a sum over dims where `b` has size 1 commutes with multiplying by it. Then,
without a graph, `p * b + q` where `q` holds `b` is written `(p + q / b) * b`. Each rewrite removes one multiplication by
`b`; `m` is then computed wherever a gradient reading it is needed (its leaves are the union).
"""

from __future__ import annotations

import copy

from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.optimize.statements import Facts, Shapes, Stmt, reads, use_counts

Edits = dict[int, N.Expr]  # id(statement) -> its new value


def share_products(stmts: list[Stmt], facts: Facts) -> list[Stmt]:
    """Products shared between gradients (rewritten in place)."""
    for k, m in enumerate(stmts):
        pair = _shareable(m, facts)
        if pair is None:
            continue
        for s in stmts[k + 1 :]:
            if s.leaves != m.leaves and _plain(s, facts):
                _Chains(stmts, facts, m, *pair).share(s)
    return stmts


def common_factors(stmts: list[Stmt], facts: Facts) -> list[Stmt]:
    """Narrow common factors taken out of sums (rewritten in place). Only without a graph: recorded, the
    sum's fresh result cannot take the factor in place (`mul` keeps its operand), one buffer more."""
    chains: _Chains | None = None  # what it knows of the statements holds until a rewrite is applied
    for s in stmts:
        if _plain(s, facts) and s.unscaled is None:
            chains = chains or _Chains(stmts, facts)
            if chains.common_factor(s):
                chains = None
    return stmts


def _shareable(m: Stmt, facts: Facts) -> tuple[str, str] | None:
    """`(a, b)` for a recomputed `m = a * b` whose `b` is narrower than `a` (and `m`)."""
    e = m.expr
    if not (m.recompute and _plain(m, facts) and m.unscaled is None and isinstance(e, N.BinOp) and e.op == "*"):
        return None
    if not (isinstance(e.left, N.Name) and isinstance(e.right, N.Name)):
        return None
    shapes = Shapes(facts)
    for a, b in ((e.left, e.right), (e.right, e.left)):
        wide, narrow = shapes.of(a), shapes.of(b)
        if wide is not None and narrow is not None and "1" in narrow and shapes.of(e) == wide != narrow:
            return a.id, b.id
    return None


def _plain(s: Stmt, facts: Facts) -> bool:
    """A statement run whole (no optional member) whose rounding nothing compares."""
    return not s.guard and s.otherwise is None and s.target not in facts.exact


class _Chains:
    """Rewrites of one statement's product chains; the single-use temporaries they read are rewritten with it."""

    def __init__(self, stmts: list[Stmt], facts: Facts, m: Stmt | None = None, a: str = "", b: str = "") -> None:
        self.stmts, self.facts, self.m, self.a, self.b = stmts, facts, m, a, b
        uses = use_counts(stmts)
        targets = [s.target for s in stmts]
        self.temps = {
            s.target: s
            for s in stmts
            if uses.get(s.target) == 1
            and targets.count(s.target) == 1
            and s.target not in facts.kept
            and _plain(s, facts)
        }
        self.shapes = Shapes(facts)
        for s in stmts:
            self.shapes.learn(s)
        self.edits: Edits = {}
        self.renamed: dict[int, str] = {}  # id(statement) -> the new name of the temporary it binds

    # ---------------------------------------------------------------- sharing `m`

    def share(self, s: Stmt) -> None:
        """One chain of `s` reading `a` and carrying `b` rewritten to read `m` and one `b` fewer."""
        self.edits, self.renamed = {}, {}
        new = self._first_chain(s.expr, self._shared_chain)
        if new is not None and self._commit(s, new):
            assert self.m is not None
            self.m.leaves |= s.leaves

    def _shared_chain(self, factors: list[N.Expr]) -> list[N.Expr] | None:
        for i, f in enumerate(factors):
            saved = dict(self.edits)
            offered = self._offer(f)
            for j, g in enumerate(factors):
                if j == i or offered is None:
                    continue
                rest = self._without_b(g)
                if rest is not None:
                    new = [offered if k == i else rest if k == j else f for k, f in enumerate(factors)]
                    return [f for f in new if f is not _DROP]
            self.edits = saved
        return None

    def _offer(self, e: N.Expr) -> N.Expr | None:
        """`e` with one `a` read as `m`, where multiplying `e` by `b` may move onto that `a` (None if not)."""
        assert self.m is not None
        if isinstance(e, N.Name) and e.id == self.a:
            return B.name(self.m.target, e.span)
        if isinstance(e, N.Name) and e.id in self.temps:
            return self._through_temp(e, self._offer, "times")
        if isinstance(e, N.BinOp) and e.op == "*":
            for side in ("left", "right"):
                inner = self._offer(getattr(e, side)) if getattr(e, side).kind == "tensor" else None
                if inner is not None:
                    return _rebuilt(e, **{side: inner})
        if isinstance(e, N.BinOp) and e.op == "/" and e.right.kind != "tensor":
            inner = self._offer(e.left)
            return None if inner is None else _rebuilt(e, left=inner)
        if isinstance(e, N.Call) and e.func == "sum" and len(e.args) == 1 and self._constant_along(e):
            inner = self._offer(e.args[0])
            return None if inner is None else _with_arg(e, inner)
        return None

    def _constant_along(self, reduction: N.Call) -> bool:
        """Whether `b` has size 1 along every dim the keepdim `reduction` sums over (counted from the end)."""
        kw = {k.name: k.value for k in reduction.kwargs}
        keep, dim = kw.get("keepdim"), kw.get("dim")
        dims = dim.items if isinstance(dim, N.ListExpr) else [dim]
        shape = self.shapes.of(B.name(self.b))
        if not (isinstance(keep, N.Bool) and keep.value and shape is not None):
            return False
        return all(_at(shape, _negative(d)) for d in dims)

    # ---------------------------------------------------------------- a narrow common factor out of a sum

    def common_factor(self, s: Stmt) -> bool:
        """`p * b + q` as `(p + q / b) * b` where `q` carries `b` (one multiplication by `b` fewer); whether
        the statements changed."""
        self.edits, self.renamed = {}, {}
        new = self._factored(s.expr)
        return new is not None and self._commit(s, new)

    def _factored(self, e: N.Expr) -> N.Expr | None:
        if not (isinstance(e, N.BinOp) and e.op == "+" and e.kind == "tensor"):
            return None
        for p, q in ((e.left, e.right), (e.right, e.left)):
            for b in _factors(p):
                if not (isinstance(b, N.Name) and b.kind == "tensor" and "1" in (self.shapes.of(b) or ())):
                    continue
                self.b, self.edits, self.renamed = b.id, {}, {}
                rest = self._without_b(q)
                if rest is not None and rest is not _DROP:
                    kept = [f for f in _factors(p) if f is not b]
                    return B.binop("*", B.binop("+", _product(kept), rest), B.name(b.id, b.span))
        return None

    # ---------------------------------------------------------------- one `b` fewer

    def _without_b(self, e: N.Expr) -> N.Expr | None:
        """`e / b` written without the division (None if `e` does not carry `b`; `_DROP` if `e` is `b`)."""
        if isinstance(e, N.Name) and e.id == self.b:
            return _DROP
        if isinstance(e, N.Name) and e.id in self.temps:
            return self._through_temp(e, self._without_b, "over")
        if isinstance(e, N.BinOp) and e.op == "**" and isinstance(e.left, N.Name) and e.left.id == self.b:
            k = e.right.value if isinstance(e.right, N.Num) else None
            if isinstance(k, int) and k >= 2:
                return e.left if k == 2 else _rebuilt(e, right=B.num(k - 1))
            return None
        if isinstance(e, N.BinOp) and e.op == "*":
            return self._first_chain(e, self._chain_without_b, top_only=True)
        if isinstance(e, N.BinOp) and e.op == "/" and e.right.kind != "tensor":
            inner = self._without_b(e.left)
            return None if inner is None or inner is _DROP else _rebuilt(e, left=inner)
        if isinstance(e, N.Call) and e.func in ("expand_reduced", "reduced_view") and e.args:
            inner = self._without_b(e.args[0])
            return None if inner is None or inner is _DROP else _with_arg(e, inner)
        return None

    def _chain_without_b(self, factors: list[N.Expr]) -> list[N.Expr] | None:
        for j, f in enumerate(factors):
            saved = dict(self.edits)
            rest = self._without_b(f) if f.kind == "tensor" else None
            if rest is not None:
                return [r for r in factors[:j] + [rest] + factors[j + 1 :] if r is not _DROP]
            self.edits = saved
        return None

    # ---------------------------------------------------------------- plumbing

    def _through_temp(self, e: N.Name, rewrite, how: str) -> N.Expr | None:
        """A single-use temporary's value rewritten by `rewrite`; it is now `t` times or over `b`, and named so
        (`grad_rsqr_times_rsqr`): its old name would say what it no longer holds."""
        t = self.temps[e.id]
        if id(t) in self.edits:
            return None
        new = rewrite(t.expr)
        if new is None or new is _DROP:
            return None
        self.edits[id(t)] = new
        self.renamed[id(t)] = self._fresh(f"{e.id}_{how}_{self.b}")
        return B.name(self.renamed[id(t)], e.span)

    def _fresh(self, base: str) -> str:
        taken = set(self.facts.shapes) | {s.target for s in self.stmts} | set(self.renamed.values())
        taken |= {n for s in self.stmts for n in reads(s)}
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}{k}"
        return name

    def _first_chain(self, e: N.Expr, rewrite, top_only: bool = False) -> N.Expr | None:
        """`e` with its first (outermost, leftmost) product chain that `rewrite` takes rewritten."""
        if isinstance(e, N.BinOp) and e.op == "*":
            factors = _factors(e)
            new = rewrite(factors)
            if new is not None:
                return _product(new) if new else None
        if top_only:
            return None
        for side in ("left", "right", "operand"):
            child = getattr(e, side, None)
            if isinstance(child, N.Expr):
                new = self._first_chain(child, rewrite)
                if new is not None:
                    return _rebuilt(e, **{side: new})
        for k, arg in enumerate(e.args if isinstance(e, N.Call) else []):
            new = self._first_chain(arg, rewrite)
            if new is not None:
                assert isinstance(e, N.Call)
                return _with_arg(e, new, k)
        return None

    def _commit(self, s: Stmt, new: N.Expr) -> bool:
        """Apply the rewrite of `s` and of the temporaries it reads if every statement keeps its shape."""
        changed = [(t, self.edits[id(t)]) for t in self.stmts if id(t) in self.edits] + [(s, new)]
        for t, _ in changed:
            if id(t) in self.renamed:  # the same shape under its new name (checked next)
                self.shapes.env[self.renamed[id(t)]] = self.shapes.env.get(t.target)
        if any(self.shapes.of(e) != self.shapes.of(t.expr) for t, e in changed):
            return False
        for t, e in changed:
            t.expr = e
            t.target = self.renamed.get(id(t), t.target)
            if self.m is not None:
                self.m.leaves |= t.leaves
        return True


_DROP = B.num(1)  # `b / b`: the factor disappears from its chain


def _negative(d: N.Expr | None) -> int:
    """`k` for a dim written `-k` (0 for any other dim)."""
    if isinstance(d, N.Num) and isinstance(d.value, int) and d.value < 0:
        return -d.value
    if isinstance(d, N.UnaryOp) and d.op == "-" and isinstance(d.operand, N.Num) and isinstance(d.operand.value, int):
        return d.operand.value
    return 0


def _at(shape: tuple, k: int) -> bool:
    """Whether `shape` has size 1 at dim `-k`."""
    return 0 < k <= len(shape) and shape[-k] == "1"


def _factors(e: N.Expr) -> list[N.Expr]:
    if isinstance(e, N.BinOp) and e.op == "*":
        return _factors(e.left) + _factors(e.right)
    return [e]


def _product(factors: list[N.Expr]) -> N.Expr:
    out = factors[0]
    for f in factors[1:]:
        out = B.binop("*", out, f)
    return out


def _rebuilt(e: N.Expr, **parts: N.Expr) -> N.Expr:
    """A copy of `e` with some parts replaced (its kind kept)."""
    out = copy.copy(e)
    for k, v in parts.items():
        setattr(out, k, v)
    return out


def _with_arg(e: N.Call, arg: N.Expr, k: int = 0) -> N.Call:
    out = _rebuilt(e)
    assert isinstance(out, N.Call)
    out.args = [arg if i == k else a for i, a in enumerate(e.args)]
    return out
