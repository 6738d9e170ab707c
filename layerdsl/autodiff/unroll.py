"""A `@function` layer's forward made ready for the tape: short loops unrolled, `size_at`s named as dims.

A `for t in range(...)` whose trip count is a number written in the spec, of at most MAX_UNROLLED steps,
is unrolled here: one copy of the body per value of `t`, with `t` written as that number (and a number
local the copy computes from it, `k = t + 1`, as its value there: the Function computes each number local
once), and an `if` whose condition then becomes constant (`if t > 0`) replaced by the side it takes. What such a loop
collects (`outputs.append(h)`, then `stack(outputs)`) the tape keeps as a list of vars. A number local a copy
computes from one the loop binds (`n = n + 1`, carried from copy to copy) is bound under a name of its own
in each copy (`n_1 = n + 1`, `n_2 = n_1 + 1`), which that copy's reads, and those after the loop, take: the
Function computes each number local once, in order, before the tensors. So is any number local bound again
after a tensor's statement, a condition or a kept loop read it (`n = 1`, `x[:, n]`, `n = 3`); the sides of an
`if` on arguments bind theirs under one name. Short written
loops are unrolled rather than kept (measured: a 3-step recurrence's unrolled Function runs in 0.75-0.8x
the time of the loop's, which keeps and stacks every step's values). Any other loop (its count an
argument or an input's size, known when forward runs, or longer) is kept, its body made ready alike,
for `autodiff.loops`.

`size_at(x, d)` of an input or parameter whose shape names that dim becomes the dim itself (`B`, `n`), so
a shape-only use keeps no tensor for the backward. Any other `size_at` of an input, parameter or buffer
(`x: [...]`, or a dim the shape gives as an argument) is a measured size: a dim of its own (`x_size0`),
which forward reads from x (`x.shape[0]`) as it reads a named dim, and setup_context keeps on ctx (an int,
not a saved tensor) when the backward, a branch condition or a loop's trip count reads it. The size of a
tensor forward computes is refused: the backward would need the tensor, or forward would have to return
the number.
"""

from __future__ import annotations

import dataclasses

from layerdsl.autodiff.local_sizes import candidate_sizes, resolved_local_sizes
from layerdsl.autodiff.tape import NotDerivable
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import NOWHERE
from layerdsl.ir.printer import spec_text
from layerdsl.ir.visit import clone, map_children, statements, walk
from layerdsl.language.naming import fresh_name
from layerdsl.semantics.evaluate import NotConstant, evaluate

MAX_UNROLLED = 64  # copies of one loop's body: a longer loop would write a forward too long to read

LOOP_HINT = "write a backward block, or drop @function (autograd derives the loop)"


def prepared_forward(layer: N.Layer, measured: Measured | None = None) -> N.Layer:
    """`layer` with its forward's static loops unrolled and its `size_at`s named as dims (declared or
    measured). `measured`: the names of the sizes measured (those of the whole forward, for a side of its
    `if`s: each size is named once for every side)."""
    assert layer.forward is not None, "the parser reports a layer without forward"
    body, pending, whole = _ready(layer)
    measured = whole if measured is None else measured
    # A size of a local the sides of an `if` define differently: the plan resolves it on each side.
    # (An `if` in a kept loop's body on arguments is taken out of the loop, around a copy of it per side.)
    pending = pending if layer.backward is None and any(isinstance(s, N.If) for s in statements(body)) else set()
    body = [_named_sizes(s, layer, measured, pending) for s in body]
    prepared = layer.with_body(body)
    prepared.symbolic_dims += [name for name in measured.values() if name not in layer.symbolic_dims]  # a dim each
    return prepared


Measured = dict[tuple[str, int | None], str]  # (input or member, dim; None for its rank) -> the dim's name


def _ready(layer: N.Layer) -> tuple[list[N.Stmt], set[N.Span], Measured]:
    """The forward's body with its static loops unrolled and the sizes of locals followed back to inputs
    and members; the sizes left to the sides of an `if`; every size measured, named."""
    assert layer.forward is not None
    body = _lists_made_once(_unrolled(layer.forward.body, {}, layer, _Numbers(_names(layer))))
    body, pending = resolved_local_sizes(body, layer)
    return body, pending, _measured(layer, body)


