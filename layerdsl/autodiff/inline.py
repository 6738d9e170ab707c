"""A `@function` layer's subs inlined: one forward over the layer's own tensors and its subs'.

A sub that is a spec layer built in this layer (`sub fc = Dense(d, h)`, or an item of a list of subs
built by a comprehension of a count written in the spec) has its forward written into this layer's
forward where it is called: its arguments and lets as the expressions its construction gives them (over
this layer's arguments), its inputs as what the call passes, its locals renamed around this layer's
names, its `training` this module's. Its params and buffers become tensors of the layer (`fc_weight`)
that the module passes as `self.fc.weight`: one Function, whose gradients flow to the sub's own
parameters, under the state_dict names of the plain module. An `nn.Sequential` is its items one after
another; a torch.nn layer is inlined by its forward as `torch_nn_forwards.py` writes it.

A sub that cannot be inlined is reported, at its declaration, with why: a layer argument held or copied
(its layer is known, its arguments are not), a torch.nn layer with no forward written there, a list of
subs whose count is set at construction, a sub that updates buffers or writes its own backward.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

from layerdsl.autodiff.copied_layers import (
    HeldArgument,
    built_together,
    constructed,
    given_flag,
    held_argument,
    none_test,
    over_values,
)
from layerdsl.autodiff.inline_cache import cached
from layerdsl.autodiff.list_order import reversed_lists
from layerdsl.autodiff.loop_members import without_members
from layerdsl.autodiff.operation_count import check_operations
from layerdsl.autodiff.peel import peeled_families
from layerdsl.autodiff.sub_requires import keep_origin
from layerdsl.autodiff.tape import NotDerivable
from layerdsl.autodiff.torch_nn_forwards import inlined_torch_nn, torch_nn_layer
from layerdsl.diagnostics import Span
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.ir.visit import children, clone, map_children, statements, walk
from layerdsl.language.naming import fresh_name
from layerdsl.semantics.evaluate import NotConstant, evaluate

HINT = "write the sub's computation in this layer, or drop @function (autograd goes through the sub)"


class LayerNotGiven(NotDerivable):
    """A sub's layer is not among the layers given: its file failed to check (reported there)."""


@dataclass
class Inlined:
    """A layer with its subs inlined, and where the module holds each tensor that came from a sub."""

    layer: N.Layer  # no subs: its forward reads the subs' tensors as its own
    paths: dict[str, str] = field(default_factory=dict)  # `fc_weight` -> `fc.weight`, `blocks_0_w1` -> `blocks[0].w1`
    # Where inlined statements came from, by span: `the sub 'fc'` for the statements of a layer of this
    # file (an error in one is shown where its spec writes it); a layer of another file's are spanned as
    # the call, which names the sub and that file.
    origins: dict[Span, str] = field(default_factory=dict)
    # The tensors that are a family's members stacked (`w_l` for `w_l{k}`), passed so by the module
    families: dict[str, Family] = field(default_factory=dict)
    # The arguments that stand for a held or copied layer argument's (`layers_d`), read from the sub
    arguments: dict[str, HeldArgument] = field(default_factory=dict)
    optional_holders: set[str] = field(default_factory=set)  # subs holding a layer argument that may be none

    def optional(self, name: str) -> bool:
        """Whether the tensor `name` of the inlined forward is built only when arguments say."""
        return any(t.name == name and t.cond is not None for t in self.layer.tensors)


@dataclass(frozen=True)
class Family:
    """A family of members passed stacked: `getattr(self, f"{written}")` for `var` in range(`count`), built
    when `cond` (over the layer's arguments and lets)."""

    written: str  # `w_l{k}`
    var: str
    count: N.Expr
    cond: N.Expr | None
    part: str = ""  # "first": member 0 alone; "rest": members from 1 on (`peel.peeled_families`)


def inline_subs(layer: N.Layer, layers: Mapping[str, N.Layer]) -> Inlined:
    """`layer` with every call of a sub replaced by the sub's forward (the layer itself when it has no
    subs); raises NotDerivable, at the sub, for a sub that cannot be inlined. Computed once per layer
    within `inline_cache.reused_inlining()`."""
    return cached(layer, layers, lambda seen: _inlined(layer, seen))


def counted_inlining(layer: N.Layer, layers: Mapping[str, N.Layer]) -> Inlined:
    """`inline_subs` for the derivation: first TooManyOperations, writing nothing, where the forward would go
    through more operations than a derived backward does (`operation_count`). The emitter inlines a layer
    planned already (its subs' Functions composed past the limit: its module's forward is the inlined one's)."""
    check_operations(layer, layers)
    return inline_subs(layer, layers)


def _inlined(layer: N.Layer, layers: Mapping[str, N.Layer]) -> Inlined:
    if layer.forward is None:
        return Inlined(layer)
    layer = reversed_lists(layer)  # a list put back in order by a loop: a flip of the other's stack
    if any(t.repeat is not None for t in layer.tensors):  # `w_l{k}` for k in range(n): stacked, `w_l[k]`
        layer, parts = peeled_families(layer)  # a family whose first member differs: the first step on its own
        layer, stacked = stacked_families(layer)
        stacked |= {name: Family(p.written, p.var, p.count, p.cond, p.part) for name, p in parts.items()}
        return dataclasses.replace(inline_subs(layer, layers), families=stacked)
    if not layer.subs:
        return Inlined(layer)
    if layer.backward is not None:
        at = layer.backward.span
        raise NotDerivable(
            Span(at.line, at.col, at.line, at.col + len("backward")),
            "a @function layer with subs derives its backward: a written one cannot give the gradients of the"
            " subs' parameters",
            "leave the backward block out, or write the subs' computation in this layer",
        )
    return _Inliner(layer, layers).run()


