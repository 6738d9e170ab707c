"""In-place updates: an operation writes its result into an operand that is a dead temporary.

An operation may update its first operand in place (`(beta * x).sigmoid_()`, `t.mul_(x)`) when that
operand is a temporary the backward owns and nothing reads afterwards. It must stay right when the
backward itself is differentiated (`create_graph=True`), so the operand must not be a view or alias, no
operation recorded before may need its old value (the op table's formulas say which operands and results
an operation's own derivative reads), the result must have its shape, and the other operands may not
promote its dtype (they read only tensors it was computed from). Without a graph (`Facts.graph` false)
nothing keeps a value for later, so it is enough that the temporary be dead and not aliased.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from layerdsl.ir import nodes as N
from layerdsl.ir.visit import map_children, walk
from layerdsl.optimize.operations import (
    dtype_sources,
    fresh_node,
    keeps_operand,
    operands,
    result_saved,
    row,
)
from layerdsl.optimize.statements import Facts, MemoShapes, Stmt, last_reads, names, rewritten_children
from layerdsl.semantics.shapes import Shape


def update_in_place(stmts: list[Stmt], facts: Facts) -> tuple[set[str], dict[str, Shape]]:
    """Rewrite the statements' operations to update dead temporaries in place. Returns the names whose
    storage lives on under another name, and the shapes of every name bound."""
    rewriter = _InPlaceRewriter(stmts, facts)
    rewriter.run()
    return rewriter.updated, rewriter.shapes.env


def in_place(method: str, target: N.Expr, others: list[N.Expr], e: N.Expr) -> N.InPlace:
    """`target.method(*others)` in place of operation `e`."""
    node = N.InPlace(e.span, method, target, others)
    node.kind = N.Kind.TENSOR
    return node


def unary_in_place(e: N.Expr, owned: set[str], floating: Callable[[N.Expr], bool]) -> N.Expr:
    """For a forward: a one-operand operation on a temporary nothing else reads (a fresh result inline,
    or a name in `owned`) updates it in place, `torch.sqrt(add)` as `add.sqrt_()`. `floating(e)`: whether
    `e` is known to be floating-point (an integer buffer cannot take a floating result)."""
    e = map_children(e, lambda c: unary_in_place(c, owned, floating))
    op = row(e)
    if isinstance(e, N.InPlace) or op is None or op.inplace is None or isinstance(e, N.Call) and e.kwargs:
        return e
    ops = operands(e)
    if len(ops) != 1:
        return e
    target = ops[0][1]
    mine = target.id in owned if isinstance(target, N.Name) else fresh_node(target) and not result_saved(target)
    return in_place(op.inplace, target, [], e) if mine and floating(target) else e


class _InPlaceRewriter:
    """One pass over the statements, tracking which temporaries are fresh, their dtypes' sources and shapes."""

    def __init__(self, stmts: list[Stmt], facts: Facts):
        self.stmts = stmts
        self.facts = facts
        self.shapes = MemoShapes(facts)
        self.roots: dict[str, frozenset[str]] = dict(facts.roots)
        self.roots_memo: dict[int, tuple] = {}  # each node's dtype sources, for the current statement
        self.fresh: set[str] = set()
        self.updated: set[str] = set()
        self.last_use = last_reads(stmts)
        self.k = 0
        # The statements before the current one that read each name (only they can keep its value), and
        # how often the current one reads each (rewriting copies the nodes it changes: `s.expr` stays as
        # it was).
        self.readers: dict[str, list[Stmt]] = {}
        self.counts: Counter[str] | None = None

    def run(self) -> None:
        for k, s in enumerate(self.stmts):
            self.k = k
            self.counts = None
            self.roots_memo.clear()  # the roots of the names bound so far changed
            s.expr = self.rewrite(s.expr, s)
            for name in dict.fromkeys(names(s.expr)):
                self.readers.setdefault(name, []).append(s)
            self.shapes.learn(s)
            self.roots[s.target] = self.guaranteed_roots(s)
            if self.fresh_result(s):
                self.fresh.add(s.target)
            else:
                self.fresh.discard(s.target)

    def fresh_result(self, s: Stmt) -> bool:
        """Whether `s` binds a new tensor nothing else holds, with its optional member present or not
        (absent, `h1 = h1 * b` leaves `h1` what it was: maybe an alias of a saved tensor)."""
        if not fresh_node(s.expr) or self.result_kept(s.expr) or s.target in self.facts.kept:
            return False
        if not s.guard:
            return True
        if s.otherwise is None:
            return s.target in self.fresh
        return fresh_node(s.otherwise) and not self.result_kept(s.otherwise)

    def rewrite(self, e: N.Expr, stmt: Stmt) -> N.Expr:
        if isinstance(e, N.Call) and e.func == "extremum_mask":
            return e  # its Python reads the input twice (`mask / mask.sum(...)`): an update there would run twice
        e = rewritten_children(e, lambda c: self.rewrite(c, stmt))
        op = row(e)
        if isinstance(e, N.InPlace) or op is None or op.inplace is None or isinstance(e, N.Call) and e.kwargs:
            return e
        args = [o for _, o in operands(e)]
        for i in [0, 1] if op.commutes else [0]:
            target = args[i]
            others = args[:i] + args[i + 1 :]
            if self.may_update(target, e, others, stmt):
                if isinstance(target, N.Name):
                    self.updated.add(target.id)  # its storage lives on under the new name
                return in_place(op.inplace, target, others, e)
        return e

    def may_update(self, target: N.Expr, e: N.Expr, others: list[N.Expr], stmt: Stmt) -> bool:
        # The cheap tests first: shapes and dtypes walk the whole operand, and most operands are not dead.
        if target.kind != "tensor":
            return False
        if isinstance(target, N.Name):
            if not self.dead_after(target.id, stmt):
                return False
        elif not fresh_node(target) or self.result_kept(target):
            return False
        shape = self.shapes.of(target)
        if shape is None or self.shapes.of(e) != shape:
            return False
        if not self.roots_of(target) & self.facts.floating:
            return False  # an integer tensor: a floating result could not be written into it
        return all(self.roots_of(o) <= self.roots_of(target) for o in others)  # else a wider dtype may come

    def result_kept(self, e) -> bool:
        return self.facts.graph and result_saved(e)

    def dead_after(self, name: str, stmt: Stmt) -> bool:
        """A fresh temporary read for the last time here, once, and never kept by an earlier operation."""
        rebound = stmt.target == name  # `t = t + b`: the old value dies here too
        if name not in self.fresh or not (rebound or self.last_use.get(name) == self.k):
            return False
        if self.counts is None:
            self.counts = Counter(names(stmt.expr))
        if self.counts[name] != 1:
            return False
        return not any(self.keeps(s, name) for s in self.readers.get(name, ()))

    def keeps(self, s: Stmt, name: str) -> bool:
        """Whether statement `s` left `name`'s current value where a later read (or autograd) needs it."""
        if isinstance(s.expr, N.Name):
            return s.expr.id == name  # an alias
        for node in walk(s.expr):
            if isinstance(node, N.IfExp) and any(
                isinstance(b, N.Name) and b.id == name for b in (node.then, node.orelse)
            ):
                return True  # `g if b is None else g * b`: an alias when the optional member is absent
            if isinstance(node, (N.BinOp, N.UnaryOp, N.Call, N.InPlace, N.Subscript)):  # a subscript: a view
                if self.fresh_sum(node):
                    continue
                for param, operand in operands(node):
                    if (
                        isinstance(operand, N.Name)
                        and operand.id == name
                        and keeps_operand(node, param, operand, self.facts.graph)
                    ):
                        return True
        return False

    def fresh_sum(self, node) -> bool:
        """`sum_to_size` between shapes known to differ: a new tensor, not its operand (an alias only when
        the shapes are equal), and its derivative needs no values."""
        if not (isinstance(node, N.Call) and node.func == "sum_to"):
            return False
        have, want = self.shapes.of(node.args[0]), self.shapes.of(node.args[1])
        return have is not None and want is not None and have != want

    def roots_of(self, e) -> frozenset[str]:
        return dtype_sources(e, self.roots, self.roots_memo)

    def guaranteed_roots(self, s: Stmt) -> frozenset[str]:
        """The roots of `s.target` whether or not its optional member is present."""
        if not s.guard:
            return self.roots_of(s.expr)
        if s.otherwise is not None:
            return self.roots_of(s.expr) & self.roots_of(s.otherwise)
        return self.roots.get(s.target, frozenset())