@dataclasses.dataclass
class _Numbers:
    """The number locals bound under names of their own (`n_1 = n + 1`, `n_2 = n_1 + 1`): the Function
    computes each number local once, in order, before the tensors, so a binding after a tensor's statement
    (or a condition, or a kept loop) read the local, as in the next copy of an unrolled loop carrying it
    (`n = n + 1`), takes a name, which the reads from there on take."""

    taken: set[str]
    names: dict[str, str] = dataclasses.field(default_factory=dict)  # spec local -> the name holding it now
    kinds: dict[str, N.Kind] = dataclasses.field(default_factory=dict)  # a name given here -> its kind
    given: dict[str, int] = dataclasses.field(default_factory=dict)  # spec local -> how many names it was given
    read: set[str] = dataclasses.field(default_factory=set)  # names a tensor's statement, a condition or a loop read
    kept: int = 0  # how many loops kept as one are around the statements made ready (`autodiff.loop_ints` names theirs)

    def fresh(self, local: str, kind: N.Kind) -> str:
        self.given[local] = self.given.get(local, 0) + 1
        name = fresh_name(f"{local}_{self.given[local]}", self.taken)
        self.taken.add(name)
        self.kinds[name] = kind
        return name

    def name(self, name: str) -> N.Name:
        e = N.Name(NOWHERE, name)
        e.ref, e.kind = N.Ref.LOCAL, self.kinds.get(name, N.Kind.INT)
        return e


def _unrolled(
    body: list[N.Stmt],
    known: dict[str, int | float],
    layer: N.Layer,
    numbers: _Numbers,
    varying: frozenset[str] = frozenset(),
) -> list[N.Stmt]:
    """`body` with every static loop written out; `known` holds the loop variables' current values, and
    those of the number locals a copy binds from them (`k = t + 1`: each copy reads its own `k`, as the
    Function computes every number local once, at its top, in order); `varying`: the locals the unrolled
    loops around `body` bind; `numbers`: the number locals bound under names of their own (a binding after
    a read, as of the next copy of `n = n + 1`), read under them from there on."""
    known = dict(known)
    out: list[N.Stmt] = []
    for stmt in body:
        stmt = _with_values(stmt, known) if known else stmt
        stmt = _reads_renamed(stmt, numbers.names)
        if isinstance(stmt, N.For):
            values = _trip_values(stmt, layer)
            bound = _bound(stmt.body)
            if values is None:  # kept as a loop (`autodiff.loops`), its body made ready alike
                out.append(_kept(stmt, {k: v for k, v in known.items() if k not in bound}, layer, numbers))
                numbers.read |= _read(out[-1])
            else:
                for value in values:
                    out += _unrolled(stmt.body, {**known, stmt.var: value}, layer, numbers, varying | bound)
            known = {k: v for k, v in known.items() if k not in bound}
        elif isinstance(stmt, N.If):
            taken = _constant(stmt.cond)
            if taken is None:
                numbers.read |= _read(stmt.cond)
                out.append(_sides(stmt, known, layer, numbers, varying))
                known = {k: v for k, v in known.items() if k not in _bound(stmt.body + stmt.orelse)}
            else:
                out += _unrolled(stmt.body if taken else stmt.orelse, known, layer, numbers, varying)
        else:
            if isinstance(stmt, N.Assign) and stmt.value.kind in N.NUMBERS:
                stmt = _number_bound(stmt, known, varying, numbers)
            else:
                known.pop(getattr(stmt, "target", ""), None)
                numbers.names.pop(getattr(stmt, "target", ""), None)
                numbers.read |= _read(stmt)
            out.append(stmt)
    return out