@dataclass
class _Instance:
    """One module the forward calls: a sub, an item of a list of subs or of an nn.Sequential."""

    shown: str  # `fc`, `blocks[0]`, `features[3]`: where the module holds it, after `self.`
    prefix: str  # `fc`, `blocks_0`, `features_3`: the start of the names made for it
    spec: Inlined  # its layer, its own subs inlined
    values: dict[str, N.Expr]  # its arguments and lets, as expressions of the outer layer's
    tensors: dict[str, str]  # its params and buffers -> the outer layer's names for them
    # Every item of a list of subs of constructed length, as one: its tensors are the items' stacked
    # (`blocks_w1: [depth, hidden, d]`), each read at the item's index (`blocks_w1[i]`)
    index: N.Expr | None = None
    unbuilt: set[str] = field(default_factory=set)  # optional members its arguments leave out (`bias = false`)


@dataclass
class _Sequence:
    """An nn.Sequential: its items called one after another."""

    shown: str
    items: list[_Instance | _Sequence]


_Module = _Instance | _Sequence


class _Inliner:
    def __init__(self, layer: N.Layer, layers: Mapping[str, N.Layer]):
        assert layer.forward is not None
        self.layer = layer
        self.layers = layers
        self.subs = {s.name: s for s in layer.subs}
        self.taken = {a.name for a in layer.args} | {t.name for t in layer.tensors} | {l.name for l in layer.lets}
        self.taken |= {i.name for i in layer.forward.inputs} | set(layer.symbolic_dims) | {"training"}
        self.taken |= {n for s in statements(layer.forward.body) for n in _bound(s)}
        self.instances: dict[tuple[str, int | None], _Module] = {}
        self.tensors: list[N.Tensor] = []
        self.paths: dict[str, str] = {}
        self.origins: dict[Span, str] = {}
        self.bound: dict[str, _Module] = {}  # a `for block in blocks` variable -> its item
        self.held_args: list[N.Arg] = []  # what a held or copied layer argument's arguments become
        self.arguments: dict[str, HeldArgument] = {}
        self.given_flags: dict[str, N.Name] = {}  # an optional layer argument -> whether it is given
        self.member_flags: dict[tuple[str, str], N.Name] = {}  # (sub, member's condition) -> whether built

    def fresh(self, hint: str) -> str:
        name = fresh_name(hint, self.taken)
        self.taken.add(name)
        return name

    def run(self) -> Inlined:
        assert self.layer.forward is not None
        body = self.block(self.layer.forward.body)  # a sub read by its members only (`fc.weight`) passes them
        forward = dataclasses.replace(self.layer.forward, body=body)
        layer = dataclasses.replace(
            self.layer,
            args=self.layer.args + self.held_args,
            subs=[],
            reinits=[],
            tensors=self.layer.tensors + self.tensors,
            forward=forward,
        )
        layer.symbolic_dims = list(self.layer.symbolic_dims)
        holders = {s.name for s in self.layer.subs if s.given is not None and self._maybe_none(s)}
        return Inlined(layer, self.paths, self.origins, arguments=self.arguments, optional_holders=holders)

    # -- the outer forward's statements

    def block(self, body: list[N.Stmt]) -> list[N.Stmt]:
        out: list[N.Stmt] = []
        for stmt in body:
            if isinstance(stmt, N.For) and isinstance(stmt.iter, N.Name) and stmt.iter.id in self.subs:
                out += self.unrolled_over_subs(stmt, self.subs[stmt.iter.id])
            elif isinstance(stmt, N.For):
                out.append(dataclasses.replace(stmt, body=self.block(stmt.body)))
            elif isinstance(stmt, N.If):
                pre: list[N.Stmt] = []
                cond = cast(N.Expr, self.hoisted(stmt.cond, pre))
                out += pre + [
                    dataclasses.replace(stmt, cond=cond, body=self.block(stmt.body), orelse=self.block(stmt.orelse))
                ]
            elif isinstance(stmt, N.Unpack) and isinstance(stmt.value, N.Call) and (module := self.callee(stmt.value)):
                pre = []
                call = self.with_arguments_hoisted(stmt.value, pre)
                results = self.inlined_call(call, pre, module)
                out += pre
                for (target, span), value in zip(stmt.targets, results):
                    out.append(_assign(target, span, value))
            else:
                out += self.with_calls_hoisted(stmt)
        return out

    def with_arguments_hoisted(self, call: N.Call, pre: list[N.Stmt]) -> N.Call:
        """`call` with the sub calls in its arguments replaced by their results (their statements in `pre`)."""
        return map_children(call, lambda e: self.hoisted(e, pre))

    def with_calls_hoisted(self, stmt: N.Stmt) -> list[N.Stmt]:
        """The statements of the sub calls in `stmt`, then `stmt` reading their results."""
        pre: list[N.Stmt] = []
        stmt = map_children(stmt, lambda e: self.hoisted(e, pre))
        return pre + [stmt]

    def unrolled_over_subs(self, loop: N.For, sub: N.Sub) -> list[N.Stmt]:
        """`for block in blocks { ... }`: the body once per item of the list, `block` that item."""
        assert sub.repeat is not None, "the checker loops over lists of subs only"
        try:
            count = range(*(int(evaluate(b, {})) for b in sub.repeat.iter.args))
        except (NotConstant, TypeError, ValueError):
            return self.looped_over_subs(loop, sub)
        out: list[N.Stmt] = []
        for i in count:
            self.bound[loop.var] = self.instance(sub, i)
            out += self.block(loop.body)
        self.bound.pop(loop.var, None)
        return out

    def looped_over_subs(self, loop: N.For, sub: N.Sub) -> list[N.Stmt]:
        """`for block in blocks { ... }` over a list whose length is set at construction: a loop over the
        items' indices, whose body calls the items as one (`_Instance.index`), their tensors stacked."""
        assert sub.repeat is not None
        bounds = sub.repeat.iter.args
        if len(bounds) != 1:
            raise NotDerivable(
                loop.iter.span,
                f"cannot inline the list of subs '{sub.name}' under @function: its length is set when the layer"
                f" is constructed, and its items are built over range({', '.join(spec_text(b) for b in bounds)})"
                " (a loop over such a list runs over range(n))",
                f"build it over range(n) (`[... for {sub.repeat.var.id} in range(n)]`), or drop @function",
            )
        index = N.Name(loop.var_span, self.fresh(sub.repeat.var.id))
        index.ref, index.kind = N.Ref.LOCAL, N.Kind.INT
        self.bound[loop.var] = dataclasses.replace(self.stacked_instance(sub, index), index=index)
        body = self.block(loop.body)
        self.bound.pop(loop.var, None)
        trip = N.Call(loop.iter.span, "range", loop.iter.span, [clone(bounds[0])], [])
        trip.kind = N.Kind.LIST
        return [dataclasses.replace(loop, var=index.id, iter=trip, body=body)]

    def stacked_instance(self, sub: N.Sub, index: N.Name) -> _Instance:
        """Every item of the list of subs `sub` as one module, read at `index` (made once)."""
        key = (sub.name, -1)
        if key not in self.instances:
            assert sub.repeat is not None
            loop: dict[str, N.Expr] = {sub.repeat.var.id: index}
            shown = f"{sub.name}[{sub.repeat.var.id}]"  # every item: `blocks[i]`
            module = self.module(sub.call, shown, sub.name, sub.span, loop, sub.repeat.iter.args[0], sub)
            if not isinstance(module, _Instance):
                raise NotDerivable(
                    sub.span,
                    f"cannot inline the list of subs '{sub.name}' under @function: its items are nn.Sequentials"
                    " and its length is set when the layer is constructed",
                    "write the count (`[... for i in range(3)]`), or drop @function",
                )
            self.instances[key] = dataclasses.replace(module, index=index)
        stacked = self.instances[key]
        assert isinstance(stacked, _Instance)
        return stacked

    def callee(self, call: N.Call) -> _Module | None:
        """The module a call calls, or None for an operation."""
        if call.func in self.bound:
            return self.bound[call.func]
        sub = self.subs.get(call.func)
        if sub is None or not call.sub:
            return None
        if sub.repeat is not None:
            raise NotDerivable(call.func_span, f"'{sub.name}' is a list of subs", "call its items in a `for` loop")
        return self.instance(sub, None)

    def hoisted(self, e: N.Node, pre: list[N.Stmt]) -> N.Node:
        """`e` with each sub call replaced by the local holding its result (its statements put in `pre`)."""
        if isinstance(e, N.Compare) and (test := none_test(e)) is not None:  # `norm != none`
            if (flag := self.given_test(*test, e.span)) is not None:
                return flag
        if isinstance(e, N.Name) and e.ref == N.Ref.SUB_MEMBER:
            sub_name, member = e.id.split(".", 1)
            inst = self.instance(self.subs[sub_name], None)
            assert isinstance(inst, _Instance), "a sub's member is read of a spec layer only"
            return _renamed_name(e, inst.tensors[member], N.Ref.PARAM if _is_param(inst, member) else N.Ref.BUFFER)
        if not isinstance(e, (N.Expr, N.Stmt)):
            return e
        e = map_children(e, lambda c: self.hoisted(c, pre))
        if isinstance(e, N.Call) and (module := self.callee(e)) is not None:
            results = self.inlined_call(e, pre, module)
            if len(results) != 1:
                raise NotDerivable(
                    e.span,
                    f"the sub '{module.shown}' returns {len(results)} tensors: unpack them (`a, b = {e.func}(...)`)",
                    HINT,
                )
            return results[0]
        return e

    # -- one sub

    def instance(self, sub: N.Sub, index: int | None) -> _Module:
        """The sub, or its item `index`, as a module to inline (made once: its calls share its tensors)."""
        key = (sub.name, index)
        if key not in self.instances:
            shown = sub.name if index is None else f"{sub.name}[{index}]"
            prefix = sub.name if index is None else f"{sub.name}_{index}"
            loop: dict[str, N.Expr] = {}
            if sub.repeat is not None and index is not None:
                loop[sub.repeat.var.id] = B.num(index)
            self.instances[key] = self.module(sub.call, shown, prefix, sub.span, loop, None, sub)
        return self.instances[key]

    def module(
        self,
        call: N.Call,
        shown: str,
        prefix: str,
        span: Span,
        loop: dict[str, N.Expr],
        count: N.Expr | None = None,
        sub: N.Sub | None = None,
    ) -> _Module:
        """The module `call` builds (`count`: the length of the list of subs whose items it builds, as one;
        `sub`: the sub declaring it, which may hold or copy a layer argument)."""
        if call.func == "nn.Sequential":
            items = [
                self.module(item, f"{shown}[{k}]", f"{prefix}_{k}", span, loop)
                for k, item in enumerate(call.args)
                if isinstance(item, N.Call)
            ]
            return _Sequence(shown, items)
        spec = self._inlinable_layer(call, shown, span)
        held = sub if sub is not None and sub.given is not None else None
        if held is not None:
            values = self.held_values(spec, held, prefix)
        elif spec.arguments:  # its layer holds a layer argument: given here
            own = dataclasses.replace(spec.layer, args=[a for a in spec.layer.args if a.name not in spec.arguments])
            values = _argument_values(own, call, shown, span, loop)
            values |= self.constructed_held(spec, values, shown, span)
        else:
            values = _argument_values(spec.layer, call, shown, span, loop)
        tensors: dict[str, str] = {}
        unbuilt: set[str] = set()
        for t in spec.layer.tensors:
            if t.repeat is not None:
                raise NotDerivable(
                    span,
                    f"cannot inline the sub '{shown}' under @function: its layer '{spec.layer.name}' declares a"
                    " family of members (`for` over its members)",
                    HINT,
                )
            if t.cond is not None and _constant(over_values(t.cond, values)) is False:
                unbuilt.add(t.name)  # never built (`bias = false`, a held layer argument given as none)
                continue
            name = self.fresh(f"{prefix}_{t.name}")
            tensors[t.name] = name
            self.paths[name] = f"{shown}.{spec.paths.get(t.name, t.name)}"
            outer = _outer_tensor(t, name, span, values)
            if held is not None and (t.cond is not None or self._maybe_none(held)):
                given = self.member_given(held, spec.paths.get(t.name, t.name), name, t.cond)
                outer = dataclasses.replace(outer, cond=given)
            self.tensors.append(outer if count is None else _stacked_tensor(outer, count))
        return _Instance(shown, prefix, spec, values, tensors, unbuilt=unbuilt)

    # -- a sub holding or copying a layer argument (autodiff/copied_layers.py)

    def held_values(self, spec: Inlined, sub: N.Sub, prefix: str) -> dict[str, N.Expr]:
        """The held layer's arguments as arguments of this layer that the module reads from the sub
        (`layers_d`: `self.layers[0].d`), its lets over them."""
        assert sub.given is not None
        cannot = f"cannot inline the sub '{sub.name}' under @function: it {_holds(sub)} '{sub.given.id}'"
        if spec.arguments:
            raise NotDerivable(
                sub.span, f"{cannot}, whose layer {spec.layer.name} holds a layer argument of its own", HINT
            )
        values: dict[str, N.Expr] = {}
        members = {t.name for t in spec.layer.tensors}
        for a in spec.layer.args:
            if a.name in members:  # named by its member's condition (`bias`): read as whether it is built
                continue
            name = self.fresh(f"{prefix}_{a.name}")
            declared, read = held_argument(name, a, sub.span)
            self.held_args.append(declared)
            first = sub.repeat is not None
            self.arguments[name] = HeldArgument(
                sub.name, sub.given.id, a.name, first=first, optional=self._maybe_none(sub)
            )
            values[a.name] = read
        for let in spec.layer.lets:
            values[let.name] = over_values(let.value, values)
        return values

    def member_given(self, sub: N.Sub, member: str, name: str, cond: N.Expr | None) -> N.Name:
        """Whether the held layer's optional member is built, as a bool argument (`layers_b1_given`), one per
        condition (`copied_layers.built_together`)."""
        assert sub.given is not None
        if (key := (sub.name, built_together(cond))) in self.member_flags:
            return clone(self.member_flags[key])
        flag = self.fresh(f"{name}_given")
        declared, read = given_flag(flag, sub.span)
        self.held_args.append(declared)
        first, optional = sub.repeat is not None, self._maybe_none(sub)
        self.arguments[flag] = HeldArgument(
            sub.name, sub.given.id, member, member=True, first=first, optional=optional, cond=cond
        )
        self.member_flags[key] = read
        return read

    def constructed_held(self, spec: Inlined, values: dict[str, N.Expr], shown: str, span: Span) -> dict[str, N.Expr]:
        """A sub whose layer holds a layer argument, given here as a construction (`TransformerEncoder(
        TransformerEncoderLayer(d_model, ...), ...)`): what its held arguments are, over this layer's names."""
        out: dict[str, N.Expr] = {}
        for name, held in spec.arguments.items():
            given = values.get(held.given)
            arguments: dict[str, N.Expr] = {}
            if isinstance(given, N.Call) and given.func in self.layers:
                arguments = _argument_values(self.layers[given.func], given, shown, span, {})
            elif given is not None and not isinstance(given, N.NoneLit):
                raise NotDerivable(
                    span,
                    f"cannot inline the sub '{shown}' under @function: its layer argument '{held.given}' is"
                    f" given as `{spec_text(given)}`, whose arguments are not known here (build the layer in"
                    " the call)",
                    HINT,
                )
            out[name] = constructed(held, given, arguments)
        return out

    def given_test(self, held: str, given: bool, span: Span) -> N.Expr | None:
        """`norm != none` of an optional layer argument that a sub holds, as a bool argument (`norm_given`)."""
        sub = next((s for s in self.subs.values() if s.given is not None and held in (s.name, s.given.id)), None)
        if sub is None or sub.given is None or not self._maybe_none(sub):
            return None
        if sub.name not in self.given_flags:
            declared, read = given_flag(self.fresh(f"{sub.name}_given"), span)
            self.held_args.append(declared)
            self.arguments[read.id] = HeldArgument(sub.name, sub.given.id, None, optional=True)
            self.given_flags[sub.name] = read
        flag = clone(self.given_flags[sub.name])
        if given:
            return flag
        negated = N.Not(span, flag)
        negated.kind = N.Kind.BOOL
        return negated

    def _maybe_none(self, sub: N.Sub) -> bool:
        """Whether the layer argument `sub` holds may be none (`norm: LayerNorm? = none`)."""
        assert sub.given is not None
        return any(a.name == sub.given.id and a.maybe_none for a in self.layer.args)

    def _inlinable_layer(self, call: N.Call, shown: str, span: Span) -> Inlined:
        """The layer `call` builds, its own subs inlined; NotDerivable, at the sub, when it cannot be."""
        cannot = f"cannot inline the sub '{shown}' under @function"
        spec = torch_nn_layer(call.func) if call.func.startswith("nn.") else self.layers.get(call.func)
        if spec is None and call.func.startswith("nn."):
            raise NotDerivable(
                span,
                f"{cannot}: {call.func} is a torch.nn layer whose forward is not written for inlining (those that"
                f" are: {', '.join(inlined_torch_nn())})",
                "write the sub as a spec layer (specs/torch_nn/ has many of torch.nn's), or drop @function",
            )
        if spec is None or spec.forward is None:
            raise LayerNotGiven(span, f"{cannot}: its layer '{call.func}' is not in this run", HINT)
        for stmt in statements(spec.forward.body):
            if isinstance(stmt, N.Update):
                raise NotDerivable(
                    span,
                    f"{cannot}: its layer '{spec.name}' updates the buffer '{stmt.target}'"
                    f" (at {spec.path}:{stmt.span.line}:{stmt.span.col})",
                    "drop @function here, or compute the update outside the sub",
                )
        if spec.backward is not None:
            raise NotDerivable(
                span,
                f"{cannot}: its layer '{spec.name}' writes its own backward, which one derived Function cannot hold",
                HINT,
            )
        try:
            return inline_subs(spec, self.layers)
        except LayerNotGiven:
            raise
        except NotDerivable as exc:
            raise NotDerivable(
                span,
                f"cannot inline the sub '{shown}' ({spec.name}, {spec.path}:{exc.span.line}:{exc.span.col}):"
                f" {exc.message}",
                exc.hint,
            ) from None

    def inlined_call(self, call: N.Call, pre: list[N.Stmt], module: _Module) -> list[N.Expr]:
        """The module's forward put in `pre`, for this call; the names holding its results."""
        if isinstance(module, _Sequence):  # each item called on what the one before returned
            results = list(call.args)
            for item in module.items:
                results = self.inlined_call(dataclasses.replace(call, args=results, kwargs=[]), pre, item)
            return results
        inst = module
        spec = inst.spec.layer
        assert spec.forward is not None
        here = spec.path == self.layer.path
        locals_: dict[str, str] = {}
        passed = _passed_inputs(spec.forward, call)
        for inp in spec.forward.inputs:
            flag = inp.flag is not None and not _flag_written(inp, passed)
            if inp.parts is not None or inp.alternatives is not None or flag:
                raise NotDerivable(
                    call.span,
                    f"cannot inline the sub '{inst.shown}' under @function: its input '{inp.name}' is a tuple, a"
                    " flag given as a value computed here or has alternatives",
                    HINT,
                )
        uses = {i.name: 0 for i in spec.forward.inputs}
        for n in walk(spec.forward):
            if isinstance(n, N.Name) and n.ref == N.Ref.INPUT and n.id in uses:
                uses[n.id] += 1
        inputs: dict[str, N.Expr] = {}
        for inp in spec.forward.inputs:
            value = passed.get(inp.name)
            if value is None and inp.flag is not None:  # a flag left at its default: written as its value
                value = clone(inp.flag)
            if value is None:
                value = N.NoneLit(call.span)
                value.kind = N.Kind.NONE
            if isinstance(value, (N.Name, N.NoneLit, N.Num)) or value.kind != N.Kind.TENSOR or uses[inp.name] <= 1:
                inputs[inp.name] = value
            else:  # read more than once: computed once
                local = self.fresh(f"{inst.prefix}_{inp.name}")
                pre.append(_assign(local, call.span, value))
                inputs[inp.name] = B.name(local, call.span)
        for s in statements(spec.forward.body):
            for name in _bound(s):
                if name not in locals_:
                    locals_[name] = self.fresh(f"{inst.prefix}_{name}")
        if _returns(spec.forward.body) == 0:
            raise NotDerivable(call.span, f"the sub '{inst.shown}' returns nothing", HINT)
        n_out = _arity(spec.forward.body)
        names = [self.fresh(inst.prefix if n_out == 1 else f"{inst.prefix}_{k}") for k in range(n_out)]

        def renamed(e: N.Node) -> N.Node:
            if (given := _given_test(e, inputs, self.layer)) is not None:  # `m != none` of a tensor passed in m
                return given
            if isinstance(e, N.Name):
                if e.ref in (N.Ref.ARG, N.Ref.LET) and e.id in inst.values:
                    return clone(inst.values[e.id])
                if e.ref in N.MEMBERS and e.id in inst.tensors:
                    member = _renamed_name(e, inst.tensors[e.id], e.ref)
                    return member if inst.index is None else _item(member, inst.index)
                if e.ref == N.Ref.INPUT and e.id in inputs:
                    return clone(inputs[e.id])
                if e.ref == N.Ref.DIM:
                    raise NotDerivable(
                        call.span,
                        f"cannot inline the sub '{inst.shown}' under @function: its forward reads the size"
                        f" '{e.id}' of its input's shape",
                        "pass the size as an argument of the sub, or drop @function",
                    )
                if e.id in locals_ and e.ref not in (N.Ref.TRAINING, N.Ref.CONST):
                    return _renamed_name(e, locals_[e.id], e.ref)
                return clone(e)
            written, e = e, map_children(e, renamed)
            if isinstance(e, N.Require) and isinstance(written, N.Require):  # the module names the sub's line
                keep_origin(e, written, spec)
            if isinstance(e, N.Call) and isinstance(fn := inst.values.get(e.func), N.Name) and fn.kind == N.Kind.FN:
                e.func = fn.id  # a call of an `fn` argument: of what this layer passes for it
            for attr in ("target", "var"):  # the names statements bind
                if isinstance(getattr(e, attr, None), str) and getattr(e, attr) in locals_:
                    setattr(e, attr, locals_[getattr(e, attr)])
            if isinstance(e, N.Unpack):
                e.targets = [(locals_.get(t, t), span) for t, span in e.targets]
            return e

        # its forward as it runs without the members its arguments leave out (`+ bias` dropped)
        written = without_members(spec.forward.body, inst.unbuilt) if inst.unbuilt else spec.forward.body
        body = _decided([cast(N.Stmt, renamed(s)) for s in written])
        if here:  # an error in the sub's statements is shown where its spec writes them
            origin = f"the sub '{inst.shown}'"
            self.origins.update({n.span: origin for s in body for n in walk(s) if hasattr(n, "span")})
        else:  # another file's lines: the generated code and the errors name the call instead
            _respanned(body, call.span)
            self.origins[call.span] = f"the sub '{inst.shown}', whose layer {spec.name} is in {spec.path}"
        pre += _returns_assigned(body, names, call.span)
        returns = [s for s in statements(body) if isinstance(s, N.Return)]
        return [
            N.NoneLit(call.span) if all(isinstance(s.values[k], N.NoneLit) for s in returns) else B.name(r, call.span)
            for k, r in enumerate(names)
        ]


