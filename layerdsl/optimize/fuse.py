"""Fewer full-size passes in a generated backward: fused kernels and in-place updates.

Runs on a backward's statements (IR) after derivation, before rendering. At large shapes a backward is
bound by memory traffic, so its time follows the number of passes over full-size tensors and the number
of fresh buffers. This pass:

1. folds a recomputed intermediate that only one statement reads into that statement;
2. keeps a reduction's gradient at its reduced shape (`[..., 1]`) where an elementwise operation would
   broadcast it anyway, so scaling it costs nothing and only the final product is full-size;
3. writes `p + q * r` as `torch.addcmul(p, q, r)` (one pass instead of two);
4. lets an operation update its first operand in place (`(beta * x).sigmoid_()`, `t.mul_(x)`) when that
   operand is a temporary the backward owns and nothing reads afterwards. It must stay right when the
   backward itself is differentiated (`create_graph=True`), so the operand must not be a view or alias,
   no operation recorded before may need its old value (the op table's formulas say which operands and
   results an operation's own derivative reads), the result must have its shape, and the other operands
   may not promote its dtype (they read only tensors it was computed from);
5. deletes full-size temporaries after their last use, so their memory is reused.

`Facts.graph` says whether autograd may record the backward; without a graph (grad mode off) nothing
keeps a value for later, so rule 4 only asks that the temporary be dead and not aliased. The emitter
runs both and branches on grad mode where they differ. Each run picks the statement order that makes
the fewest fresh full-size buffers.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field

from layerdsl.autodiff.shapes import broadcast, matmul_shape
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import NOWHERE
from layerdsl.language.ops import OPERATORS, OPS, Op, shape_args
from layerdsl.optimize.scales import LINEAR, hoist_scales

ALIASING = ("sum_to", "expand_reduced", "unbind", "split_like")  # results that may share the operand's storage


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


@dataclass
class Facts:
    shapes: dict[str, tuple | None]  # what the backward starts with: leaves, saved values, incoming gradients
    kept: set[str]  # names never updated or deleted: inputs, saved tensors, incoming gradients, results
    foldable: set[str]  # recomputed intermediates without a spec name (spec locals stay named)
    full: list[tuple]  # shapes worth freeing early (inputs' and outputs')
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


def optimize(stmts: list[Stmt], facts: Facts, prefer: int = 0) -> tuple[list[Stmt], int]:
    """The statements rewritten, and which schedule they follow (`prefer` breaks ties, so that the backward
    with a graph and the one without share as many statements as they can)."""
    stmts = _fold(stmts, facts)
    stmts = _narrow_expansions(stmts, facts)
    hoist_scales(stmts, facts.kept, facts.incoming)
    _explicit_sums(stmts, facts)
    stmts = _factors_out(stmts, facts)
    # Sums first lets a temporary's last full-size reader update it; keeping the derivation's order can
    # instead let a reader that autograd does not record update it (without a graph).
    schedules = [_in_place(s, facts) for s in (_reductions_early(stmts), copy.deepcopy(stmts))]
    cost = [_fresh_buffers(s, facts) for s in schedules]
    best = min(range(len(schedules)), key=lambda k: (cost[k], k != prefer, k))
    return schedules[best], best


def _in_place(stmts: list[Stmt], facts: Facts) -> list[Stmt]:
    stmts = _guarded_products(stmts, facts.exact)
    for s in stmts:
        if s.target not in facts.exact:
            s.expr = addcmul_form(s.expr)
    inplace = _Inplace(stmts, facts)
    inplace.run()
    _deletions(stmts, facts, inplace.shapes.shapes, inplace.updated)
    return stmts


def _fresh_buffers(stmts: list[Stmt], facts: Facts) -> int:
    """How many buffers of unknown or full size the statements allocate."""
    shapes = _Shapes(facts)
    count = 0
    for s in stmts:
        for node in [*N.walk(s.expr), *(N.walk(s.otherwise) if s.otherwise else [])]:
            if fresh_node(node) and not isinstance(node, N.InPlace):
                shape = shapes.shape(node)
                count += shape is None or shape in facts.full
        shapes.learn(s)
    return count


# ------------------------------------------------------------------ folding


def _names(e) -> list[str]:
    return [n.id for n in N.walk(e) if isinstance(n, N.Name)]


def _reads(s: Stmt) -> list[str]:
    return _names(s.expr) + ([s.guard] if s.guard else []) + (_names(s.otherwise) if s.otherwise else [])


def _fold(stmts: list[Stmt], facts: Facts) -> list[Stmt]:
    uses: dict[str, int] = {}
    for s in stmts:
        for n in _reads(s):
            uses[n] = uses.get(n, 0) + 1
        for n in _shape_reads(s.expr):
            uses[n] = 2  # a value needed only for its shape stays a name
    pending: dict[str, N.Expr] = {}
    out = []
    for s in stmts:
        s.expr = substitute(s.expr, pending)
        if s.recompute and uses.get(s.target) == 1 and s.target in facts.foldable:
            pending[s.target] = s.expr
            continue
        out.append(s)
    return out


def _shape_reads(e) -> list[str]:
    return [
        a.id for n in N.walk(e) if isinstance(n, N.Call) for i in shape_args(n) if isinstance(a := n.args[i], N.Name)
    ]


def substitute(e: N.Expr, pending: dict[str, N.Expr]) -> N.Expr:
    """`e` with each name in `pending` replaced by its expression (each used once, so popped)."""
    if isinstance(e, N.Name) and e.id in pending:
        return pending.pop(e.id)
    return N.map_children(e, lambda c: substitute(c, pending))


# ------------------------------------------------------------------ reduced gradients stay small


def _narrow_expansions(stmts: list[Stmt], facts: Facts) -> list[Stmt]:
    shapes = _Shapes(facts)
    narrow: dict[str, N.Expr] = {}  # a statement binding an expanded gradient -> its reduced view
    for s in stmts:
        s.expr = _narrow(s.expr, narrow, shapes)
        if isinstance(s.expr, N.Call) and s.expr.func == "expand_reduced" and not s.guard:
            narrow[s.target] = _reduced_view(s.expr, shapes)
        shapes.learn(s)
    read = {n for s in stmts for n in _reads(s)}
    return [s for s in stmts if not (s.target in narrow and s.target not in read and s.target not in facts.kept)]


def _narrow(e: N.Expr, narrow: dict[str, N.Expr], shapes: _Shapes) -> N.Expr:
    """Use reduced views for the expanded gradients in the largest elementwise region whose result keeps
    its shape: elementwise operations commute with broadcasting, so the values are the same."""
    if _elementwise(e):
        full = shapes.shape(e)
        small = _all_reduced(e, narrow, shapes)
        if full is not None and shapes.shape(small) == full:
            return small
    return N.map_children(e, lambda c: _narrow(c, narrow, shapes))


def _all_reduced(e: N.Expr, narrow: dict[str, N.Expr], shapes: _Shapes) -> N.Expr:
    if isinstance(e, N.Name) and e.id in narrow:
        return copy.deepcopy(narrow[e.id])
    if isinstance(e, N.Call) and e.func == "expand_reduced":
        return _reduced_view(e, shapes)
    if _elementwise(e):
        return N.map_children(e, lambda c: _all_reduced(c, narrow, shapes))
    return _narrow(e, narrow, shapes)


def _reduced_view(expand: N.Call, shapes: _Shapes) -> N.Expr:
    """`expand_reduced(g, input, dim, keepdim)` without the expansion: `g` itself when it kept its dims."""
    g, _, dim, keepdim = expand.args
    if (isinstance(keepdim, N.Bool) and keepdim.value or isinstance(dim, N.NoneLit)) and shapes.shape(g) is not None:
        return g
    return B.call("reduced_view", *expand.args, span=expand.args[0].span)


def _elementwise(e) -> bool:
    if isinstance(e, (N.BinOp, N.UnaryOp)):
        return e.op in ("+", "-", "*", "/", "**")
    return isinstance(e, N.Call) and e.func in OPS and OPS[e.func].shape == "elementwise" and bool(OPS[e.func].torch)


# ------------------------------------------------------------------ sums with known dims


def _explicit_sums(stmts: list[Stmt], facts: Facts) -> None:
    """`sum_to(g, t)` as the plain reduction it is where both shapes are known: `g.sum()` for a 0-dim
    `t`, a sum over the dims where `t` has size 1 (keeping them) for a same-rank `t`. `sum_to_size` must
    work out the dims at run time, which costs about 1 µs a call at small shapes."""
    shapes = _Shapes(facts)
    for s in stmts:
        s.expr = _explicit_sum(s.expr, shapes)
        shapes.learn(s)


def _explicit_sum(e: N.Expr, shapes: _Shapes) -> N.Expr:
    e = N.map_children(e, lambda c: _explicit_sum(c, shapes))
    if not (isinstance(e, N.Call) and e.func == "sum_to"):
        return e
    g, target = e.args
    have, want = shapes.shape(g), shapes.shape(target)
    if want == ():
        return B.call("sum", g, span=g.span)
    if have is None or want is None or len(have) != len(want) or any(a != b and b != "1" for a, b in zip(have, want)):
        return e
    dims = [k - len(have) for k, (a, b) in enumerate(zip(have, want)) if a != b]
    if not dims:
        return g
    dim = B.num(dims[0]) if len(dims) == 1 else N.ListExpr(NOWHERE, [B.num(d) for d in dims])
    dim.kind = dim.kind if len(dims) == 1 else "list"
    keep = N.Bool(NOWHERE, True)
    keep.kind = "bool"
    out = B.call("sum", g, span=g.span)
    out.kwargs = [N.Keyword("dim", dim, NOWHERE), N.Keyword("keepdim", keep, NOWHERE)]
    return out


# ------------------------------------------------------------------ tensor factors out of linear kernels


def _factors_out(stmts: list[Stmt], facts: Facts) -> list[Stmt]:
    """`sigmoid_backward(g * x, s)` as `sigmoid_backward(g, s) * x` when `x` has the result's shape: the
    same passes, but the product may then update the kernel's fresh result instead of taking a buffer of
    its own (the kernel is linear in its first operand). A product bound to a name read only there
    moves in too."""
    shapes = _Shapes(facts)
    roots = dict(facts.roots)
    uses: dict[str, int] = {}
    for s in stmts:
        for n in _reads(s):
            uses[n] = uses.get(n, 0) + 1
    bound: dict[str, Stmt] = {}
    moved: set[int] = set()
    for s in stmts:
        e = s.expr
        if isinstance(e, N.Call) and e.func in _LINEAR_KERNELS and not e.kwargs and not s.guard:
            arg, src = e.args[0], None
            if isinstance(arg, N.Name) and uses.get(arg.id) == 1 and arg.id in bound and arg.id not in facts.kept:
                src = bound[arg.id]
                arg = src.expr
            for a, b in ((arg.left, arg.right), (arg.right, arg.left)) if _is_product(arg) else ():
                inner = B.call(e.func, a, *e.args[1:], span=a.span)
                full = shapes.shape(e)
                if (
                    full is not None
                    and shapes.shape(b) == full == shapes.shape(inner)
                    and dtype_sources(b, roots) <= dtype_sources(inner, roots)
                ):
                    s.expr = B.binop("*", inner, b)
                    if src is not None:
                        moved.add(id(src))
                    break
        shapes.learn(s)
        roots[s.target] = dtype_sources(s.expr, roots)
        if not s.guard:
            bound[s.target] = s
    return [s for s in stmts if id(s) not in moved]


_LINEAR_KERNELS = tuple(
    f for f, at in LINEAR.items() if at == (0,) and OPS[f].shape == "elementwise" and OPS[f].internal
)


# ------------------------------------------------------------------ order


def _reductions_early(stmts: list[Stmt]) -> list[Stmt]:
    """Each statement that sums a gradient down (a small result) moves up to just after what it reads,
    so that a later full-size reader of the same temporary is its last one and may update it in place
    (MyLayer: `grad_bias = 0.5 * grad_add.sum(0)` before `grad_x = grad_add.mul_(x)`)."""
    out: list[Stmt] = []
    for s in stmts:
        at = len(out)
        if _is_reduction(s.expr) and not s.guard:
            reads = set(_reads(s)) | {s.target}
            while (
                at > 0
                and out[at - 1].target not in reads
                and not out[at - 1].guard
                and s.target not in _reads(out[at - 1])
            ):
                at -= 1
        out.insert(at, s)
    return out


def _is_reduction(e) -> bool:
    """A sum, perhaps scaled by a number (`0.5 * sum(...)`, `-sum(...)`, `sum(...) / n`)."""
    while isinstance(e, (N.BinOp, N.UnaryOp)):
        tensors = [c for c in N.children(e) if isinstance(c, N.Expr) and c.kind == "tensor"]
        if len(tensors) != 1 or isinstance(e, N.BinOp) and e.op not in ("*", "/"):
            return False
        e = tensors[0]
    return isinstance(e, N.Call) and e.func in ("sum", "sum_to")


# ------------------------------------------------------------------ addcmul


def addcmul_form(e: N.Expr) -> N.Expr:
    if isinstance(e, N.Call) and e.func == "extremum_mask":
        return e  # its input must round as the forward did: it is compared with the saved extremum
    e = N.map_children(e, addcmul_form)
    if isinstance(e, N.BinOp) and e.op == "+" and e.kind == "tensor":
        for p, prod in ((e.left, e.right), (e.right, e.left)):
            if _is_product(prod) and p.kind == "tensor":
                return B.call("addcmul", p, prod.left, prod.right, span=p.span)
    return e


def _guarded_products(stmts: list[Stmt], exact: set[str]) -> list[Stmt]:
    """`v = a * b` then `v = v + m` when the optional `m` is present: one statement, `addcmul` or `a * b`."""
    out: list[Stmt] = []
    for s in stmts:
        prev = out[-1] if out else None
        if s.guard and prev is not None and not prev.guard and prev.target == s.target and s.target not in exact:
            merged = guarded_addcmul(prev.expr, s.expr, s.target, s.guard)
            if merged is not None:
                s.expr, s.otherwise, s.recompute = merged, prev.expr, prev.recompute
                out[-1] = s
                continue
        out.append(s)
    return out


def guarded_addcmul(value: N.Expr, update: N.Expr, name: str, member: str) -> N.Expr | None:
    """`addcmul(member, a, b)` for `name = a * b` followed by `name = name + member` (None otherwise).
    The forward and the backward's recomputation both use it, so the two round alike."""
    if not (_is_product(value) and isinstance(update, N.BinOp) and update.op == "+"):
        return None
    sides = [update.left, update.right]
    if not all(isinstance(n, N.Name) for n in sides) or sorted(n.id for n in sides) != sorted([name, member]):
        return None
    m = next(n for n in sides if n.id == member)
    return B.call("addcmul", copy.deepcopy(m), value.left, value.right, span=m.span)