def _kept(loop: N.For, known: dict[str, int | float], layer: N.Layer, numbers: _Numbers) -> N.For:
    """A loop kept as one, its body made ready: a number it binds that holds a name of its own before it is
    bound there under that name (as if the spec had named it so: `autodiff.loop_ints` names it apart); what
    a copy of a loop unrolled in it binds under a name of its own is bound again under the name the next step
    reads at the end of the body."""
    again = {local: numbers.names[local] for local in sorted(_bound(loop.body)) if local in numbers.names}
    if again:
        renamed = lists_renamed(loop, again)
        assert isinstance(renamed, N.For)
        loop = renamed
    outer = numbers.names
    numbers.names = dict(outer)
    numbers.kept += 1
    body = _unrolled(loop.body, known, layer, numbers)
    body += [
        _bind(outer.get(local, local), numbers.name(name), loop.span)
        for local, name in numbers.names.items()
        if outer.get(local) != name
    ]
    numbers.names = outer
    numbers.kept -= 1
    return dataclasses.replace(loop, body=body)


def _sides(
    stmt: N.If, known: dict[str, int | float], layer: N.Layer, numbers: _Numbers, varying: frozenset[str]
) -> N.If:
    """An `if` kept (its condition read when forward runs), each side made ready; a number local the sides
    leave under different names is bound on each under one name, which reads after the `if` take."""
    before = numbers.names
    given_before = set(numbers.kinds)
    numbers.names = dict(before)
    body = _unrolled(stmt.body, known, layer, numbers, varying)
    then, numbers.names = numbers.names, dict(before)
    orelse = _unrolled(stmt.orelse, known, layer, numbers, varying)
    other = numbers.names
    merged: dict[str, str] = {}
    for local in dict.fromkeys([*then, *other]):
        a, b = then.get(local, local), other.get(local, local)
        if a == b:
            if a != local:
                merged[local] = a
            continue
        a_outer, b_outer = a in given_before or a == local, b in given_before or b == local
        if not a_outer:  # a name this side gave: the other side's value takes it too
            name = a
        elif not b_outer:
            name = b
        else:
            name = numbers.fresh(local, numbers.kinds.get(a, numbers.kinds.get(b, N.Kind.INT)))
        body = _side_binding(body, a, name, a_outer, numbers)
        orelse = _side_binding(orelse, b, name, b_outer, numbers)
        merged[local] = name
    numbers.names = merged
    return dataclasses.replace(stmt, body=body, orelse=orelse)


def _side_binding(side: list[N.Stmt], name: str, merged: str, outer: bool, numbers: _Numbers) -> list[N.Stmt]:
    """A side of an `if` leaving its value of a number local under `merged`: the name it gave it renamed
    there, or (a name bound before the `if`) bound to `merged` at its end."""
    if name == merged:
        return side
    if outer:
        return [*side, _bind(merged, numbers.name(name), NOWHERE)]
    return [lists_renamed(s, {name: merged}) for s in side]


def _bind(target: str, value: N.Expr, span: N.Span) -> N.Assign:
    return N.Assign(span, target, span, value)


def _names(layer: N.Layer) -> set[str]:
    """Every name the layer's forward may read or bind (a name given a copy's number is none of them)."""
    assert layer.forward is not None
    taken = {a.name for a in layer.args} | {t.name for t in layer.tensors} | {l.name for l in layer.lets}
    taken |= {i.name for i in layer.forward.inputs} | set(layer.symbolic_dims)
    nodes = [n for stmt in layer.forward.body for n in walk(stmt)]
    return taken | {n.id for n in nodes if isinstance(n, N.Name)} | {s.target for s in nodes if isinstance(s, N.Assign)}


def _bound(body: list[N.Stmt]) -> set[str]:
    """The locals `body` binds (in nested blocks too)."""
    return {s.target for s in statements(body) if isinstance(s, N.Assign)}