# -------------------------------------------------------------------- helpers


def _argument_values(spec: N.Layer, call: N.Call, shown: str, span: Span, loop: dict[str, N.Expr]) -> dict[str, N.Expr]:
    """The layer's arguments and lets as `call` gives them, over the outer layer's names (`loop`: the
    value of a list of subs' comprehension variable for this item)."""
    cannot = f"cannot inline the sub '{shown}' under @function"
    names = [a.name for a in spec.args]
    if len(call.args) > len(names):
        raise NotDerivable(
            span, f"{cannot}: {call.func} is given more arguments than it takes here ({len(names)})", HINT
        )
    given: dict[str, N.Expr] = dict(zip(names, call.args))
    for k in call.kwargs:
        if k.name not in names:  # a torch.nn layer's argument that its spec form does not take
            raise NotDerivable(span, f"{cannot}: {call.func}'s argument '{k.name}' is not inlined", HINT)
        given[k.name] = k.value
    values: dict[str, N.Expr] = {}

    def over_outer(e: N.Expr, outer: bool) -> N.Expr:
        if isinstance(e, N.Name):
            if outer and e.id in loop:
                return clone(loop[e.id])
            if not outer and e.ref in (N.Ref.ARG, N.Ref.LET) and e.id in values:
                return clone(values[e.id])
            return clone(e)
        return map_children(e, lambda c: over_outer(c, outer) if isinstance(c, N.Expr) else c)

    for a in spec.args:
        if a.name in given:
            value = given[a.name]
            if value.kind in (N.Kind.LIST, N.Kind.TUPLE) and "ints" not in a.type:
                raise NotDerivable(
                    value.span, f"{cannot}: its '{a.name}' is inlined as one {a.type}, not a tuple of them", HINT
                )
            values[a.name] = over_outer(value, outer=True)
        elif a.default is not None:
            values[a.name] = over_outer(a.default, outer=False)
        else:  # the checker reports a missing argument
            raise NotDerivable(span, f"{cannot}: it is not given its argument '{a.name}'", HINT)
    for let in spec.lets:
        values[let.name] = over_outer(let.value, outer=False)
    return values


