"""A `@function` layer's forward inputs and callable arguments as its autograd.Function takes them.

A Function's gradients are one per tensor argument of `apply`, so a tuple input (`hx: ([B, H], [B, H])? =
none`) is taken as its tensors, each an input of its own (`hx_0`, `hx_1`, optional when the tuple is):
the module unpacks the tuple before `apply`, and the backward returns a gradient per tensor. In forward,
`h, c = hx` then binds `h` and `c` to those inputs, and `hx != none` tests each of them (all are given
or none together), so the side it chooses reads every one as given.

Flags (`need_weights: bool = true`) and a tuple of ints given for a tensor (`lengths: long[N] | ints`) are
passed to `apply` as they are: non-tensor arguments, whose gradient is None.

A callable argument (`activation: fn | "relu" | "gelu"`) has no derivative the compiler knows. The checker
proves that a call of it runs only where the argument is neither one of its strings nor none (`else` of
`if activation == "relu"`), so the Function is planned for the strings and none alone: a side calling it
is dropped (`without_callable_sides`), and the module runs its plain forward, derived by autograd, when a
callable is given (`codegen.module`).
"""

from __future__ import annotations

import dataclasses

from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import map_children, walk
from layerdsl.language.naming import fresh_name


def tuple_parts(layer: N.Layer) -> dict[str, list[str]]:
    """Each tuple input of `layer`'s forward -> the names its tensors take as the Function's inputs."""
    assert layer.forward is not None, "the parser reports a layer without forward"
    taken = {a.name for a in layer.args} | {t.name for t in layer.tensors} | {l.name for l in layer.lets}
    taken |= {i.name for i in layer.forward.inputs} | set(layer.symbolic_dims) | _assigned(layer.forward.body)
    parts: dict[str, list[str]] = {}
    for inp in layer.forward.inputs:
        if inp.parts:
            parts[inp.name] = []
            for k in range(len(inp.parts)):
                parts[inp.name].append(fresh_name(f"{inp.name}_{k}", taken))
                taken.add(parts[inp.name][-1])
    return parts


def with_tuples_split(layer: N.Layer) -> N.Layer:
    """`layer` with each tuple input replaced by its tensors, as inputs of their own (`tuple_parts`)."""
    parts = tuple_parts(layer)
    if not parts:
        return layer
    assert layer.forward is not None
    inputs: list[N.Input] = []
    for inp in layer.forward.inputs:
        if inp.parts is None:
            inputs.append(inp)
            continue
        for name, part in zip(parts[inp.name], inp.parts):
            inputs.append(dataclasses.replace(part, name=name, optional=inp.optional, span=inp.span))
    body = _split_statements(layer.forward.body, parts)
    return dataclasses.replace(layer, forward=dataclasses.replace(layer.forward, inputs=inputs, body=body))


def _split_statements(body: list[N.Stmt], parts: dict[str, list[str]]) -> list[N.Stmt]:
    out: list[N.Stmt] = []
    for stmt in body:
        if isinstance(stmt, N.Unpack) and isinstance(stmt.value, N.Name) and stmt.value.id in parts:
            for (target, span), part in zip(stmt.targets, parts[stmt.value.id]):
                out.append(N.Assign(stmt.span, target, span, B.name(part, stmt.value.span, N.Ref.INPUT)))
            continue
        if isinstance(stmt, N.If):
            stmt = dataclasses.replace(
                stmt,
                cond=_first_part(stmt.cond, parts),
                body=_split_statements(stmt.body, parts),
                orelse=_split_statements(stmt.orelse, parts),
            )
        elif isinstance(stmt, N.For):
            stmt = dataclasses.replace(stmt, body=_split_statements(stmt.body, parts))
        out.append(stmt)
    return out


def _first_part(e: N.Expr, parts: dict[str, list[str]]) -> N.Expr:
    """`hx != none` as `hx_0 != none and hx_1 != none` (`==` with `or`): the tuple is given when its
    tensors are, so that the side it chooses reads each of them as given; `hx` elsewhere as `hx_0`."""
    tested = _tested_tuple(e, parts) if isinstance(e, N.Compare) else None
    if isinstance(e, N.Compare) and tested is not None:
        tests: list[N.Expr] = []
        for part in parts[tested.id]:
            named = [_first_part(o, {tested.id: [part]}) if o is tested else o for o in e.operands]
            tests.append(N.Compare(e.span, list(e.ops), named))
            tests[-1].kind = e.kind
        joined = tests[0]
        for test in tests[1:]:
            joined = N.BoolOp(e.span, "and" if e.ops == ["!="] else "or", joined, test)
            joined.kind = e.kind
        return joined
    if isinstance(e, N.Name) and e.id in parts:
        first = N.Name(e.span, parts[e.id][0])
        first.ref, first.kind = e.ref, e.kind
        return first
    return map_children(e, lambda c: _first_part(c, parts))


def _tested_tuple(e: N.Compare, parts: dict[str, list[str]]) -> N.Name | None:
    """The tuple input `e` compares with none (`hx != none`), if it is such a test."""
    if e.ops not in (["=="], ["!="]):
        return None
    if not any(isinstance(o, N.NoneLit) for o in e.operands):
        return None
    return next((o for o in e.operands if isinstance(o, N.Name) and o.id in parts), None)


def _assigned(body: list[N.Stmt]) -> set[str]:
    names: set[str] = set()
    for stmt in body:
        if isinstance(stmt, N.Assign):
            names.add(stmt.target)
        elif isinstance(stmt, N.Unpack):
            names |= {t for t, _ in stmt.targets}
        for block in ("body", "orelse"):
            names |= _assigned(getattr(stmt, block, None) or [])
    return names


def called_fn_args(layer: N.Layer) -> list[str]:
    """The `fn` arguments `layer`'s forward calls (`activation(hidden)`)."""
    assert layer.forward is not None
    fns = {a.name for a in layer.args if a.base_type == "fn"}
    called = {n.func for s in layer.forward.body for n in walk(s) if isinstance(n, N.Call) and n.func in fns}
    return [a.name for a in layer.args if a.name in called]


def without_callable_sides(layer: N.Layer) -> N.Layer:
    """`layer` with each `if` side that calls an `fn` argument replaced by the other side: such a side runs
    only when a callable is given, which the Function never is (a string or none is)."""
    fns = set(called_fn_args(layer))
    if not fns:
        return layer
    assert layer.forward is not None
    body = _dropped(layer.forward.body, fns)
    return layer.with_body(body)


def _dropped(body: list[N.Stmt], fns: set[str]) -> list[N.Stmt]:
    """Inner `if`s first: a side that still calls then calls at its top, so runs only with a callable."""
    out: list[N.Stmt] = []
    for stmt in body:
        if isinstance(stmt, N.If):
            then, orelse = _dropped(stmt.body, fns), _dropped(stmt.orelse, fns)
            if _calls(then, fns):
                out += orelse
                continue
            if _calls(orelse, fns):
                out += then
                continue
            stmt = dataclasses.replace(stmt, body=then, orelse=orelse)
        out.append(stmt)
    return out


def _calls(body: list[N.Stmt], fns: set[str]) -> bool:
    return any(isinstance(n, N.Call) and n.func in fns for s in body for n in walk(s))
