"""`size_at(x, k)` of a tensor forward computes, followed back to a size of an input, parameter or buffer.

A `@function`'s setup_context and backward see the inputs and members, never a local: a size they read must
be measured from those (`unroll` names each such size as a dim of its own, kept on ctx as an int). So a
`size_at` of a local is written as the sizes it equals, by following the local's definition through views
and shape-keeping operations: `transpose(input, 0, -2)` at -2 is `input` at 0, `x @ transpose(w, 0, 1)` at
0 is `x` at 0, `cat([k, b], dim = 0)` at 0 is the sum of both, `reshape(q, [L, N, h, d])` at 0 is `L`.
Negative dims on spread shapes (`[..., d]`) map where the ranks the definitions prove decide it.

Any other op is followed by the shape engine (`semantics/shapes.py`, the op table's shape rules): the local's
shape inferred from the leaves' declared shapes, its dim k written as the leaf sizes declared with that dim
(`pad(x, [1, 2])` at -1 is `size_at(x, -1) + 3`), so an op added as a table row is followed without a rule
here. The rules above stay, and are asked first, for what the engine does not answer: it places no dim of
a `[..., d]` shape counted from the front (`transpose(input, 0, -2)` at -2 is `input` at 0 only where the
ranks the definitions prove say so: the engine's shapes carry no "at least k dims"), nor a dim of an input
declared without a shape; and a size written in a list (`reshape(q, [L, N, h, d])`) is a number local of the
spec, which the rules keep by name where it still means the same (the engine has its text only).

Inside an `if` on an input's rank (`if x.ndim == 2`, or its `else`), that rank is what the condition says
(2; not 2), narrowing the `...` of its declared shape there: `unsqueeze(x, 1)` then has exactly 3 dims,
`x + y` of two 2-dim tensors exactly 2, and `squeeze(y, 1)` of a dim proven 1 one less. Broadcast operands
of exact ranks that all reach a dim with the same size there (`x + f(x)`) give that size. A test of a
local's rank that the rank proven at least decides (`h.ndim == 2` of `h = x + y`, y of 3 dims) is `false`.

A local assigned on both sides of an `if` resolves to one size when every side agrees; otherwise it is left
for the plan, which plans each side of the `if` on its own (and resolves the size there; an `if` in a kept
loop's body, once taken out of the loop). A local a kept loop carries from step to step (`h = block(h)`)
has, in the body and after it, the sizes of its value before the loop: the loop lists it in
`For.shapes_kept`, and the Function's forward checks that each step keeps its shape.
`candidate_sizes` lists every input size a local's size may resolve to on any side, so each is named once
for the whole Function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container
from dataclasses import dataclass
from typing import cast

from layerdsl.autodiff.slice_sizes import slice_length, sliced_dim
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import clone, map_children, names_bound, walk
from layerdsl.language.ops import OPS
from layerdsl.semantics.evaluate import NotConstant, evaluate
from layerdsl.semantics.shapes import GROUP, Shape, as_int, call_args, declared_shape, expr_shape, opaque, text_poly

LEAVES = (N.Ref.INPUT, N.Ref.PARAM, N.Ref.BUFFER)


@dataclass(frozen=True)
class _Def:
    """A local's value, and the definitions in force where it was assigned."""

    value: N.Expr
    env: dict


@dataclass(frozen=True)
class _Part:
    """One part of `a, b, c = chunk(x, 3)` (or split)."""

    value: N.Call
    env: dict


@dataclass(frozen=True)
class _Branched:
    """A local assigned differently on the sides of an `if`: each side's definition (None: unassigned or
    not followed there)."""

    sides: tuple


@dataclass(frozen=True)
class _Carried:
    """A local a kept loop's body reads before it assigns it: the value the step before left, whose sizes
    are followed as those of its first value (`start`), which each step is checked to keep."""

    name: str
    start: object  # _Def | _Part | _Branched
    loop: N.For  # the loop (as walked), whose `shapes_kept` lists the local once its sizes are read


Env = dict  # local name -> _Def | _Part | _Branched | _Carried | None (not followed: indexed, ...)


@dataclass(frozen=True)
class _Rank:
    """What the definitions prove of a tensor's number of dims: at least `least`, exactly that if `exact`."""

    least: int
    exact: bool


_UNKNOWN_RANK = _Rank(0, False)


@dataclass(frozen=True)
class _Known:
    """What the conditions of the `if`s a statement is in say of an input's rank (`x.ndim == 2` taken: 2;
    not taken: not 2; `x.ndim <= 3`: at most 3), kept in the env under `x.ndim`."""

    least: int = 0
    most: int | None = None
    excluded: frozenset[int] = frozenset()

    def given(self, op: str, n: int) -> _Known:
        """These facts and `rank op n`."""
        least, most, excluded = self.least, self.most, self.excluded
        if op in ("==", ">=", ">"):
            least = max(least, n + (op == ">"))
        if op in ("==", "<=", "<"):
            most = min(n - (op == "<"), most if most is not None else n)
        if op == "!=":
            excluded |= {n}
        return _Known(least, most, excluded)

    def rank(self, declared: _Rank) -> _Rank:
        """The declared rank narrowed by these facts."""
        if declared.exact:
            return declared
        least = max(self.least, declared.least)
        while least in self.excluded:
            least += 1
        return _Rank(least, self.most is not None and least >= self.most)