def _number_bound(
    stmt: N.Assign, known: dict[str, int | float], varying: frozenset[str], numbers: _Numbers
) -> N.Assign:
    """A number local bound: when a copy of an unrolled body binds it and the copy's loop variables make it a
    number, its value in `known` (each copy reads its own); under a name of its own when a tensor's statement,
    a condition or a loop read it before (the Function computes each number local once, in order, before the
    tensors: that read would see this value), or, in a kept loop's step, when a copy computes it from a local
    the unrolled loop binds (it takes another value in each copy)."""
    known.pop(stmt.target, None)
    numbers.names.pop(stmt.target, None)
    value = _value(stmt.value) if varying else None
    if value is not None:
        known[stmt.target] = value
    if not numbers.kept:  # in order, each binding read before the next under a name of its own
        fresh = stmt.target in numbers.read
    else:  # a step of a kept loop: each copy's value of a number its unrolled copies carry
        given = set(numbers.kinds)
        fresh = value is None and any(isinstance(n, N.Name) and n.id in varying | given for n in walk(stmt.value))
    if fresh:
        name = numbers.fresh(stmt.target, stmt.value.kind)
        numbers.names[stmt.target] = name
        return dataclasses.replace(stmt, target=name)
    return stmt


def _value(e: N.Expr) -> int | float | None:
    """The number `e` is, when it reads numbers only (a copy's loop variables written out), else None."""
    try:
        value = evaluate(e, {})
    except (NotConstant, TypeError, ValueError, ArithmeticError):
        return None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _read(node: N.Node) -> set[str]:
    return {n.id for n in walk(node) if isinstance(n, N.Name)}


def _reads_renamed(stmt: N.Stmt, names: dict[str, str]) -> N.Stmt:
    """A copy of `stmt` with the number locals of `names` read under their names there (a loop's or an
    `if`'s header only: its body is renamed statement by statement, as it may bind them again)."""
    if not names:
        return stmt

    def go(e):
        if isinstance(e, N.Name) and e.id in names and e.ref == N.Ref.LOCAL and e.kind in N.NUMBERS:
            return _renamed_name(e, names[e.id])
        return map_children(e, go)

    if isinstance(stmt, N.For):
        return dataclasses.replace(stmt, iter=go(clone(stmt.iter)))
    if isinstance(stmt, N.If):
        return dataclasses.replace(stmt, cond=go(clone(stmt.cond)))
    return go(clone(stmt))


def _renamed_name(e: N.Name, name: str) -> N.Name:
    out = N.Name(e.span, name)
    out.ref, out.kind = e.ref, e.kind
    return out


def _lists_made_once(body: list[N.Stmt]) -> list[N.Stmt]:
    """`body` with each list made empty again (`outputs = []` in a loop's body, unrolled: once per copy) a
    list of its own from there on (`outputs_1`, `outputs_2`, ...): a derived backward collects each list in
    one loop."""
    made = [s.target for s in body if isinstance(s, N.Assign) and _empty_list(s.value)]
    again = {name for name in made if made.count(name) > 1}
    if not again:
        return body
    taken = {n.id for s in body for n in walk(s) if isinstance(n, N.Name)}
    taken |= {s.target for s in statements(body) if isinstance(s, (N.Assign, N.Append))}
    current: dict[str, str] = {}
    makings: dict[str, int] = {}
    out: list[N.Stmt] = []
    for stmt in body:
        if isinstance(stmt, N.Assign) and _empty_list(stmt.value) and stmt.target in again:
            makings[stmt.target] = makings.get(stmt.target, -1) + 1
            count = makings[stmt.target]
            current[stmt.target] = fresh_name(f"{stmt.target}_{count}", taken) if count else stmt.target
            taken.add(current[stmt.target])
        out.append(lists_renamed(stmt, current) if current else stmt)
    return out


def _empty_list(e: N.Expr) -> bool:
    return isinstance(e, N.ListExpr) and not e.items


def lists_renamed(stmt: N.Stmt, names: dict[str, str]) -> N.Stmt:
    """A copy of `stmt` with the lists of `names` read and made under their names there."""

    def renamed(e):
        e = map_children(e, renamed)
        if isinstance(e, N.Name) and e.id in names:
            e.id = names[e.id]
        elif isinstance(e, (N.Assign, N.Append)) and e.target in names:
            e.target = names[e.target]
        return e

    return renamed(clone(stmt))