def _is_product(e) -> bool:
    return isinstance(e, N.BinOp) and e.op == "*" and e.left.kind == "tensor" and e.right.kind == "tensor"


# ------------------------------------------------------------------ what an operation's derivative reads


def _saved(node) -> frozenset[str]:
    """Operands (and "result") that autograd keeps when it records this operation: what the derivative
    formulas of its tensor operands read (a number operand gets no gradient, so its formula is not used)."""
    row = _row(node)
    if row is None:
        return frozenset({"result"} | {p for p, _ in _operands(node) if p})
    tensors = tuple(sorted(p for p, o in _operands(node) if p and o.kind == "tensor"))
    return _saved_by(row.name, tensors)


@functools.cache
def _saved_by(name: str, tensors: tuple[str, ...]) -> frozenset[str]:
    from layerdsl.autodiff.derive import formula

    op = OPS[name]
    if op.name == "einsum" or not op.grads:
        return frozenset(p.name for p in op.params) | {"result"}
    names = set()
    for param, text in op.grads.items():
        if text is not None and param in tensors:
            names |= set(_value_reads(formula(op.name, param)))
    return frozenset(names)


def _value_reads(e) -> list[str]:
    """Names a formula reads as values: `sum`'s derivative reads only its input's shape (autograd keeps
    the sizes, not the tensor)."""
    if isinstance(e, N.Name):
        return [e.id]
    skip = shape_args(e) if isinstance(e, N.Call) else ()
    children = (
        [c for i, c in enumerate(e.args) if i not in skip] + [k.value for k in e.kwargs]
        if isinstance(e, N.Call)
        else N.children(e)
    )
    return [n for c in children if isinstance(c, N.Expr) for n in _value_reads(c)]