def _outer_tensor(t: N.Tensor, name: str, span: Span, values: dict[str, N.Expr]) -> N.Tensor:
    """A sub's param or buffer as the outer layer's: its shape and condition over the outer's names."""

    def over_outer(e: N.Expr) -> N.Expr:
        if isinstance(e, N.Name) and e.ref in (N.Ref.ARG, N.Ref.LET) and e.id in values:
            return clone(values[e.id])
        return map_children(e, lambda c: over_outer(c) if isinstance(c, N.Expr) else c)

    if t.shape.spread is not None:
        shape = _spread_over_outer(t, span, values)
    else:
        dims = [over_outer(d) if isinstance(d, N.Expr) else d for d in t.shape.dims]
        shape = dataclasses.replace(t.shape, dims=dims)
    cond = over_outer(t.cond) if t.cond is not None else None
    if cond is not None:
        try:
            if evaluate(cond, {}) is True:
                cond = None  # always built: a required member
        except NotConstant:
            pass
    return dataclasses.replace(t, name=name, span=span, shape=shape, cond=cond, init=None)


def _holds(sub: N.Sub) -> str:
    """How the sub takes its layer argument: `holds the layer argument` or `copies ...`."""
    return f"{'copies' if sub.copied else 'holds'} the layer argument"


def _stacked_tensor(t: N.Tensor, count: N.Expr) -> N.Tensor:
    """The items' member `t` stacked: one more dim first, the list's length (the checker lets no item's
    arguments read its index, so every item's member has the same shape)."""
    shape = dataclasses.replace(t.shape, dims=[clone(count), *t.shape.dims])
    return dataclasses.replace(t, shape=shape)