def resolved_local_sizes(body: list[N.Stmt], layer: N.Layer) -> tuple[list[N.Stmt], set[N.Span]]:
    """`body` with each `size_at` of a computed tensor written as sizes of inputs and members, where every
    side of the `if`s before it agrees; and where the sides disagree, the calls left for the plan's sides
    (their spans)."""
    walker = _Walker(layer)
    return walker.body(body, {}), walker.pending


def sub_requires_dropped(layer: N.Layer, inlined: Container[N.Span]) -> N.Layer:
    """`layer`, its subs inlined (their statements' spans `inlined`), without the subs' `require`s: the
    Function checks none of them (the module checks its own layer's before `apply`, and the subs' it can:
    `sub_requires.checked_before_apply`), so what a `require` says of a rank is the layer's own, checked,
    when the sizes followed back rely on it."""
    assert layer.forward is not None

    def kept(body: list[N.Stmt]) -> list[N.Stmt]:
        out: list[N.Stmt] = []
        for s in body:
            if isinstance(s, N.Require) and s.span in inlined:
                continue
            if isinstance(s, N.If):
                s = dataclasses.replace(s, body=kept(s.body), orelse=kept(s.orelse))
            elif isinstance(s, N.For):
                s = dataclasses.replace(s, body=kept(s.body))
            out.append(s)
        return out

    return layer.with_body(kept(layer.forward.body))


def candidate_sizes(body: list[N.Stmt], layer: N.Layer) -> list[N.Expr]:
    """Every `size_at` and `.ndim` of an input or member that a size or rank of a computed tensor in `body`
    may resolve to, on any side of its `if`s (in order of appearance)."""
    walker = _Walker(layer)
    walker.body(body, {})
    return walker.candidates


