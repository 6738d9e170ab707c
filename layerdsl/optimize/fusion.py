"""Fewer passes over full-size tensors: folded intermediates, reduced gradients kept small, plain sums,
factors out of linear kernels, `addcmul` for `p + q * r`, and a forward's mean of squares as a norm.

At large shapes a backward is bound by memory traffic, so its time follows the number of passes over
full-size tensors and the number of fresh buffers. These rewrites keep every value and cut the passes.
"""

from __future__ import annotations

from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import NOWHERE
from layerdsl.ir.visit import clone, map_children, walk
from layerdsl.language.ops import OPS, shape_args
from layerdsl.optimize.operations import COMPLEX, dtype_sources, is_product
from layerdsl.optimize.scales import LINEAR
from layerdsl.optimize.statements import Facts, Shapes, Stmt, reads, rewritten_children, touches, use_counts

# ------------------------------------------------------------------ folding


def fold(stmts: list[Stmt], facts: Facts) -> list[Stmt]:
    """A recomputed intermediate that only one statement reads is computed inside that statement."""
    uses = use_counts(stmts)
    for s in stmts:
        for n in _shape_reads(s.expr):
            uses[n] = 2  # a value needed only for its shape stays a name
    pending: dict[str, N.Expr] = {}
    out = []
    for s in stmts:
        if touches(s.expr, pending):  # else substituting would only copy it
            s.expr = substitute(s.expr, pending)
        if s.recompute and uses.get(s.target) == 1 and s.target in facts.foldable:
            pending[s.target] = s.expr
            continue
        out.append(s)
    return out


def _shape_reads(e) -> list[str]:
    return [a.id for n in walk(e) if isinstance(n, N.Call) for i in shape_args(n) if isinstance(a := n.args[i], N.Name)]


def substitute(e: N.Expr, pending: dict[str, N.Expr]) -> N.Expr:
    """`e` with each name in `pending` replaced by its expression (each used once, so popped)."""
    if isinstance(e, N.Name) and e.id in pending:
        return pending.pop(e.id)
    return map_children(e, lambda c: substitute(c, pending))


def aliases_dropped(stmts: list[Stmt], facts: Facts) -> list[Stmt]:
    """`t = u` (what remains of `t = c * u` once its readers apply `c`) dropped, its readers reading `u`."""
    targets = [s.target for s in stmts]
    rename: dict[str, N.Expr] = {}
    out = []
    for s in stmts:
        if touches(s.expr, rename):  # else renaming would only copy it
            s.expr = _renamed(s.expr, rename)
        if s.otherwise is not None and touches(s.otherwise, rename):
            s.otherwise = _renamed(s.otherwise, rename)
        e = s.expr
        if isinstance(e, N.Name) and not s.guard and s.target not in facts.kept and targets.count(s.target) == 1:
            if e.id not in facts.exact and targets.count(e.id) <= 1 and s.target not in _shape_names(stmts):
                rename[s.target] = e
                continue
        out.append(s)
    return out


def _renamed(e: N.Expr, rename: dict[str, N.Expr]) -> N.Expr:
    if isinstance(e, N.Name) and e.id in rename:
        return clone(rename[e.id])
    return map_children(e, lambda c: _renamed(c, rename))


def _shape_names(stmts: list[Stmt]) -> set[str]:
    return {n for s in stmts for n in _shape_reads(s.expr)}


# ------------------------------------------------------------------ reduced gradients stay small


def narrow_expansions(stmts: list[Stmt], facts: Facts) -> list[Stmt]:
    """A reduction's gradient stays at its reduced shape (`[..., 1]`) where an elementwise operation would
    broadcast it anyway, so scaling it costs nothing and only the final product is full-size."""
    shapes = Shapes(facts)
    narrow: dict[str, N.Expr] = {}  # a statement binding an expanded gradient -> its reduced view
    for s in stmts:
        if touches(s.expr, narrow, ("expand_reduced",)):  # else narrowing would only copy it
            s.expr = _narrow(s.expr, narrow, shapes)
        if isinstance(s.expr, N.Call) and s.expr.func == "expand_reduced" and not s.guard:
            narrow[s.target] = _reduced_view(s.expr, shapes)
        shapes.learn(s)
    read = {n for s in stmts for n in reads(s)}
    return [s for s in stmts if not (s.target in narrow and s.target not in read and s.target not in facts.kept)]