def stacked_families(layer: N.Layer) -> tuple[N.Layer, dict[str, Family]]:
    """`layer` with each family of members (`param w_l{k}: [d]` for k in range(n)) as one tensor of its
    members stacked (`w_l: [n, d]`), its reads `w_l{k}` as `w_l[k]`; and the family each stacks."""
    assert layer.forward is not None
    taken = {t.name for t in layer.tensors} | {a.name for a in layer.args} | {l.name for l in layer.lets}
    taken |= {i.name for i in layer.forward.inputs} | {n for s in statements(layer.forward.body) for n in _bound(s)}
    tensors: list[N.Tensor] = []
    stacked: dict[str, N.Tensor] = {}  # family key (`w_l{}`) -> its stacked tensor
    families: dict[str, Family] = {}
    for t in layer.tensors:
        if t.repeat is None:
            tensors.append(t)
            continue
        var, bounds = t.repeat.var.id, t.repeat.iter.args
        reads = {
            n.id for d in [*t.shape.dims, t.cond] if isinstance(d, N.Expr) for n in walk(d) if isinstance(n, N.Name)
        }
        if len(bounds) != 1 or var in reads or t.shape.spread is not None:
            raise NotDerivable(
                t.span,
                f"cannot derive through the family '{t.written}' under @function: its members are passed stacked,"
                f" and their shapes {'depend on ' + repr(var) if var in reads else 'are not one declared shape'}"
                + ("" if len(bounds) == 1 else f" (or it is declared over range({', '.join(map(spec_text, bounds))}))"),
                "give every member the same shape over range(n), or drop @function (autograd derives the loop)",
            )
        name = fresh_name(t.name.replace("{}", "") or "members", taken)
        taken.add(name)
        shape = dataclasses.replace(t.shape, dims=[clone(bounds[0]), *t.shape.dims])
        stacked[t.name] = dataclasses.replace(t, name=name, shape=shape, repeat=None, written="")
        tensors.append(stacked[t.name])
        for e in (bounds[0], t.cond):
            if e is not None:
                _on_arguments(e, t.span)
        families[name] = Family(t.written, var, bounds[0], t.cond)

    def read(e: N.Node) -> N.Node:
        if isinstance(e, N.FamilyName) and e.id in stacked and e.index is not None:
            return _item(_renamed_name(e, stacked[e.id].name, e.ref), e.index)
        return map_children(e, read) if isinstance(e, (N.Expr, N.Stmt)) else e

    body = [cast(N.Stmt, read(s)) for s in layer.forward.body]
    return layer.with_body(body, tensors=tensors), families