class _Walker:
    """The forward's statements in order, with the definitions in force at each."""

    def __init__(self, layer: N.Layer):
        self.layer = layer
        self.shapes = _declared_ranks(layer)
        self.pending: set[N.Span] = set()
        self.candidates: list[N.Expr] = []
        self.sizes: dict[tuple[int, int, int], tuple] = {}  # memo of local_size
        self.ranks: dict[int, tuple] = {}  # memo of local_rank
        self.rank_exprs: dict[int, tuple] = {}  # memo of local_rank_of
        self.leaves = _leaves(layer)
        self.engine_shapes: dict[int, tuple] = {}  # memo of local_shape

    def body(self, body: list[N.Stmt], env: Env) -> list[N.Stmt]:
        return [self.stmt(s, env) for s in body]

    def stmt(self, stmt: N.Stmt, env: Env) -> N.Stmt:
        if isinstance(stmt, N.If):
            return self.branches(stmt, env)
        if isinstance(stmt, N.For):
            return self.loop(stmt, env)
        out = map_children(stmt, lambda e: self.expr(e, env))
        if isinstance(out, N.Assign):
            env[out.target] = _Def(out.value, dict(env))
        elif isinstance(out, N.Unpack):
            value = out.value
            parts = isinstance(value, N.Call) and value.func in OPS and OPS[value.func].shape == "parts"
            for target, _ in out.targets:
                env[target] = _Part(cast(N.Call, value), dict(env)) if parts else None
        elif isinstance(out, N.IndexAssign | N.Update):
            env[out.target] = None
        return out

    def branches(self, stmt: N.If, env: Env) -> N.If:
        """Each side walked on its own; after the `if`, a local the sides assign differently is both."""
        then_env, else_env = dict(env), dict(env)
        out = map_children(stmt, lambda e: self.expr(e, env))
        _learned(stmt.cond, True, then_env)
        _learned(stmt.cond, False, else_env)
        out.body = self.body(stmt.body, then_env)
        out.orelse = self.body(stmt.orelse, else_env)
        for name in {n for n in then_env.keys() | else_env.keys() if not n.endswith(_KNOWN)}:  # facts stay inside
            a, b = then_env.get(name), else_env.get(name)
            env[name] = a if a is b else _Branched((a, b))
        return out

    def loop(self, stmt: N.For, env: Env) -> N.For:
        """What the body assigns is carried from step to step. In the body, a local bound before the loop has
        the sizes of its value there: forward checks that each step keeps them (`For.shapes_kept`, the
        locals whose sizes were read so). After the loop, what the body assigns is not followed."""
        assigned = names_bound(stmt.body) | {stmt.var}
        before = {name: env[name] for name in assigned if env.get(name) is not None}
        env.update(dict.fromkeys(assigned))
        out = map_children(stmt, lambda e: self.expr(e, env))
        carried = {name: _Carried(name, start, out) for name, start in before.items()}
        out.body = self.body(stmt.body, env | carried)
        env.update(dict.fromkeys(assigned))
        env.update(carried)  # after the loop, the last step's value: the shape checked at each step
        return out

    def expr(self, e: N.Expr, env: Env) -> N.Expr:
        if not isinstance(e, N.Expr):
            return e
        e = map_children(e, lambda c: self.expr(c, env))
        if isinstance(e, N.Rank) and e.value.ref not in LEAVES:
            return self.resolved(e, self.rank_of(e.value, env))
        if isinstance(e, N.Compare) and (decided := self.rank_test(e, env)) is not None:
            return decided
        if not (isinstance(e, N.Call) and e.func == "size_at" and len(e.args) == 2):
            return e
        of, at = e.args
        if isinstance(of, N.Name) and of.ref in LEAVES:
            return e
        k = _int(at)
        return self.resolved(e, None if k is None else self.size(of, k, env, env))

    def rank_test(self, e: N.Compare, env: Env) -> N.Bool | None:
        """`h.ndim == 2` (h a local whose rank is not followed back to one value) as `false` where the rank
        the definitions prove at least decides it (`h = x + y`, y of 3 dims: `h.ndim >= 3`)."""
        test = _rank_comparison(e)
        if test is None or test[0].ref in LEAVES:
            return None
        local, op, n = test
        least = self.rank(local, env).least
        if n >= least:
            return None  # ranks below n are not ruled out
        decided = N.Bool(e.span, op in ("!=", ">", ">="))
        decided.kind = N.Kind.BOOL
        return decided

    def resolved(self, e: N.Expr, sizes: list[N.Expr] | None) -> N.Expr:
        """`e` (a size or rank of a local) as the one value `sizes` gives, or left for the plan's sides."""
        if not sizes:
            return e  # refused where the plan reaches it straight (unroll's message)
        for size in sizes:
            self.candidates += [
                c for c in walk(size) if isinstance(c, N.Expr) and (_is_leaf_size(c) or isinstance(c, N.Rank))
            ]
        if len({B.key(s) for s in sizes}) > 1:
            self.pending.add(e.span)
            return e
        size = clone(sizes[0])
        for n in walk(size):  # located where the spec reads the size (the generated line's comment)
            if isinstance(n, N.Expr):
                n.span = e.span
        return size

    def rank_of(self, e: N.Expr, env: Env) -> list[N.Expr] | None:
        """`e.ndim` as a number or the rank of an input or member (plus a number), one per side."""
        rank = self.rank(e, env)
        if rank.exact:
            return [B.num(rank.least)]
        if isinstance(e, N.Name):
            if e.ref in LEAVES:
                ndim = N.Rank(e.span, clone(e))
                ndim.kind = N.Kind.INT
                return [ndim]
            return self.local_rank_of(env.get(e.id))
        if isinstance(e, N.UnaryOp):
            return self.rank_of(e.operand, env)
        operands: list[N.Expr] = []
        if isinstance(e, N.BinOp) and e.op != "@":
            operands = [e.left, e.right]
        elif isinstance(e, N.Call) and e.func in OPS and not e.sub:
            op, args = OPS[e.func], call_args(OPS[e.func], e)
            if op.shape == "elementwise":
                operands = [args[p.name] for p in op.params if p.tensor and p.name in args]
            elif op.shape in ("softmax", "transpose") and "input" in args:
                operands = [args["input"]]
        tensors = [o for o in operands if o.kind == N.Kind.TENSOR]
        ranks = [self.rank(t, env) for t in tensors]
        for i, (t, rank) in enumerate(zip(tensors, ranks)):  # the operand whose rank is the result's
            if all(r.exact and r.least <= rank.least for j, r in enumerate(ranks) if j != i):
                return self.rank_of(t, env)
        return None

    def local_rank_of(self, d) -> list[N.Expr] | None:
        """A local's rank, once per definition."""
        if id(d) not in self.rank_exprs:
            self.rank_exprs[id(d)] = (d, self.definition_rank_of(d))
        return self.rank_exprs[id(d)][1]

    def definition_rank_of(self, d) -> list[N.Expr] | None:
        if isinstance(d, _Carried):
            return self.local_rank_of(self.carried(d))
        if isinstance(d, _Branched):
            return _union([self.local_rank_of(side) for side in d.sides])
        if isinstance(d, _Def):
            return self.rank_of(d.value, d.env)
        if isinstance(d, _Part):
            source = _call_operand(d.value, "input")
            return None if source is None else self.rank_of(source, d.env)
        return None

    def carried(self, d: _Carried):
        """The first value of a carried local, whose sizes it keeps (forward checks it)."""
        if d.name not in d.loop.shapes_kept:
            d.loop.shapes_kept = tuple(sorted((*d.loop.shapes_kept, d.name)))
        return d.start

    # ------------------------------------------------------------------ sizes

    def size(self, e: N.Expr, k: int, env: Env, use: Env) -> list[N.Expr] | None:
        """The sizes `e` (its names defined by `env`) may have at dim `k`, one per distinguishable side,
        written for a statement where `use` is in force; None when it is not followed."""
        if isinstance(e, N.Name):
            if e.ref in LEAVES:
                return [_size_at(e, k)]
            return self.local_size(env.get(e.id), k, use) if e.id in env else None
        if isinstance(e, N.UnaryOp):
            return self.size(e.operand, k, env, use)
        if isinstance(e, N.BinOp):
            if e.op == "@":
                return self.matmul_size(e.left, e.right, k, env, use)
            return self.broadcast_size([e.left, e.right], k, env, use)
        if isinstance(e, N.Call) and e.func in OPS and not e.sub:
            return self.op_size(e, k, env, use) or self.engine_size(e, k, env)
        if isinstance(e, N.Subscript) and (j := _indexed_dim(e.items, k)) is not None:
            return self.size(e.value, j, env, use)
        if isinstance(e, N.Subscript) and (sliced := sliced_dim(e.items, k)) is not None:  # `h[:, a:b]`
            sizes = self.size(e.value, sliced[0], env, use)
            return None if sizes is None else [slice_length(sliced[1], size) for size in sizes]
        return None

    # ------------------------------------------------------------------ the shape engine's answer

    def engine_size(self, e: N.Expr, k: int, env: Env) -> list[N.Expr] | None:
        """Dim k of `e` as the shape engine infers it (the op table's shape rules, over the leaves' declared
        dims), written as sizes of the leaves: what an op without a rule above gives (`pad`, `conv1d`, ...)."""
        shape = self.engine_shape(e, env)
        if shape is None or opaque(shape) or not -len(shape) <= k < len(shape):
            return None
        if GROUP in (shape[: k + 1] if k >= 0 else shape[k:]):
            return None  # dim k may fall in a `...` group
        size = _written(shape[k], self.leaves)
        return None if size is None else [size]

    def engine_shape(self, e: N.Expr, env: Env) -> Shape:
        """`e`'s shape by the shape engine, its locals' shapes inferred from their definitions alike."""
        shapes: dict[str, Shape] = dict(self.leaves.shapes)
        for n in walk(e):
            if isinstance(n, N.Name) and n.kind == N.Kind.TENSOR and n.ref not in LEAVES:
                shapes[n.id] = self.local_shape(env.get(n.id))
        return expr_shape(e, shapes)

    def local_shape(self, d) -> Shape:
        """A local's shape, once per definition (the sides of an `if` must agree)."""
        if id(d) not in self.engine_shapes:
            self.engine_shapes[id(d)] = (d, self.definition_shape(d))
        return self.engine_shapes[id(d)][1]

    def definition_shape(self, d) -> Shape:
        if isinstance(d, _Carried):
            return self.local_shape(self.carried(d))
        if isinstance(d, _Def):
            return self.engine_shape(d.value, d.env)
        if isinstance(d, _Branched):
            sides = {self.local_shape(side) for side in d.sides}
            return sides.pop() if len(sides) == 1 else None
        return None  # a part of chunk/split, or not followed

    def local_size(self, d, k: int, use: Env) -> list[N.Expr] | None:
        """A local's size at k, once per definition (an unrolled loop's `if`s chain definitions)."""
        key = (id(d), k, id(use))
        if key not in self.sizes:
            self.sizes[key] = (d, use, self.definition_size(d, k, use))  # d and use kept: their ids stay theirs
        return self.sizes[key][2]

    def definition_size(self, d, k: int, use: Env) -> list[N.Expr] | None:
        if isinstance(d, _Carried):
            return self.local_size(self.carried(d), k, use)
        if isinstance(d, _Def):
            return self.size(d.value, k, d.env, use)
        if isinstance(d, _Part):
            source, dim = _call_operand(d.value, "input"), _int_arg(d.value, "dim", 0)
            if source is None or dim is None:
                return None
            same = _same_dim(k, dim, self.rank(source, d.env))
            return None if same is not False else self.size(source, k, d.env, use)
        if isinstance(d, _Branched):
            return _union([self.local_size(side, k, use) for side in d.sides])
        return None

    def op_size(self, call: N.Call, k: int, env: Env, use: Env) -> list[N.Expr] | None:
        op = OPS[call.func]
        args = call_args(op, call)
        x = args.get("input")
        if op.shape in ("elementwise", "softmax"):
            operands = [args[p.name] for p in op.params if p.tensor and p.name in args]
            return self.broadcast_size(operands if op.shape == "elementwise" else operands[:1], k, env, use)
        if op.shape == "matmul":
            return self.matmul_size(args["input"], args["other"], k, env, use)
        if op.shape == "transpose" and x is not None:
            d0, d1 = _int(args["dim0"]), _int(args["dim1"])
            if d0 is None or d1 is None:
                return None
            if k in (d0, d1):  # the other of the two (the same dim, when they coincide)
                return self.size(x, d1 if k == d0 else d0, env, use)
            rank = self.rank(x, env)
            at0, at1 = _same_dim(k, d0, rank), _same_dim(k, d1, rank)
            if at0 is None or at1 is None:
                return None
            return self.size(x, d1 if at0 else d0 if at1 else k, env, use)
        if call.func in ("unsqueeze", "squeeze") and x is not None:
            d = _int(args.get("dim"))
            return None if d is None else self.unsqueezed_size(call.func == "unsqueeze", x, d, k, env, use)
        if call.func in ("reshape", "expand", "new_zeros"):
            return self.listed_size(call, args, k, env, use)
        if op.shape == "concat":
            return self.concat_size(call.func == "stack", args, k, env, use)
        return None

    def unsqueezed_size(self, adds: bool, x: N.Expr, d: int, k: int, env: Env, use: Env) -> list[N.Expr] | None:
        """Dim k of unsqueeze(x, d) (a new dim of size 1 at d) or of squeeze(x, d), where the dims around
        d decide it without a run-time rank (squeeze only keeps the dims before d)."""
        if adds:
            rank = self.rank(x, env)
            if (k >= 0) != (d >= 0) and rank.exact:
                k, d = k % (rank.least + 1), d % (rank.least + 1)
            if (k >= 0) != (d >= 0):
                return None
            if k == d:
                return [B.num(1)]
            after = k > d if k >= 0 else k < d
            return self.size(x, (k - 1 if k >= 0 else k + 1) if after else k, env, use)
        if 0 <= k < d or d < k < 0:  # a dim before a squeezed one (or after, counted from the end)
            return self.size(x, k, env, use)
        if not self.is_one(x, d, env):
            return None  # whether dim d is dropped is known at run time only
        rank = self.rank(x, env)
        if rank.exact and rank.least > 1:  # dim k of the rank - 1 left, counted from the front
            k, d = k % (rank.least - 1), d % rank.least
        if (k >= 0) != (d >= 0):
            return None
        return self.size(x, k + (k >= d) if k >= 0 else k - (k <= d), env, use)

    def listed_size(self, call: N.Call, args: dict, k: int, env: Env, use: Env) -> list[N.Expr] | None:
        """Dim k of a view or new tensor whose sizes are written as a list (`-1` in expand: the input's)."""
        sizes = args.get("shape", args.get("size"))
        if not isinstance(sizes, N.ListExpr) or any(isinstance(i, N.Spread) for i in sizes.items):
            return None
        n = len(sizes.items)
        if not -n <= k < n:
            return None
        item = sizes.items[k]
        if _int(item) == -1:
            x = args.get("input")
            return self.size(x, k % n - n, env, use) if call.func == "expand" and x is not None else None
        return self.number(item, env, use)

    def concat_size(self, new: bool, args: dict, k: int, env: Env, use: Env) -> list[N.Expr] | None:
        tensors, dim = args.get("tensors"), _int(args.get("dim", B.num(0)))
        if not isinstance(tensors, N.ListExpr) or not tensors.items or dim is None:
            return None
        first = tensors.items[0]
        if new:  # stack: a new dim of the list's length at `dim`
            if (k >= 0) != (dim >= 0):
                return None
            if k == dim:
                return [B.num(len(tensors.items))]
            after = k > dim if k >= 0 else k < dim
            return self.size(first, k - 1 if after and k >= 0 else k + 1 if after else k, env, use)
        same = _same_dim(k, dim, self.rank(first, env))
        if same is None:
            return None
        if not same:
            return self.size(first, k, env, use)
        total: list[N.Expr] | None = None
        for t in tensors.items:
            sizes = self.size(t, k, env, use)
            if sizes is None:
                return None
            total = sizes if total is None else [_plus(a, b) for a in total for b in sizes]
        return total

    def broadcast_size(self, operands: list[N.Expr], k: int, env: Env, use: Env) -> list[N.Expr] | None:
        """Dim k of operands broadcast together: the one operand that reaches dim k (the others' ranks
        proven to stop short of it)."""
        tensors = [o for o in operands if o.kind == N.Kind.TENSOR]
        ranks = [self.rank(t, env) for t in tensors]
        for i, (t, rank) in enumerate(zip(tensors, ranks)):
            others = [r for j, r in enumerate(ranks) if j != i]
            if not all(r.exact and r.least <= rank.least for r in others):
                continue
            if k >= 0 and all(k < rank.least - r.least for r in others) or k < 0 and all(r.least < -k for r in others):
                return self.size(t, k, env, use)
        return self.same_size(tensors, ranks, k, env, use)

    def same_size(self, tensors: list[N.Expr], ranks: list[_Rank], k: int, env: Env, use: Env) -> list[N.Expr] | None:
        """Dim k of operands of exact ranks broadcast together, where every operand that reaches it has the
        same size there (`x + f(x)`: `x` at 0 and `f(x)` at 0 both `size_at(x, 0)`)."""
        if not tensors or not all(r.exact for r in ranks):
            return None
        result = max(r.least for r in ranks)
        at = k if k < 0 else k - result  # counted from the end
        if not -result <= at < 0:
            return None
        sizes: list[N.Expr] = []
        for t, r in zip(tensors, ranks):
            if r.least >= -at:  # t reaches dim k
                found = self.size(t, at, env, use)
                if found is None or len(found) != 1:
                    return None
                sizes += found
        if len({B.key(self.canonical(s, use)) for s in sizes}) != 1:
            return None
        # a size forward reads already (a number local) rather than a new size of an input
        return [min(sizes, key=lambda s: any(_is_leaf_size(n) for n in walk(s)))]

    def matmul_size(self, left: N.Expr, right: N.Expr, k: int, env: Env, use: Env) -> list[N.Expr] | None:
        """Dim k of `left @ right`, where a matrix operand (exactly 2 dims) leaves the batch dims to the
        other."""
        lr, rr = self.rank(left, env), self.rank(right, env)
        if lr.least < 2 or rr.least < 2:
            if rr.exact and rr.least == 1 and lr.least >= 2:  # matrix (stack) times vector: the last dim goes
                return self.size(left, k - 1 if k < 0 else k, env, use)
            return None
        if k == -1:
            return self.size(right, -1, env, use)
        if k == -2:
            return self.size(left, -2, env, use)
        if rr.exact and rr.least == 2:  # the result has left's dims, its last one right's
            if k < 0 or k < lr.least - 1 or lr.exact and k != lr.least - 1:
                return self.size(left, k, env, use)
            return self.size(right, -1, env, use) if lr.exact else None
        if lr.exact and lr.least == 2 and k < 0:
            return self.size(right, k, env, use)
        return None

    def number(self, e: N.Expr, env: Env, use: Env) -> list[N.Expr] | None:
        """An int expression of a definition, written for a statement where `use` is in force: its sizes
        resolved, and each number local kept by name where it still means the same, else its value."""
        if isinstance(e, N.Call) and e.func == "size_at" and len(e.args) == 2:
            if _is_leaf_size(e):
                return [e]
            k = _int(e.args[1])
            return None if k is None else self.size(e.args[0], k, env, use)
        if isinstance(e, N.Name) and e.ref == N.Ref.LOCAL and e.id in env:
            d = env[e.id]
            if d is not None and use.get(e.id) is d:
                return [e]
            return self.number(d.value, d.env, use) if isinstance(d, _Def) else None
        if isinstance(e, N.Name | N.Num):
            return [e]
        if isinstance(e, N.BinOp):
            left, right = self.number(e.left, env, use), self.number(e.right, env, use)
            if left is None or right is None:
                return None
            return [_with(e, left=a, right=b) for a in left for b in right]
        return None

    def is_one(self, x: N.Expr, k: int, env: Env) -> bool:
        """Whether dim k of `x` is 1 by its definitions (`unsqueeze(q, 1)` at 1, or a number local that is
        1 on this way through the `if`s)."""
        sizes = self.size(x, k, env, env)
        return sizes is not None and all(_int(self.expanded(s, env)) == 1 for s in sizes)

    def canonical(self, e: N.Expr, env: Env) -> N.Expr:
        """An int expression as it compares with others: its number locals expanded, each size of an input of
        a known rank counted from the front (`size_at(x, -2)` of a 2-dim x is `size_at(x, 0)`)."""

        def go(n: N.Expr) -> N.Expr:
            n = map_children(n, lambda c: go(c) if isinstance(c, N.Expr) else c)
            if _is_leaf_size(n) and (k := _int(n.args[1])) is not None and k < 0:  # type: ignore[attr-defined]
                rank = self.rank(n.args[0], env)  # type: ignore[attr-defined]
                if rank.exact and -k <= rank.least:
                    return _size_at(n.args[0], k % rank.least)  # type: ignore[attr-defined]
            return n

        return go(self.expanded(e, env))

    def expanded(self, e: N.Expr, env: Env) -> N.Expr:
        """An int expression with each number local written as its definition (for comparing sizes)."""

        def go(n: N.Expr, env: Env) -> N.Expr:
            if isinstance(n, N.Name) and n.ref == N.Ref.LOCAL and isinstance(d := env.get(n.id), _Def):
                return go(d.value, d.env)
            return map_children(n, lambda c: go(c, env) if isinstance(c, N.Expr) else c)

        return go(clone(e), env)

    # ------------------------------------------------------------------ ranks

    def rank(self, e: N.Expr, env: Env) -> _Rank:
        """What the definitions prove of `e`'s number of dims."""
        if e.kind != N.Kind.TENSOR:
            return _Rank(0, True)
        if isinstance(e, N.Name):
            if e.ref in LEAVES:
                declared = self.shapes.get(e.id, _UNKNOWN_RANK)
                known = env.get(e.id + _KNOWN)
                return known.rank(declared) if isinstance(known, _Known) else declared
            return self.local_rank(env.get(e.id), env)
        if isinstance(e, N.UnaryOp):
            return self.rank(e.operand, env)
        if isinstance(e, N.BinOp):
            a, b = self.rank(e.left, env), self.rank(e.right, env)
            if e.op == "@":
                return _matmul_rank(a, b)
            return _Rank(max(a.least, b.least), a.exact and b.exact)
        if isinstance(e, N.Call) and e.func in OPS and not e.sub:
            return self.op_rank(e, env)
        return _UNKNOWN_RANK

    def local_rank(self, d, env: Env) -> _Rank:
        if id(d) not in self.ranks:
            self.ranks[id(d)] = (d, self.definition_rank(d, env))
        return self.ranks[id(d)][1]

    def definition_rank(self, d, env: Env) -> _Rank:
        if isinstance(d, _Carried):
            return self.local_rank(self.carried(d), env)
        if isinstance(d, _Def):
            return self.rank(d.value, d.env)
        if isinstance(d, _Part):
            source = _call_operand(d.value, "input")
            return _UNKNOWN_RANK if source is None else self.rank(source, d.env)
        if isinstance(d, _Branched):
            ranks = [self.local_rank(side, env) for side in d.sides]
            exact = all(r.exact for r in ranks) and len({r.least for r in ranks}) == 1
            return _Rank(min(r.least for r in ranks), exact)
        return _UNKNOWN_RANK

    def op_rank(self, call: N.Call, env: Env) -> _Rank:
        op = OPS[call.func]
        args = call_args(op, call)
        x = args.get("input")
        if op.shape in ("elementwise", "softmax"):
            ranks = [self.rank(args[p.name], env) for p in op.params if p.tensor and p.name in args]
            if not ranks:
                return _UNKNOWN_RANK
            return _Rank(max(r.least for r in ranks), all(r.exact for r in ranks))
        if op.shape == "matmul":
            return _matmul_rank(self.rank(args["input"], env), self.rank(args["other"], env))
        if x is None:
            return _UNKNOWN_RANK
        if op.shape == "transpose":
            rank, dims = self.rank(x, env), [_int(args["dim0"]), _int(args["dim1"])]
            needed = max((d + 1 if d >= 0 else -d) for d in dims if d is not None) if None not in dims else 0
            return _Rank(max(rank.least, needed), rank.exact)
        if call.func == "unsqueeze":
            rank = self.rank(x, env)
            return _Rank(rank.least + 1, rank.exact)
        if call.func == "squeeze":
            rank, d = self.rank(x, env), _int(args.get("dim"))
            if d is not None and rank.least > (d if d >= 0 else -d - 1) and self.is_one(x, d, env):
                return _Rank(rank.least - 1, rank.exact)  # the dim is dropped: its size is 1
            return _Rank(max(rank.least - 1, 0), False)
        sizes = args.get("shape", args.get("size"))
        if isinstance(sizes, N.ListExpr) and not any(isinstance(i, N.Spread) for i in sizes.items):
            return _Rank(len(sizes.items), True)
        tensors = args.get("tensors")
        if op.shape == "concat" and isinstance(tensors, N.ListExpr) and tensors.items:
            rank = self.rank(tensors.items[0], env)
            return _Rank(rank.least + 1, rank.exact) if call.func == "stack" else rank
        shape = self.engine_shape(call, env)  # an op without a rule here: the shape engine's
        if shape is None or opaque(shape):
            return _UNKNOWN_RANK
        return _Rank(len(shape) - (GROUP in shape), GROUP not in shape)


