"""Index notation: `y[b, k] = sum[i](x[b, i] * w[i, k])`.

Checking: subscripts hold index variables local to the statement; every right-side index is bound by
the left side or by an enclosing reduction; every left-side index is used; tensors get one index per
axis. Lowering turns the statement into ordinary IR that the emitter and the derivation already know:
products under `sum` become one `einsum`, broadcasting becomes views (`x[:, None]`, `.permute`), other
reductions become `torch.sum/mean/amax/amin` over the reduced dims.
"""

from __future__ import annotations

from layerdsl.diagnostics import did_you_mean
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import Kind, Ref
from layerdsl.ir.visit import children, replace_children, walk
from layerdsl.language.ops import CALLABLE, REDUCTIONS
from layerdsl.semantics.scopes import Scope
from layerdsl.semantics.shapes import dim_text

NOWHERE = N.NOWHERE


# ------------------------------------------------------------------ checking


def check_index_assign(chk, stmt: N.IndexAssign, scope: Scope) -> None:
    """Checks an index statement (resolving its names in `scope`) and records the rank of its target."""
    seen = set()
    for i in stmt.indices:
        if i.id in seen:
            chk.r.error(i.span, f"index '{i.id}' appears twice on the left side")
        seen.add(i.id)
        i.ref = Ref.INDEX
    stmt.value = _rewrite(chk, stmt.value, scope)
    chk.infer(stmt.value)
    lhs = {i.id for i in stmt.indices}
    used: set[str] = set()
    _check_bound(chk, stmt.value, lhs, [], used)
    for i in stmt.indices:
        if i.id not in used:
            chk.r.error(
                i.span,
                f"index '{i.id}' on the left side appears nowhere on the right",
                "every output axis must come from an indexed tensor on the right",
            )
    chk.index_ranks[stmt.target] = len(stmt.indices)


def _rewrite(chk, e: N.Expr, scope: Scope) -> N.Expr:
    """Subscripts of tensors become `Indexed`; names are resolved; reductions are checked."""
    match e:
        case N.Indexed():  # checked before (the checker may run twice over one IR)
            chk.resolve(e.name, scope, True)
            return e
        case N.Subscript(value=N.Name() as name, items=items) if (indices := _bare_indices(items)) is not None:
            chk.resolve(name, scope, True)
            for i in indices:
                i.ref = Ref.INDEX
            if name.kind not in (Kind.TENSOR, Kind.UNKNOWN):
                chk.r.error(name.span, f"'{name.id}' is a number and takes no indices")
            if name.id in chk.optional and name.ref in N.MEMBERS:
                chk.r.error(
                    name.span,
                    f"'{name.id}' is optional and cannot appear in an index statement",
                    f"add it in an ordinary statement: `y = y + {name.id}`, where it is skipped when absent",
                )
            rank = _rank(chk, name)
            if rank is not None and rank != len(indices):
                chk.r.error(
                    e.span,
                    f"'{name.id}' has {rank} dim{'s' if rank != 1 else ''} but is indexed with {len(indices)}",
                    "write one index per axis",
                )
            names = [i.id for i in indices]
            for k, i in enumerate(indices):
                if i.id in names[:k]:
                    chk.r.error(
                        i.span,
                        f"index '{i.id}' appears twice in '{name.id}'",
                        "diagonals are not supported; use distinct indices",
                    )
            indexed = N.Indexed(e.span, name, indices)
            indexed.kind = Kind.TENSOR
            return indexed
        case N.Subscript():
            chk.r.error(
                e.span, "inside an index statement, tensors are written with one bare index per axis", "e.g. x[b, i]"
            )
            return e
        case N.Reduce(indices=idx):
            if e.op not in REDUCTIONS:
                chk.r.error(e.span, f"unknown reduction '{e.op}'", did_you_mean(e.op, REDUCTIONS))
            for i in idx:
                i.ref = Ref.INDEX
            e.body = _rewrite(chk, e.body, scope)
            return e
        case N.Name():
            chk.resolve(e, scope, True)
            if e.kind == Kind.TENSOR:
                chk.r.error(e.span, f"'{e.id}' is a tensor: write it with one index per axis", f"e.g. {e.id}[...]")
            return e
        case N.BinOp() | N.UnaryOp():
            return replace_children(e, lambda c: _rewrite(chk, c, scope))
        case N.Call(func=f):
            op = CALLABLE.get(f)
            if op is None or op.shape not in ("elementwise",):
                chk.r.error(
                    e.func_span,
                    f"only elementwise operations and reductions can appear in an index statement, not '{f}'",
                )
            else:
                chk.check_op_call(e, op)
            return replace_children(e, lambda c: _rewrite(chk, c, scope))
        case N.Num() | N.Bool():
            return e
    chk.r.error(e.span, "this cannot appear in an index statement")
    return e