def _on_arguments(e: N.Expr, span: Span) -> None:
    """NotDerivable unless a family's count or condition reads only numbers, arguments and lets (the
    module computes it to gather the members)."""
    if (
        isinstance(e, N.Name)
        and e.ref not in (N.Ref.ARG, N.Ref.LET)
        or not isinstance(e, N.Num | N.Name | N.Bool | N.BoolOp | N.Not)
    ):
        raise NotDerivable(
            span,
            f"cannot derive through this family under @function: its count or condition `{spec_text(e)}` is not"
            " one of arguments",
            "count the family by an argument (`for k in range(num_layers)`), or drop @function",
        )
    for child in children(e):
        if isinstance(child, N.Expr):
            _on_arguments(child, span)


def _item(member: N.Name, index: N.Expr) -> N.Expr:
    """`member[index]`: one item's tensor of the items' stacked."""
    e = N.Subscript(member.span, member, [clone(index)])
    e.kind = N.Kind.TENSOR
    return e


def _spread_over_outer(t: N.Tensor, span: Span, values: dict[str, N.Expr]) -> N.Shape:
    """The shape of a sub's member shaped by an `ints` argument (`weight: normalized_shape`), over the
    outer layer's names: the dims the construction gives (`LayerNorm(d_model)`: [d_model]), or the outer
    layer's own `ints` argument it passes on."""
    assert t.shape.spread is not None
    given = values.get(t.shape.spread.id)
    if isinstance(given, N.Name) and given.ref == N.Ref.ARG and given.kind not in N.NUMBERS:
        return dataclasses.replace(t.shape, spread=clone(given))
    items = given.items if isinstance(given, N.ListExpr | N.TupleExpr) else [given] if given is not None else []
    if not items or not all(i.kind == N.Kind.INT for i in items):
        raise NotDerivable(
            span,
            f"cannot inline this sub under @function: its member '{t.name}' is shaped by"
            f" '{t.shape.spread.id}', which is not given as sizes written here",
            HINT,
        )
    return dataclasses.replace(t.shape, dims=[clone(i) for i in items], spread=None)