def _trip_values(loop: N.For, layer: N.Layer) -> range | None:
    """The values a `for ... in range(...)` takes, when its bounds are numbers written in the spec and it
    takes at most MAX_UNROLLED steps; None for a loop kept as one."""
    it = loop.iter
    if not (isinstance(it, N.Call) and it.func == "range"):  # a list of subs: the checker refuses subs here
        raise NotDerivable(it.span, "a derived backward cannot go through a loop over sub-layers", LOOP_HINT)
    try:
        values = range(*(int(evaluate(b, {})) for b in it.args))
    except (NotConstant, TypeError, ValueError):
        return None
    return values if len(values) <= MAX_UNROLLED else None


def _constant(cond: N.Expr) -> bool | None:
    """A condition's value when it reads numbers only (`1 > 0` once `t` is written out), else None."""
    if any(isinstance(n, N.Name) for n in walk(cond)):
        return None
    try:
        return bool(evaluate(cond, {}))
    except NotConstant:
        return None


def _with_values(stmt: N.Stmt, known: dict[str, int | float]) -> N.Stmt:
    """A copy of `stmt` with the loop variables (and the number locals computed from them) written as their
    values."""

    def written(e):
        if isinstance(e, N.Name) and e.id in known and e.kind != N.Kind.TENSOR:
            return B.num(known[e.id])
        return map_children(e, written)

    return written(clone(stmt))


def _named_sizes(stmt: N.Stmt, layer: N.Layer, measured: Measured, pending: set[N.Span]) -> N.Stmt:
    """`size_at(x, k)` as the dim x's declared shape names at k (when it names one), else as the size
    measured from the input or member x (its name in `measured`); those `pending` are left as they are."""

    def named(e):
        e = map_children(e, named)
        if isinstance(e, N.Call) and e.func == "size_at" and len(e.args) == 2:
            dim = _declared_dim(e.args[0], e.args[1], layer)
            if dim is not None and all(n.id in layer.symbolic_dims for n in walk(dim) if isinstance(n, N.Name)):
                return dim
            key = _measured_key(e)
            if key is None and e.span in pending:
                return e
            if key not in measured:  # not a written dim, or a local's size not followed back
                raise _unmeasured(e)
            return _measured_name(e, measured[key])
        if isinstance(e, N.Rank) and _is_leaf(e.value):
            return _measured_name(e, measured[(e.value.id, None)])
        return e

    return named(stmt)


def _measured_name(e: N.Expr, name: str) -> N.Name:
    size = N.Name(e.span, name)
    size.ref, size.kind = N.Ref.DIM, N.Kind.INT
    return size


def _is_leaf(e: N.Expr) -> bool:
    """Whether `e` names an input, a parameter or a buffer (what the Function is given)."""
    return isinstance(e, N.Name) and e.ref in (N.Ref.INPUT, N.Ref.PARAM, N.Ref.BUFFER)


def _unmeasured(call: N.Call) -> NotDerivable:
    """Why `size_at(x, k)` cannot be measured for the backward: x is computed in forward, or k is not a number."""
    of = call.args[0]
    if _is_leaf(of):
        return NotDerivable(
            call.args[1].span,
            "under @function, size_at() takes its dim as a number written in the spec (or a loop variable "
            "of a loop short enough to unroll)",
            "write the dim as a number",
        )
    return NotDerivable(
        of.span,
        f"under @function, size_at() measures an input, a parameter or a buffer: `{spec_text(of)}` is a tensor "
        "forward computes, whose size there is not followed back to one (its definition's ops are followed"
        " through their shape rules to the declared shapes of the inputs and members, which leave this dim"
        " open, as they do a dim of a `...` group or of an input declared without a shape), and the backward"
        " keeps no tensor only for its size",
        "measure the input it is computed from (`size_at(query, 1)` for `sum(query, dim = 0)`), "
        "or name the dim in the input's shape (`x: [B, d]`: size_at(x, 0) is B)",
    )


def measured_names(layer: N.Layer) -> Measured:
    """Every size the forward measures, on any side of its `if`s, by the name it is read by."""
    return _ready(layer)[2]