def _rank(chk, name: N.Name) -> int | None:
    layer = chk.layer
    if name.ref == Ref.INPUT:
        inp = next(i for i in layer.forward.inputs if i.name == name.id)
        if inp.shape is None or inp.shape.has_ellipsis:
            return None
        return len(inp.shape.dims)
    if name.ref in N.MEMBERS:
        return len(layer.tensor(name.id).shape.dims)
    if name.ref == Ref.LOCAL:
        return chk.index_ranks.get(name.id)
    return None


def _check_bound(chk, e, lhs: set[str], reduced: list[str], used: set[str]) -> None:
    match e:
        case N.Indexed(indices=idx):
            for i in idx:
                if i.id in lhs or i.id in reduced:
                    used.add(i.id)
                else:
                    hint = f"sum over it: sum[{i.id}](...), or put it on the left side"
                    if i.id in chk.loop_vars:  # `x[t, b, i]` in `for t in ...`: a subscript's bare name is an index
                        hint = (
                            f"'{i.id}' is the loop's variable, but a bare name in a subscript of an index statement"
                            f" is an index: take the step first (`{e.name.id}_{i.id} = {e.name.id}[{i.id}]`) and"
                            " index that"
                        )
                    chk.r.error(i.span, f"index '{i.id}' is neither on the left side nor reduced", hint)
                    used.add(i.id)
        case N.Reduce(indices=idx, body=body):
            inner_used: set[str] = set()
            for i in idx:
                if i.id in lhs:
                    chk.r.error(
                        i.span,
                        f"'{e.op}' reduces over '{i.id}', which is on the left side",
                        "an output axis cannot also be reduced",
                    )
            _check_bound(chk, body, lhs, reduced + [i.id for i in idx], inner_used)
            for i in idx:
                if i.id not in inner_used:
                    chk.r.error(i.span, f"'{e.op}' reduces over '{i.id}', which its argument does not use")
            used |= inner_used
        case _:
            for c in children(e):
                _check_bound(chk, c, lhs, reduced, used)


# ------------------------------------------------------------------ lowering


def lower(stmt: N.IndexAssign) -> tuple[N.Expr, list[tuple[str, list[tuple[N.Name, int]]]]]:
    """(the right side as ordinary IR in the left side's axis order, indices seen on 2+ tensor axes)."""
    occurrences: dict[str, list[tuple[N.Name, int]]] = {}
    for node in walk(stmt.value):
        if isinstance(node, N.Indexed):
            for pos, i in enumerate(node.indices):
                occurrences.setdefault(i.id, []).append((node.name, pos))
    target = [i.id for i in stmt.indices]
    expr, axes = _lower(stmt.value, target)
    if axes != target:
        expr = _permute(expr, axes, target)
    shared = [(i, occ) for i, occ in occurrences.items() if len({(n.id, p) for n, p in occ}) > 1]
    return expr, shared