def _renamed_name(e: N.Name, new: str, ref: N.Ref) -> N.Name:
    n = N.Name(e.span, new)
    n.ref, n.kind = ref, e.kind if e.kind != N.Kind.UNKNOWN else N.Kind.TENSOR
    return n


def _is_param(inst: _Instance, member: str) -> bool:
    return any(t.name == member and t.kind == N.Ref.PARAM for t in inst.spec.layer.tensors)


def _decided(body: list[N.Stmt]) -> list[N.Stmt]:
    """`body` with each `if` whose condition is written out as values (a flag passed as `false`) replaced
    by the side it takes."""
    out: list[N.Stmt] = []
    for stmt in body:
        if isinstance(stmt, N.If):
            taken = _constant(stmt.cond)
            if taken is not None:
                out += _decided(stmt.body if taken else stmt.orelse)
                if out and isinstance(out[-1], N.Return):
                    break
                continue
            stmt = dataclasses.replace(stmt, body=_decided(stmt.body), orelse=_decided(stmt.orelse))
        elif isinstance(stmt, N.For):
            stmt = dataclasses.replace(stmt, body=_decided(stmt.body))
        out.append(stmt)
        if isinstance(stmt, N.Return):
            break  # what follows is never reached
    return out


def _given_test(e: N.Node, inputs: dict[str, N.Expr], layer: N.Layer) -> N.Bool | None:
    """`m != none` (`m == none`) of a sub's optional input as a bool where the call passes a value that is
    never none (a tensor computed here, or an input of this layer that is not optional)."""
    if not (isinstance(e, N.Compare) and len(e.ops) == 1 and e.ops[0] in ("!=", "==")):
        return None
    left, right = e.operands
    if isinstance(left, N.NoneLit):
        left, right = right, left
    if not (isinstance(left, N.Name) and left.ref == N.Ref.INPUT and isinstance(right, N.NoneLit)):
        return None
    value = inputs.get(left.id)
    if value is None or value.kind != N.Kind.TENSOR:
        return None
    if isinstance(value, N.Name) and value.ref != N.Ref.LOCAL:
        assert layer.forward is not None
        if value.ref != N.Ref.INPUT or any(i.name == value.id and i.optional for i in layer.forward.inputs):
            return None  # this layer's optional input (or a member): decided where it is tested
    out = N.Bool(e.span, e.ops[0] == "!=")
    out.kind = N.Kind.BOOL
    return out