def measured_sizes(layer: N.Layer) -> dict[str, str]:
    """The sizes a `@function` forward measures (`size_at(x, k)` of an input or member whose shape names
    no dim there, and `x.ndim`): each as a dim of its own, by name, with the Python that reads it
    (`input.shape[0]`, `input.dim()`). Forward computes it; setup_context keeps it on ctx when the
    backward reads it (an int, not a saved tensor)."""
    if layer.forward is None:
        return {}
    try:
        measured = measured_names(layer)  # `size_at(x, t)` in a loop unrolled: `t` written out
    except NotDerivable:
        return {}  # a loop over subs: the layer does not derive
    return {name: f"{leaf}.dim()" if k is None else f"{leaf}.shape[{k}]" for (leaf, k), name in measured.items()}


def _measured(layer: N.Layer, body: list[N.Stmt]) -> Measured:
    """Each size the forward `body` measures (input or member, dim; None for its number of dims) -> the
    name it is read by; a size of a local, at every input size it may be on a side of the `if`s."""
    assert layer.forward is not None
    taken = {a.name for a in layer.args} | {t.name for t in layer.tensors} | {l.name for l in layer.lets}
    taken |= {i.name for i in layer.forward.inputs} | set(layer.symbolic_dims)
    nodes = [n for stmt in body for n in walk(stmt)]
    taken |= {n.id for n in nodes if isinstance(n, N.Name)} | {s.target for s in nodes if isinstance(s, N.Assign)}
    out: Measured = {}
    for e in [*nodes, *candidate_sizes(body, layer)]:
        if isinstance(e, N.Rank) and _is_leaf(e.value) and (e.value.id, None) not in out:
            out[(e.value.id, None)] = _fresh(f"{e.value.id}_ndim", taken)
        if not (isinstance(e, N.Call) and e.func == "size_at" and len(e.args) == 2):
            continue
        dim = _declared_dim(e.args[0], e.args[1], layer)
        if dim is not None and all(n.id in layer.symbolic_dims for n in walk(dim) if isinstance(n, N.Name)):
            continue
        key = _measured_key(e)
        if key is None or key in out:
            continue
        leaf, k = key
        out[key] = _fresh(f"{leaf}_size{k}" if k >= 0 else f"{leaf}_size_last" + (str(-k) if k < -1 else ""), taken)
    return out


def _fresh(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _measured_key(call: N.Call) -> tuple[str, int] | None:
    """(x, k) for `size_at(x, k)` of an input or member at a number written in the spec, else None."""
    of, at = call.args
    if not isinstance(of, N.Name) or not _is_leaf(of):
        return None
    try:
        k = evaluate(at, {})
    except NotConstant:
        return None
    return (of.id, k) if isinstance(k, int) and not isinstance(k, bool) else None


def _declared_dim(of: N.Expr, at: N.Expr, layer: N.Layer) -> N.Expr | None:
    if not isinstance(of, N.Name):
        return None
    assert layer.forward is not None
    shapes = {i.name: i.shape for i in layer.forward.inputs if not i.parts}
    shapes |= {t.name: t.shape for t in layer.tensors}
    shape = shapes.get(of.id) if of.ref in (N.Ref.INPUT, N.Ref.PARAM, N.Ref.BUFFER) else None
    try:
        k = evaluate(at, {})
    except NotConstant:
        return None
    if shape is None or not isinstance(k, int):
        return None
    dims = list(shape.dims)
    ell = next((j for j, d in enumerate(dims) if isinstance(d, N.EllipsisItem)), None)
    if ell is None:
        picked = dims[k] if -len(dims) <= k < len(dims) else None
    elif k >= 0:
        picked = dims[k] if k < ell else None
    else:
        picked = dims[k] if -k <= len(dims) - ell - 1 else None
    if picked is None or isinstance(picked, N.EllipsisItem):
        return None
    dim = clone(picked)
    for n in walk(dim):
        if isinstance(n, N.Name) and n.id in layer.symbolic_dims:
            n.ref = N.Ref.DIM
        if isinstance(n, N.Expr) and n.kind not in N.NUMBERS:
            n.kind = N.Kind.INT
    return dim