_KNOWN = ".ndim"  # the env's key for what the conditions say of an input's rank: `x.ndim` (no local's name)
_FLIPPED = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_NEGATED = {"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}


def _rank_comparison(e: N.Expr) -> tuple[N.Name, str, int] | None:
    """`x.ndim op n` (or `n op x.ndim`) as (x, op, n), the rank on the left; None for any other test."""
    if not isinstance(e, N.Compare) or len(e.ops) != 1 or e.ops[0] not in _FLIPPED:
        return None
    (left, right), op = e.operands, e.ops[0]
    if isinstance(right, N.Rank):
        left, right, op = right, left, _FLIPPED[op]
    n = _int(right)
    return None if not isinstance(left, N.Rank) or n is None else (left.value, op, n)


def _learned(cond: N.Expr, holds: bool, env: Env) -> None:
    """What `cond` being `holds` says of the inputs' ranks (its `and`ed tests, or `or`ed ones not holding),
    added to `env`."""
    if isinstance(cond, N.Not):
        _learned(cond.operand, not holds, env)
    elif isinstance(cond, N.BoolOp) and (cond.op == "and") == holds:
        _learned(cond.left, holds, env)
        _learned(cond.right, holds, env)
    elif (test := _rank_comparison(cond)) is not None and test[0].ref in LEAVES:
        leaf, op, n = test
        known = env.get(leaf.id + _KNOWN)
        env[leaf.id + _KNOWN] = (known if isinstance(known, _Known) else _Known()).given(
            op if holds else _NEGATED[op], n
        )


def _declared_ranks(layer: N.Layer) -> dict[str, _Rank]:
    """The rank each input and member's declared shape proves (`[..., d]`: at least 1)."""
    assert layer.forward is not None
    shapes = {i.name: i.shape for i in layer.forward.inputs if not i.parts and not i.alternatives}
    shapes |= {t.name: t.shape for t in layer.tensors}
    out: dict[str, _Rank] = {}
    for name, shape in shapes.items():
        if shape is None or shape.spread is not None:
            continue
        spread = sum(isinstance(d, N.EllipsisItem) for d in shape.dims)
        out[name] = _Rank(len(shape.dims) - spread, not spread)
    return out


@dataclass(frozen=True)
class _Leaves:
    """Each input's and member's shape as the shape engine reads its declaration (`[..., d]` as `("...",
    "d")`; an input of alternatives or of tuples has none), and for each dim they declare, the first leaf
    size declared with it (`size_at(x, -1)` for `d`)."""

    shapes: dict[str, Shape]
    sizes: dict[str, N.Expr]


def _leaves(layer: N.Layer) -> _Leaves:
    assert layer.forward is not None
    declared = [(i.name, i.shape, N.Ref.INPUT) for i in layer.forward.inputs if not i.parts and not i.alternatives]
    declared += [(t.name, t.shape, t.kind) for t in layer.tensors]
    shapes: dict[str, Shape] = {}
    sizes: dict[str, N.Expr] = {}
    for name, shape_decl, ref in declared:
        shape = shapes[name] = declared_shape(shape_decl, name)
        if opaque(shape):
            continue
        group = shape.index(GROUP) if GROUP in shape else None
        for j, d in enumerate(shape):
            if d != GROUP and as_int(text_poly(d)) is None:
                sizes.setdefault(
                    d, _size_at(B.name(name, ref=ref), j if group is None or j < group else j - len(shape))
                )
    return _Leaves(shapes, sizes)


def _written(dim: str, leaves: _Leaves) -> N.Expr | None:
    """A dim of the engine's answer as sizes of the leaves: a number, `size_at(x, k)` of a leaf declared
    with that dim at k, or a sum of products of those with numbers; None where a factor is no leaf's dim."""
    if dim in leaves.sizes:
        return clone(leaves.sizes[dim])
    terms: list[N.Expr] = []
    for monomial, coefficient in text_poly(dim):
        factors: list[N.Expr] = [B.num(coefficient)] if coefficient != 1 or not monomial else []
        for factor, power in monomial:
            if factor not in leaves.sizes:
                return None
            factors += [clone(leaves.sizes[factor]) for _ in range(power)]
        terms.append(_joined("*", factors))
    return _joined("+", terms) if terms else B.num(0)


def _matmul_rank(a: _Rank, b: _Rank) -> _Rank:
    if b.exact and b.least == 1:
        return _Rank(max(a.least - 1, 0), a.exact)
    if a.exact and a.least == 1:
        return _Rank(max(b.least - 1, 0), b.exact)
    if b.exact and b.least == 2 and a.least >= 2:
        return a
    return _Rank(max(a.least, b.least), a.exact and b.exact)


def _same_dim(k: int, j: int, rank: _Rank) -> bool | None:
    """Whether dims k and j (negative: from the end) are the same dim of a tensor of `rank`; None when
    only its run-time rank could tell."""
    if (k >= 0) == (j >= 0):
        return k == j
    if rank.exact and rank.least > 0:
        return k % rank.least == j % rank.least
    first, last = (k, j) if k >= 0 else (j, k)
    return False if first - last < rank.least else None  # equal only at rank first - last


def _union(alternatives: list[list[N.Expr] | None]) -> list[N.Expr] | None:
    if any(a is None for a in alternatives):
        return None
    out: dict[str, N.Expr] = {}
    for sizes in alternatives:
        for s in sizes or []:
            out.setdefault(B.key(s), s)
    return list(out.values())


def _indexed_dim(items: list[N.SubscriptItem], k: int) -> int | None:
    """The dim of `x` that dim k of `x[items]` is (`x[0]` at 0 is x at 1, `x[:, 0]` at 0 is x at 0), where
    the items place it: ints drop a dim, `:` keeps one, `...` keeps what it covers (dims after it counted
    from the end); None where a dim `none` adds, a sliced or tensor-indexed dim, or a dim past a `...`."""
    if k < 0:
        if not any(isinstance(i, N.EllipsisItem) for i in items):
            return None  # the dims after the items: where they start depends on the rank
        after = items[[isinstance(i, N.EllipsisItem) for i in items].index(True) + 1 :]
        j = _indexed_dim(after[::-1], -k - 1)
        return None if j is None else -j - 1
    j = 0
    for item in items:
        if isinstance(item, N.EllipsisItem):
            return None
        if isinstance(item, N.Slice):
            if item.lower is not None or item.upper is not None or item.step is not None:
                if k == 0:
                    return None
            elif k == 0:
                return j
            k, j = k - 1, j + 1
        elif isinstance(item, N.NoneLit):
            if k == 0:
                return None
            k -= 1
        elif item.kind == N.Kind.INT:
            j += 1
        else:
            return None  # a tensor index (or bool mask): its dims are the index's
    return j + k


def _size_at(leaf: N.Name, k: int) -> N.Call:
    call = N.Call(leaf.span, "size_at", leaf.span, [clone(leaf), B.num(k)], [])
    call.kind = N.Kind.INT
    return call


def _is_leaf_size(e: N.Node) -> bool:
    return (
        isinstance(e, N.Call)
        and e.func == "size_at"
        and len(e.args) == 2
        and isinstance(e.args[0], N.Name)
        and e.args[0].ref in LEAVES
    )


def _joined(op: str, operands: list[N.Expr]) -> N.Expr:
    out = operands[0]
    for e in operands[1:]:
        out = N.BinOp(out.span, op, out, e)
        out.kind = N.Kind.INT
    return out


def _plus(a: N.Expr, b: N.Expr) -> N.Expr:
    e = N.BinOp(a.span, "+", a, b)
    e.kind = N.Kind.INT
    return e


def _with(e: N.BinOp, left: N.Expr, right: N.Expr) -> N.BinOp:
    out = map_children(e, lambda c: c)
    out.left, out.right = left, right
    return out


def _int(e: N.Expr | None) -> int | None:
    if e is None:
        return None
    try:
        v = evaluate(e, {})
    except (NotConstant, ArithmeticError, TypeError):
        return None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _int_arg(call: N.Call, name: str, default: int) -> int | None:
    args = call_args(OPS[call.func], call)
    return _int(args[name]) if name in args else default


def _call_operand(call: N.Call, name: str) -> N.Expr | None:
    return call_args(OPS[call.func], call).get(name)