def _constant(cond: N.Expr) -> bool | None:
    if any(isinstance(n, N.Name) for n in walk(cond)):
        return None
    try:
        return bool(evaluate(cond, {}))
    except NotConstant:
        return None


def _flag_written(inp: N.Input, passed: dict[str, N.Expr]) -> bool:
    """Whether a flag input is passed as a value written here (`false`, or left at its default): the
    sub's branches on it are then decided where it is inlined."""
    return isinstance(passed.get(inp.name, inp.flag), N.Bool)


def _passed_inputs(forward: N.Forward, call: N.Call) -> dict[str, N.Expr]:
    passed = dict(zip([i.name for i in forward.inputs], call.args))
    return passed | {k.name: k.value for k in call.kwargs}


def _assign(target: str, span: Span, value: N.Expr) -> N.Assign:
    return N.Assign(span, target, span, value)


def _bound(stmt: N.Stmt) -> list[str]:
    """The names a statement binds."""
    if isinstance(stmt, (N.Assign, N.IndexAssign, N.Append)):
        return [stmt.target]
    if isinstance(stmt, N.Unpack):
        return [t for t, _ in stmt.targets]
    if isinstance(stmt, N.For):
        return [stmt.var]
    return []


def _returns(body: list[N.Stmt]) -> int:
    return sum(1 for s in statements(body) if isinstance(s, N.Return))


def _arity(body: list[N.Stmt]) -> int:
    return next(len(s.values) for s in statements(body) if isinstance(s, N.Return))


def _returns_assigned(body: list[N.Stmt], results: list[str], span: Span) -> list[N.Stmt]:
    """`body` with each `return` written as assignments to `results` (the statements after an `if` that
    returns on one side go into its other side)."""
    out: list[N.Stmt] = []
    for k, stmt in enumerate(body):
        if isinstance(stmt, N.Return):
            return out + [_assign(r, span, v) for r, v in zip(results, stmt.values)]
        if isinstance(stmt, N.If) and _returns(stmt.body + stmt.orelse):
            rest = body[k + 1 :]
            then = _returns_assigned(stmt.body + rest, results, span)
            orelse = _returns_assigned(stmt.orelse + rest, results, span)
            return out + [dataclasses.replace(stmt, body=then, orelse=orelse)]
        if isinstance(stmt, N.For) and _returns(stmt.body):
            raise NotDerivable(stmt.span, "cannot inline a forward that returns from inside a loop", HINT)
        out.append(stmt)
    return out


def _respanned(body: list[N.Stmt], span: Span) -> None:
    """Every node of `body` located at `span`."""
    for stmt in body:
        for n in walk(stmt):
            for attr in ("span", "func_span", "target_span", "var_span"):
                if isinstance(getattr(n, attr, None), Span):
                    setattr(n, attr, span)
            if isinstance(n, N.Unpack):
                n.targets = [(t, span) for t, _ in n.targets]


def _quoted(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in dict.fromkeys(names)) or "a value"