_BY_METHOD = {op.inplace: op for op in OPS.values() if op.inplace}


def _row(e) -> Op | None:
    """The op table row of an operation node (None for anything else)."""
    match e:
        case N.BinOp(op=op):
            return OPERATORS.get(op)
        case N.UnaryOp(op="-"):
            return OPERATORS["neg"]
        case N.Call(func=f):
            return OPS.get(f)
        case N.InPlace(method=m):
            return _BY_METHOD.get(m)
    return None


def _operands(e) -> list[tuple[str | None, N.Expr]]:
    """(parameter name, operand) for each direct operand of an operation node."""
    row = _row(e)
    match e:
        case N.BinOp(left=l, right=r):
            return [("input", l), ("exponent" if e.op == "**" else "other", r)]
        case N.UnaryOp(operand=o):
            return [("input", o)]
        case N.Call(args=args, kwargs=kwargs):
            names = [p.name for p in row.params] if row else []
            out = [(names[i] if i < len(names) else None, a) for i, a in enumerate(args)]
            out += [(k.name, k.value) for k in kwargs]
            return [(p, item) for p, a in out for item in (a.items if isinstance(a, N.ListExpr) else [a])]
        case N.InPlace(target=t, args=args):
            names = [p.name for p in row.params] if row else []
            return [(names[i] if i < len(names) else None, a) for i, a in enumerate([t, *args])]
    return [(None, c) for c in N.children(e)]