def _narrow(e: N.Expr, narrow: dict[str, N.Expr], shapes: Shapes) -> N.Expr:
    """Use reduced views for the expanded gradients in the largest elementwise region whose result keeps
    its shape: elementwise operations commute with broadcasting, so the values are the same."""
    if _elementwise(e):
        full = shapes.of(e)
        small = _all_reduced(e, narrow, shapes)
        if full is not None and shapes.of(small) == full:
            return small
    return map_children(e, lambda c: _narrow(c, narrow, shapes))


def _all_reduced(e: N.Expr, narrow: dict[str, N.Expr], shapes: Shapes) -> N.Expr:
    if isinstance(e, N.Name) and e.id in narrow:
        return clone(narrow[e.id])
    if isinstance(e, N.Call) and e.func == "expand_reduced":
        return _reduced_view(e, shapes)
    if _elementwise(e):
        return map_children(e, lambda c: _all_reduced(c, narrow, shapes))
    return _narrow(e, narrow, shapes)


def _reduced_view(expand: N.Call, shapes: Shapes) -> N.Expr:
    """`expand_reduced(g, input, dim, keepdim)` without the expansion: `g` itself when it kept its dims."""
    g, _, dim, keepdim = expand.args
    if (isinstance(keepdim, N.Bool) and keepdim.value or isinstance(dim, N.NoneLit)) and shapes.of(g) is not None:
        return g
    return B.call("reduced_view", *expand.args, span=expand.args[0].span)


def _elementwise(e) -> bool:
    if isinstance(e, (N.BinOp, N.UnaryOp)):
        return e.op in ("+", "-", "*", "/", "**")
    return isinstance(e, N.Call) and e.func in OPS and OPS[e.func].shape == "elementwise" and bool(OPS[e.func].torch)


# ------------------------------------------------------------------ sums with known dims


def explicit_sums(stmts: list[Stmt], facts: Facts) -> None:
    """`sum_to(g, t)` as the plain reduction it is where both shapes are known: `g.sum()` for a 0-dim
    `t`, a sum over the dims where `t` has size 1 (keeping them) for a same-rank `t`. `sum_to_size` must
    work out the dims at run time, which costs about 1 µs a call at small shapes."""
    shapes = Shapes(facts)
    for s in stmts:
        if touches(s.expr, funcs=("sum_to",)):  # else it would only be copied
            s.expr = _explicit_sum(s.expr, shapes)
        shapes.learn(s)


def _explicit_sum(e: N.Expr, shapes: Shapes) -> N.Expr:
    e = map_children(e, lambda c: _explicit_sum(c, shapes))
    if not (isinstance(e, N.Call) and e.func == "sum_to"):
        return e
    g, target = e.args
    have, want = shapes.of(g), shapes.of(target)
    if want == ():
        return B.call("sum", g, span=g.span)
    if have is None or want is None or len(have) != len(want) or any(a != b and b != "1" for a, b in zip(have, want)):
        return e
    dims = [k - len(have) for k, (a, b) in enumerate(zip(have, want)) if a != b]
    if not dims:
        return g
    dim: N.Expr
    if len(dims) == 1:
        dim = B.num(dims[0])
    else:
        dim = N.ListExpr(NOWHERE, [B.num(d) for d in dims])
        dim.kind = N.Kind.LIST
    keep = N.Bool(NOWHERE, True)
    keep.kind = N.Kind.BOOL
    out = B.call("sum", g, span=g.span)
    out.kwargs = [N.Keyword("dim", dim, NOWHERE), N.Keyword("keepdim", keep, NOWHERE)]
    return out


# ------------------------------------------------------------------ tensor factors out of linear kernels