def _lower(e: N.Expr, want: list[str] | None) -> tuple[N.Expr, list[str]]:
    match e:
        case N.Indexed(name=name, indices=idx):
            return name, [i.id for i in idx]
        case N.Reduce(op="sum", indices=idx, body=body) if _is_product(body):
            return _einsum(body, [i.id for i in idx], want)
        case N.Reduce(op=op, indices=idx, body=body):
            inner, axes = _lower(body, None)
            dims = [axes.index(i.id) for i in idx if i.id in axes]
            call = _call(op, [inner], [("dim", _list(dims))])
            return call, [a for a in axes if a not in {i.id for i in idx}]
        case N.BinOp(op=op, left=l, right=r):
            (a, sa), (b, sb) = _lower(l, want), _lower(r, want)
            axes = _union(sa, sb, want)
            binop = N.BinOp(e.span, op, _align(a, sa, axes), _align(b, sb, axes))
            binop.kind = Kind.TENSOR if axes or Kind.TENSOR in (a.kind, b.kind) else e.kind
            return binop, axes
        case N.UnaryOp(op=op, operand=o):
            a, sa = _lower(o, want)
            unary = N.UnaryOp(e.span, op, a)
            unary.kind = a.kind
            return unary, sa
        case N.Call(args=args):
            lowered = [_lower(a, want) for a in args]
            axes = []
            for _, sa in lowered:
                axes = _union(axes, sa, want)
            call = N.Call(e.span, e.func, e.func_span, [_align(a, sa, axes) for a, sa in lowered], e.kwargs)
            call.kind = Kind.TENSOR if axes else e.kind
            return call, axes
    return e, []


def _is_product(e) -> bool:
    """A product of indexed tensors and numbers, with at least two tensors: one einsum."""
    factors = list(_factors(e))
    return (
        factors is not None
        and sum(isinstance(f, N.Indexed) for f in factors) >= 2
        and all(isinstance(f, N.Indexed) or f.kind in (Kind.INT, Kind.FLOAT) for f in factors)
    )


def _factors(e):
    if isinstance(e, N.BinOp) and e.op == "*":
        yield from _factors(e.left)
        yield from _factors(e.right)
    else:
        yield e


def _einsum(body, reduced: list[str], want: list[str] | None) -> tuple[N.Expr, list[str]]:
    factors = list(_factors(body))
    tensors = [f for f in factors if isinstance(f, N.Indexed)]
    scalars = [f for f in factors if not isinstance(f, N.Indexed)]
    letters: dict[str, str] = {}
    for t in tensors:
        for i in t.indices:
            letters.setdefault(i.id, "abcdefghijklmnopqrstuvwxyz"[len(letters)])
    if all(len(i) == 1 and i.islower() for i in letters):  # the spec's own index names read best
        letters = {i: i for i in letters}
    out = [a for a in letters if a not in reduced]
    if want is not None and set(want) == set(out):
        out = list(want)
    spec = (
        ",".join("".join(letters[i.id] for i in t.indices) for t in tensors) + "->" + "".join(letters[a] for a in out)
    )
    eq = N.Str(NOWHERE, spec)
    eq.kind = Kind.STR
    expr: N.Expr = _call("einsum", [eq, _list([t.name for t in tensors])], [])
    for s in scalars:
        expr = B.binop("*", s, expr)
    return expr, out


def _union(a: list[str], b: list[str], want: list[str] | None) -> list[str]:
    merged = a + [x for x in b if x not in a]
    if want is not None and set(merged) <= set(want):
        return [x for x in want if x in merged]
    return merged


def _align(e: N.Expr, axes: list[str], target: list[str]) -> N.Expr:
    """A view of `e` (axes in `axes`) that broadcasts against `target`: permute, then `[:, None]`."""
    if not axes:
        return e
    order = [a for a in target if a in axes]
    if order != axes:
        e = _permute(e, axes, order)
    first = target.index(order[0])
    items: list[N.SubscriptItem] = [_full_slice() if a in axes else _none() for a in target[first:]]
    while items and isinstance(items[-1], N.Slice):
        items.pop()
    if not items:
        return e
    view = N.Call(NOWHERE, "align", NOWHERE, [e], [])
    view.kind = Kind.TENSOR
    view.items = items
    return view