def fresh_node(e) -> bool:
    """An operation whose result is a new tensor (not a view of an operand)."""
    if isinstance(e, N.InPlace):
        return fresh_node(e.target) or isinstance(e.target, N.Name)
    if isinstance(e, (N.BinOp, N.UnaryOp)):
        return e.kind == "tensor" and _row(e) is not None
    if isinstance(e, N.Call):
        row = OPS.get(e.func)
        return row is not None and bool(row.torch) and row.shape in ("elementwise", "matmul", "reduce", "softmax")
    return False


def _result_saved(e) -> bool:
    return "result" in _saved(e)


# ------------------------------------------------------------------ static shapes of backward expressions


class _Shapes:
    """Static shapes of backward expressions, learning each statement's as it goes."""

    def __init__(self, facts: Facts):
        self.facts = facts
        self.shapes = dict(facts.shapes)

    def learn(self, s: Stmt) -> None:
        self.shapes[s.target] = self.shape(s.expr) or self.facts.shapes.get(s.target)

    def shape(self, e) -> tuple | None:
        if getattr(e, "kind", None) in ("int", "float", "bool"):
            return ()  # a Python number
        match e:
            case N.Name(id=i) if e.kind == "tensor":
                return self.shapes.get(i)
            case N.Name() | N.Num() | N.Bool():
                return ()
            case N.BinOp(left=l, right=r):
                return broadcast([self.shape(l), self.shape(r)])
            case N.UnaryOp(operand=o):
                return self.shape(o)
            case N.InPlace(target=t):
                return self.shape(t)
            case N.Call(func="sum_to" | "expand_reduced", args=args):
                return self.shape(args[1])
            case N.Call(func="matmul", args=[a, b]):
                return matmul_shape(self.shape(a), self.shape(b))
            case N.Call(func="transpose", args=[a, N.Num(value=-1), N.Num(value=-2)]) | N.Call(
                func="transpose", args=[a, N.Num(value=-2), N.Num(value=-1)]
            ):
                shape = self.shape(a)
                return None if shape is None or len(shape) < 2 else shape[:-2] + (shape[-1], shape[-2])
            case N.Call(func=f, args=args, kwargs=[]) if f in OPS and OPS[f].shape == "elementwise" and OPS[f].torch:
                return broadcast([self.shape(a) for a in args])
            case N.Call(func="reduced_view", args=[g, inp, dim, keep]):
                return _reduced_shape(self.shape(inp), dim, keep)
            case N.Call(func="sum", args=[g], kwargs=[]):
                return ()
            case N.Call(
                func="sum",
                args=[g],
                kwargs=[N.Keyword(name="dim", value=dim), N.Keyword(name="keepdim", value=N.Bool(value=True))],
            ):
                return _reduced_shape(self.shape(g), dim, None)
        return None