def factors_out(stmts: list[Stmt], facts: Facts) -> list[Stmt]:
    """`sigmoid_backward(g * x, s)` as `sigmoid_backward(g, s) * x` when `x` has the result's shape: the
    same passes, but the product may then update the kernel's fresh result instead of taking a buffer of
    its own (the kernel is linear in its first operand). A product bound to a name read only there
    moves in too."""
    shapes = Shapes(facts)
    roots = dict(facts.roots)
    uses = use_counts(stmts)
    bound: dict[str, Stmt] = {}
    moved: set[int] = set()
    for s in stmts:
        e = s.expr
        if isinstance(e, N.Call) and e.func in _LINEAR_KERNELS and not e.kwargs and not s.guard:
            arg, src = e.args[0], None
            if isinstance(arg, N.Name) and uses.get(arg.id) == 1 and arg.id in bound and arg.id not in facts.kept:
                src = bound[arg.id]
                arg = src.expr
            for a, b in ((arg.left, arg.right), (arg.right, arg.left)) if is_product(arg) else ():
                inner = B.call(e.func, a, *e.args[1:], span=a.span)
                full = shapes.of(e)
                if (
                    full is not None
                    and shapes.of(b) == full == shapes.of(inner)
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


# ------------------------------------------------------------------ addcmul


def addcmul_form(e: N.Expr) -> N.Expr:
    """`p + q * r` as `addcmul(p, q, r)`: one pass instead of two."""
    if isinstance(e, N.Call) and e.func == "extremum_mask":
        return e  # its input must round as the forward did: it is compared with the saved extremum
    e = rewritten_children(e, addcmul_form)
    if isinstance(e, N.BinOp) and e.op == "+" and e.kind == "tensor":
        for p, prod in ((e.left, e.right), (e.right, e.left)):
            if is_product(prod) and p.kind == "tensor":
                return B.call("addcmul", p, prod.left, prod.right, span=p.span)
    return e


def guarded_products(stmts: list[Stmt], exact: set[str] | frozenset[str]) -> list[Stmt]:
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
    if not (is_product(value) and isinstance(update, N.BinOp) and update.op == "+"):
        return None
    sides = [n for n in (update.left, update.right) if isinstance(n, N.Name)]
    if len(sides) != 2 or sorted(n.id for n in sides) != sorted([name, member]):
        return None
    m = next(n for n in sides if n.id == member)
    return B.call("addcmul", clone(m), value.left, value.right, span=m.span)


# ------------------------------------------------------------------ a mean of squares without the squares


def mean_of_squares_as_norm(e: N.Expr, known: dict[str, frozenset[str]], graph: bool = False) -> N.Expr:
    """For a forward (no graph): `mean(x * x, dim, keepdim)` as `norm(x, dim, keepdim).pow_(2).div_(n)`,
    `n` the number of elements reduced. ATen's norm kernel squares as it sums, where `x * x` writes a full-size
    temporary that the mean then reads again (RMSNorm's forward at 4096x1024 spends most of its reduction there);
    it costs one call more, about 1 µs at small shapes. Not for a complex `x` (`x * x` is not `|x|^2` there);
    `known`: the dtype sources of the names bound so far (`dtype_sources`). `graph`: autograd records it
    (a backward's recomputation for double backward), so the norm it keeps is not updated: `norm(x) ** 2 / n`."""
    e = map_children(e, lambda c: mean_of_squares_as_norm(c, known, graph))
    if not (isinstance(e, N.Call) and e.func == "mean" and len(e.args) == 1):
        return e
    square = e.args[0]
    if not (isinstance(square, N.BinOp) and square.op == "*" and isinstance(square.left, N.Name)):
        return e
    x = square.left
    if not isinstance(square.right, N.Name) or square.right.id != x.id or x.kind != "tensor":
        return e
    if COMPLEX in dtype_sources(x, known) or not {k.name for k in e.kwargs} <= {"dim", "keepdim"}:
        return e
    dim = next((k.value for k in e.kwargs if k.name == "dim"), None)
    norm = N.Call(e.span, "norm", e.func_span, [x], [clone(k) for k in e.kwargs])
    norm.kind = e.kind
    dims = dim.items if isinstance(dim, N.ListExpr) and dim.items else [dim if dim is not None else N.NoneLit(e.span)]
    counts = [_reduced_numel(x, d) for d in dims]  # `x.shape[2] * x.shape[3]`, one size at a time
    count: N.Expr = counts[0]
    for c in counts[1:]:
        count = N.BinOp(e.span, "*", count, c)
        count.kind = N.Kind.INT
    if graph:
        return B.binop("/", B.binop("**", norm, _two(e)), count)
    return _in_place("div_", _in_place("pow_", norm, [_two(e)]), [count])


def _reduced_numel(x: N.Name, dim: N.Expr) -> N.Call:
    count = N.Call(x.span, "reduced_numel", x.span, [clone(x), clone(dim)], [])
    count.kind = N.Kind.INT
    return count


def _in_place(method: str, target: N.Expr, args: list[N.Expr]) -> N.InPlace:
    node = N.InPlace(target.span, method, target, args)
    node.kind = N.Kind.TENSOR
    return node


def _two(e: N.Expr) -> N.Num:  # `pow_(2)`, not `square_()`: vmap has a batching rule for pow_ only
    two = N.Num(e.span, 2, "2")
    two.kind = N.Kind.INT
    return two