def _permute(e: N.Expr, axes: list[str], target: list[str]) -> N.Expr:
    dims = [axes.index(a) for a in target]
    inverse = [dims.index(k) for k in range(len(dims))]
    return _call("permute", [e, _list(dims), _list(inverse)], [])


def _call(func: str, args, kwargs) -> N.Call:
    c = N.Call(NOWHERE, func, NOWHERE, list(args), [N.Keyword(k, v, NOWHERE) for k, v in kwargs])
    c.kind = Kind.TENSOR
    return c


def _list(values) -> N.ListExpr:
    items: list[N.Expr] = []
    for v in values:
        if isinstance(v, int):
            n = N.Num(NOWHERE, v, str(v))
            n.kind = Kind.INT
            items.append(n)
        else:
            items.append(v)
    out = N.ListExpr(NOWHERE, items)
    out.kind = Kind.LIST
    return out


def _bare_indices(items: list[N.SubscriptItem]) -> list[N.Name] | None:
    """The indices of `x[i, j]` when every one is a bare name, else None."""
    names = [i for i in items if isinstance(i, N.Name)]
    return names if len(names) == len(items) else None


def _full_slice() -> N.Slice:
    return N.Slice(NOWHERE, None, None, None)


def _none() -> N.NoneLit:
    n = N.NoneLit(NOWHERE)
    n.kind = Kind.NONE
    return n


# ------------------------------------------------------------------ emission


def emit_index_assign(stmt: N.IndexAssign, ex, layer: N.Layer) -> list[str]:
    """Run-time size checks for shared indices, then `target = <lowered right side>`.

    Only inputs, parameters and buffers are checked, and only where their declared shapes do not
    already say the two sizes are the same dim (those are checked with the inputs, or true by
    construction); locals computed by earlier statements are consistent by construction."""
    expr, shared = lower(stmt)
    lines = []
    for index, occ in shared:
        occ = [(n, p) for n, p in occ if n.ref in (Ref.INPUT, *N.MEMBERS)]
        if not occ:
            continue
        (n0, p0), rest = occ[0], occ[1:]
        done = {(n0.id, p0)}
        for n1, p1 in rest:
            if (n1.id, p1) in done or _same_declared_dim(layer, n0, p0, n1, p1):
                continue
            done.add((n1.id, p1))
            a, b = f"{ex(n0)}.shape[{p0}]", f"{ex(n1)}.shape[{p1}]"
            lines += [
                f"if {a} != {b}:",
                f"    raise ValueError(f\"{layer.name}: index '{index}' has size {{{a}}} in '{n0.id}' but {{{b}}} in '{n1.id}'\")",
            ]
    lines.append(f"{stmt.target} = {ex(expr)}")
    return lines


def _declared_dim(layer: N.Layer, name: N.Name, pos: int) -> str | None:
    shape = _declared_shape(layer, name)
    if shape is None or shape.has_ellipsis or pos >= len(shape.dims):
        return None
    return dim_text(shape.dims[pos])


def _declared_shape(layer: N.Layer, name: N.Name) -> N.Shape | None:
    """The shape an input, parameter or buffer is declared with (None when it has none)."""
    if name.ref == Ref.INPUT:
        inputs = layer.forward.inputs if layer.forward is not None else []
        return next((i.shape for i in inputs if i.name == name.id), None)
    tensor = layer.tensor(name.id)
    return tensor.shape if tensor is not None else None


def _same_declared_dim(layer, n0, p0, n1, p1) -> bool:
    a, b = _declared_dim(layer, n0, p0), _declared_dim(layer, n1, p1)
    return a is not None and a == b


def linearize_index_assign(lin, stmt: N.IndexAssign) -> str:
    expr, _ = lower(stmt)
    for n in walk(expr):  # the operations it lowers to are the statement's (a derived backward's errors name it)
        if isinstance(n, N.Call) and n.span is NOWHERE:
            n.span = stmt.span
    return lin.value(expr, target=stmt.target)