def _reduced_shape(shape, dim, keepdim) -> tuple | None:
    """The shape of a reduction's gradient with its reduced dims restored as size 1."""
    if shape is None or isinstance(dim, N.NoneLit):
        return None if shape is None else ()
    dims = dim.items if isinstance(dim, N.ListExpr) else [dim]
    if not all(isinstance(d, N.Num) for d in dims) or "..." in shape and any(d.value >= 0 for d in dims):
        return None
    out = list(shape)
    for d in dims:
        out[d.value % len(shape)] = "1"
    return tuple(out)


# ------------------------------------------------------------------ in place


class _Inplace:
    def __init__(self, stmts: list[Stmt], facts: Facts):
        self.stmts = stmts
        self.facts = facts
        self.shapes = _Shapes(facts)
        self.shape = self.shapes.shape
        self.roots: dict[str, frozenset[str]] = dict(facts.roots)
        self.fresh: set[str] = set()
        self.updated: set[str] = set()
        self.last_use: dict[str, int] = {}
        for k, s in enumerate(stmts):
            for n in _reads(s):
                self.last_use[n] = k

    def run(self) -> None:
        for k, s in enumerate(self.stmts):
            self.k = k
            s.expr = self.rewrite(s.expr, s)
            self.shapes.learn(s)
            self.roots[s.target] = self.guaranteed_roots(s)
            if fresh_node(s.expr) and not self.result_kept(s.expr) and s.target not in self.facts.kept:
                self.fresh.add(s.target)

    def rewrite(self, e: N.Expr, stmt: Stmt) -> N.Expr:
        e = N.map_children(e, lambda c: self.rewrite(c, stmt))
        row = _row(e)
        if isinstance(e, N.InPlace) or row is None or row.inplace is None or isinstance(e, N.Call) and e.kwargs:
            return e
        operands = [o for _, o in _operands(e)]
        candidates = [0, 1] if row.commutes else [0]
        for i in candidates:
            target = operands[i]
            others = operands[:i] + operands[i + 1 :]
            if self.may_update(target, e, others, stmt):
                if isinstance(target, N.Name):
                    self.updated.add(target.id)  # its storage lives on under the new name
                return self.inplace(row.inplace, target, others, e)
        return e

    @staticmethod
    def inplace(method: str, target: N.Expr, others: list[N.Expr], e: N.Expr) -> N.InPlace:
        node = N.InPlace(e.span, method, target, others)
        node.kind = "tensor"
        return node

    def may_update(self, target: N.Expr, e: N.Expr, others: list[N.Expr], stmt: Stmt) -> bool:
        shape = self.shape(target)
        if shape is None or self.shape(e) != shape or target.kind != "tensor":
            return False
        if not self.roots_of(target) & self.facts.floating:
            return False  # an integer tensor: a floating result could not be written into it
        if not all(self.roots_of(o) <= self.roots_of(target) for o in others):
            return False  # another operand could have a wider dtype
        if isinstance(target, N.Name):
            return self.dead_after(target.id, stmt)
        return fresh_node(target) and not self.result_kept(target)

    def result_kept(self, e) -> bool:
        return self.facts.graph and _result_saved(e)

    def dead_after(self, name: str, stmt: Stmt) -> bool:
        """A fresh temporary read for the last time here, once, and never kept by an earlier operation."""
        rebound = stmt.target == name  # `t = t + b`: the old value dies here too
        if (
            name not in self.fresh
            or not (rebound or self.last_use.get(name) == self.k)
            or _names(stmt.expr).count(name) != 1
        ):
            return False
        return not any(self.keeps(s, name) for s in self.stmts[: self.k])

    def keeps(self, s: Stmt, name: str) -> bool:
        """Whether statement `s` left `name`'s current value where a later read (or autograd) needs it."""
        if isinstance(s.expr, N.Name):
            return s.expr.id == name  # an alias
        for node in N.walk(s.expr):
            if isinstance(node, (N.BinOp, N.UnaryOp, N.Call, N.InPlace)):
                if self.fresh_sum(node):
                    continue
                for param, operand in _operands(node):
                    if (
                        isinstance(operand, N.Name)
                        and operand.id == name
                        and _keeps_operand(node, param, operand, self.facts.graph)
                    ):
                        return True
        return False

    def fresh_sum(self, node) -> bool:
        """`sum_to_size` between shapes known to differ: a new tensor, not its operand (an alias only when
        the shapes are equal), and its derivative needs no values."""
        if not (isinstance(node, N.Call) and node.func == "sum_to"):
            return False
        have, want = self.shape(node.args[0]), self.shape(node.args[1])
        return have is not None and want is not None and have != want

    # -------------------------------------------------------------- dtype roots

    def roots_of(self, e) -> frozenset[str]:
        return dtype_sources(e, self.roots)

    def guaranteed_roots(self, s: Stmt) -> frozenset[str]:
        """The roots of `s.target` whether or not its optional member is present."""
        if not s.guard:
            return self.roots_of(s.expr)
        if s.otherwise is not None:
            return self.roots_of(s.expr) & self.roots_of(s.otherwise)
        return self.roots.get(s.target, frozenset())


