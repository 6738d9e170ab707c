"""A backward's statements as the optimisation stage sees them, what it may assume about them, and the names
and shapes they read."""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Any

from layerdsl.diagnostics import Span
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import children, map_children, walk
from layerdsl.semantics.shapes import Shape, expr_shape


@dataclass(eq=False)
class Stmt:
    """`target = expr`, run when the gradients of `leaves` are needed."""

    target: str
    expr: N.Expr
    leaves: set[str]
    recompute: bool = False  # a forward intermediate computed again (may be folded into its reader)
    guard: str | None = None  # run only when this optional member is present (`target` is also read)
    dels: list[str] = field(default_factory=list)  # names dead after this statement
    unscaled: N.Expr | None = None  # the factor this value lacks, which its readers apply (scales.py)
    otherwise: N.Expr | None = None  # with a guard: the value when the member is absent
    span: Span = N.NOWHERE  # the spec expression it comes from (its generated line names that line)


@dataclass
class Facts:
    shapes: dict[str, Shape]  # what the backward starts with: leaves, saved values, incoming gradients
    kept: set[str]  # names never updated or deleted: inputs, saved tensors, incoming gradients, results
    foldable: set[str]  # recomputed intermediates without a spec name (spec locals stay named)
    full: list[Shape]  # shapes worth freeing early (inputs' and outputs')
    # Dtypes in terms of the leaves: a forward intermediate's is the promotion of the leaves it is computed
    # from, and an incoming gradient's is its output's (autograd casts it so).
    roots: dict[str, frozenset[str]] = field(default_factory=dict)
    incoming: set[str] = field(default_factory=set)  # the incoming gradients
    # Whether autograd may record the backward (create_graph=True). Without a graph nothing keeps a value
    # for later, so any temporary may be updated after its last read.
    graph: bool = True
    floating: frozenset[str] = frozenset()  # names declared floating-point (float inputs, parameters, gradients)
    # Forward values a max/min reads: an extremum mask compares their recomputation with the saved
    # extremum, so they round as the forward wrote them (no addcmul, which rounds once where `p + q * r` rounds twice).
    exact: frozenset[str] = frozenset()
    sizes: dict[str, int] = field(default_factory=dict)  # the example's value of each argument and dim (cost models)


def names(e: N.Expr) -> list[str]:
    """Every name `e` reads, once per occurrence."""
    return [n.id for n in walk(e) if isinstance(n, N.Name)]


def touches(e: N.Expr, names: Container[str] = (), funcs: Container[str] = ()) -> bool:
    """Whether `e` reads one of `names` or calls one of `funcs`: a pass that rewrites only those leaves
    the other statements as they are, uncopied."""
    return any(isinstance(n, N.Name) and n.id in names or isinstance(n, N.Call) and n.func in funcs for n in walk(e))


def rewritten_children(e: N.Expr, fn: Callable[[Any], Any]) -> N.Expr:
    """`map_children(e, fn)`, but `e` itself when `fn` changes no child: a pass copies only the nodes on the
    way to what it rewrites (a statement's nodes belong to it alone, so nothing else sees them shared).
    `fn` runs on each child once, in the order `map_children` runs it."""
    kids = children(e)
    new = [fn(c) for c in kids]
    if all(a is b for a, b in zip(kids, new, strict=True)):
        return e
    replaced = iter(new)
    return map_children(e, lambda _: next(replaced))


def reads(s: Stmt) -> list[str]:
    """Every name statement `s` reads, its guard and its value without the member included."""
    return names(s.expr) + ([s.guard] if s.guard else []) + (names(s.otherwise) if s.otherwise else [])


def use_counts(stmts: list[Stmt]) -> dict[str, int]:
    """How many times the statements read each name."""
    uses: dict[str, int] = {}
    for s in stmts:
        for n in reads(s):
            uses[n] = uses.get(n, 0) + 1
    return uses


def last_reads(stmts: list[Stmt]) -> dict[str, int]:
    """The index of the statement that reads each name last."""
    return {n: k for k, s in enumerate(stmts) for n in reads(s)}


class Shapes:
    """The static shapes of a backward's values (the shape engine's rules), learning each statement's
    result as the statements run."""

    def __init__(self, facts: Facts):
        self.facts = facts
        self.env: dict[str, Shape] = dict(facts.shapes)

    def of(self, e: N.Expr) -> Shape:
        return expr_shape(e, self.env)

    def learn(self, s: Stmt) -> None:
        shape = self.of(s.expr)
        self.env[s.target] = shape if shape is not None else self.facts.shapes.get(s.target)


class MemoShapes(Shapes):
    """`Shapes` that computes each node's shape once between two `learn`s (by node identity), for the passes
    that ask for the shapes of an expression and of its parts while leaving the nodes as they are
    (`inplace`, `schedule.fresh_buffers`): a statement's shapes cost as many steps as it has nodes, not
    as many as its nodes have descendants. `computed` counts the shapes computed (a test bounds it)."""

    def __init__(self, facts: Facts):
        super().__init__(facts)
        self.memo: dict[int, tuple[N.Expr, Shape]] = {}
        self.computed = 0

    def of(self, e: N.Expr) -> Shape:
        hit = self.memo.get(id(e))
        if hit is not None:
            return hit[1]
        self.computed += 1
        shape = expr_shape(e, self.env, self.of)
        self.memo[id(e)] = (e, shape)  # the node kept alive: its id is not reused meanwhile
        return shape

    def learn(self, s: Stmt) -> None:
        super().learn(s)
        self.memo.clear()  # a name's shape may have changed (or become known)