def dtype_sources(e, known: dict[str, frozenset[str]]) -> frozenset[str]:
    """The tensors a backward starts from whose dtypes `e`'s dtype is promoted from (`known` expands names
    bound on the way). Comparisons, `where`'s condition and arguments read only for their shape add
    nothing; `extremum_mask` (a count ratio) has torch's default dtype, which nothing dominates."""
    out: set[str] = set()

    def go(n):
        if isinstance(n, N.Name) and n.kind == "tensor":
            out.update(known.get(n.id, {n.id}))
        elif isinstance(n, N.Compare):
            return
        elif isinstance(n, N.Call) and n.func == "extremum_mask":
            out.add("<default dtype>")
        elif isinstance(n, N.Call):
            skip = shape_args(n) or ((0,) if n.func == "where" else ())  # where's condition is a mask
            for i, a in enumerate(n.args):
                if i not in skip:
                    go(a)
            for k in n.kwargs:
                go(k.value)
        else:
            for c in N.children(n):
                go(c)

    go(e)
    return frozenset(out)


def _keeps_operand(node, param: str | None, operand: N.Name, graph: bool) -> bool:
    """Whether operation `node` keeps `operand`: the result may be a view of it, or autograd records
    the operation (`graph`) and saves it."""
    if isinstance(node, N.Call) and any(node.args[i] is operand for i in shape_args(node)):
        return False  # only its shape is read
    row = _row(node)
    if row is None or param is None or row.name in ALIASING or row.shape in ("view", "transpose"):
        return True
    return graph and param in _saved(node)


def unary_in_place(e: N.Expr, owned: set[str], floating) -> N.Expr:
    """For a forward: a one-operand operation on a temporary nothing else reads (a fresh result inline,
    or a name in `owned`) updates it in place, `torch.sqrt(add)` as `add.sqrt_()`. `floating(e)`: whether
    `e` is known to be floating-point (an integer buffer cannot take a floating result)."""
    e = N.map_children(e, lambda c: unary_in_place(c, owned, floating))
    row = _row(e)
    if isinstance(e, N.InPlace) or row is None or row.inplace is None or isinstance(e, N.Call) and e.kwargs:
        return e
    operands = _operands(e)
    if len(operands) != 1:
        return e
    target = operands[0][1]
    mine = target.id in owned if isinstance(target, N.Name) else fresh_node(target) and not _result_saved(target)
    return _Inplace.inplace(row.inplace, target, [], e) if mine and floating(target) else e


# ------------------------------------------------------------------ deletions


def _deletions(stmts: list[Stmt], facts: Facts, shapes: dict[str, tuple | None], updated: set[str]) -> None:
    """`del t` after the last read of a full-size temporary, when more statements follow.

    The statement that last reads a temporary serves a subset of the gradients its producer serves, so
    the `del` sits in a block that runs only where the name was bound."""
    bound = {s.target for s in stmts}
    last: dict[str, int] = {}
    for k, s in enumerate(stmts):
        for n in _reads(s):
            last[n] = k
    for name, k in sorted(last.items(), key=lambda kv: kv[1]):
        if name in bound and name not in facts.kept | updated and k < len(stmts) - 1 and shapes.get(name) in facts.full:
            stmts[k].dels.append(name)
