"""The derivation's operation limit, and a forward's operations counted before its subs are inlined.

A derived backward goes through at most MAX_TAPE_STEPS operations (`plan` refuses a longer tape with
`too_long`). Inlining writes each call of a sub out in full (a chain of layers each calling its sub twice,
14 deep, is 8,192 calls) and unrolling writes each step of a loop, so a forward far past the limit took
minutes and gigabytes to write before its tape was counted. `check_operations` counts first: it runs the
forward symbolically, subs called and loops of a written count stepped through, without writing either
out, and stops with the limit's refusal once past it.

The count is never more than the tape's: an operation is counted once per distinct operation on distinct
values, as the tape computes the same operation on the same operands once (a loop's step reading only what
the loop does not change, a sub's weight computed from its parameters alone, a sub called twice on the same
input); what it cannot follow (an `if` not decided by numbers, a loop kept as a loop, an optional input or
member, a held layer argument, a sub that cannot be inlined) leaves the count to the plan, as before. So a
forward the plan would derive is never refused here. An `if` of the layer's own forward testing only its
arguments and lets is followed on each side: the plan derives a tape for each combination of such tests,
and refuses one past the limit, so the count runs the forward once per combination (at most MAX_SIDES).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from layerdsl.autodiff.tape import NotDerivable
from layerdsl.autodiff.torch_nn_forwards import torch_nn_layer
from layerdsl.autodiff.unroll import MAX_UNROLLED
from layerdsl.diagnostics import Span
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import reads_only_arguments, statements, walk
from layerdsl.language.ops import OPERATORS, OPS
from layerdsl.semantics.evaluate import NotConstant, evaluate

# The longest straight tape derived (an unrolled loop's steps counted): pricing which intermediates to save
# takes time growing with the square of its length (800 operations take about 5-10 s), and the backward's
# reads are followed by recursion one call per operation (1,000 pass Python's default limit).
MAX_TAPE_STEPS = 600

# Statements and operations run before the count gives up (a forward whose repeated operations the tape
# computes once each, however many times it writes them): the plan then counts, as before.
MAX_RUN = 50_000


def too_long(layer: N.Layer, spans: list[Span], complete: bool = True) -> NotDerivable:
    """The refusal of a forward of more than MAX_TAPE_STEPS operations, located at the one past the limit.
    `spans`: where each operation is written, in order (all of them when `complete`; else the first ones,
    past the limit). Statements that run more than once write operations of the same span: in the
    forward's lines, a loop of a written count (unrolled); elsewhere, a sub called more than once (inlined).
    What it says of loops and subs, it says only where they did."""
    assert layer.forward is not None
    whole = layer.forward.span
    repeated = {span for span, n in Counter(spans).items() if n > 1}
    looped = any(whole.line <= span.line <= whole.end_line for span in repeated)
    called = any(not whole.line <= span.line <= whole.end_line for span in repeated)
    ways = [way for way, did in (("its loops are unrolled", looped), ("its subs inlined", called)) if did]
    count = str(len(spans)) if complete else f"more than {MAX_TAPE_STEPS}"
    message = f"a derived backward goes through at most {MAX_TAPE_STEPS} operations, and this forward has"
    message += f" {count}" + (f" once {' and '.join(ways)}" if ways else "")
    message += " (the time to derive it grows with their square)"
    hints = ["give the loop its count by an argument (`range(steps)`): such a loop is derived once, not unrolled"]
    hints = (hints if looped else []) + (["put @function on a sub's layer instead"] if called else [])
    hint = (
        "; or ".join([*hints, "write a `backward` block"]) if hints else "write a `backward` block, or drop @function"
    )
    return NotDerivable(spans[MAX_TAPE_STEPS], message, hint)


class TooManyOperations(NotDerivable):
    """`too_long`, found before the subs were inlined; `origins`: the sub its location is in, by span (as
    `inline.Inlined.origins` says it)."""

    def __init__(self, refused: NotDerivable, origins: dict[Span, str]):
        super().__init__(refused.span, refused.message, refused.hint)
        self.origins = origins


def check_operations(layer: N.Layer, layers: Mapping[str, N.Layer]) -> None:
    """TooManyOperations where `layer`'s forward, its subs (built from `layers`) inlined and its loops of a
    written count unrolled, surely goes through more than MAX_TAPE_STEPS operations; None where it does not,
    or where the count cannot tell."""
    if layer.forward is None or layer.backward is not None:
        return
    pending: list[dict[int, bool]] = [{}]  # the sides each run takes at the `if`s on arguments met so far
    for _ in range(MAX_SIDES):
        if not pending:
            return
        counter, sides = _Counter(), _Sides(pending.pop())
        try:
            _Run(layer, layers, counter, sides=sides).forward()
        except _PastLimit:
            origins = {counter.spans[MAX_TAPE_STEPS]: counter.origin} if counter.origin else {}
            raise TooManyOperations(too_long(layer, counter.spans, complete=False), origins) from None
        except _Unknown:
            return
        pending += sides.others()


# The combinations of an `if`'s sides on arguments counted (the plan's MAX_BRANCH_PLANS): past it, the plan counts.
MAX_SIDES = 32

# what evaluating a number expression raises where its value is not known before forward runs
_NOT_A_NUMBER = (NotConstant, TypeError, ValueError, ArithmeticError, KeyError, AttributeError, IndexError)


class _Unknown(Exception):
    """What the count does not follow: the plan counts instead."""


class _PastLimit(Exception):
    pass


Value = tuple[object, ...]  # a value number: equal for the values the tape computes once


@dataclass
class _Counter:
    seen: set[Value] = field(default_factory=set)
    spans: list[Span] = field(default_factory=list)  # of each operation counted, where the forward writes it
    origin: str = ""  # the sub the last one counted is in ("" for the layer's own)
    run: int = 0
    fresh: Callable[[], int] = field(default_factory=lambda: itertools.count().__next__)

    def step(self) -> None:
        """One more statement or operation run: past MAX_RUN, the count gives up."""
        self.run += 1
        if self.run > MAX_RUN:
            raise _Unknown

    def operation(self, key: Value, span: Span, origin: str) -> Value:
        """The value of an operation: counted where the tape has not computed it yet."""
        self.step()
        if key not in self.seen:
            self.seen.add(key)
            self.spans.append(span)
            self.origin = origin
            if len(self.spans) > MAX_TAPE_STEPS:
                raise _PastLimit
        return key

    def unique(self) -> Value:
        return ("unique", self.fresh())


@dataclass
class _Sides:
    """The side one run takes at each `if` on arguments: as `chosen` says (by the statement's id), else the
    `then` side of one met for the first time (`met`)."""

    chosen: dict[int, bool]
    met: list[int] = field(default_factory=list)

    def taken(self, stmt: N.If) -> bool:
        if id(stmt) not in self.chosen:
            self.chosen[id(stmt)] = True
            self.met.append(id(stmt))
        return self.chosen[id(stmt)]

    def others(self) -> list[dict[int, bool]]:
        """The runs taking the other side at one of the `if`s first met in this one (the same sides before it)."""
        given = {key: side for key, side in self.chosen.items() if key not in self.met}
        return [given | dict.fromkeys(self.met[:k], True) | {key: False} for k, key in enumerate(self.met)]


class _Returned(Exception):
    def __init__(self, values: list[Value]):
        self.values = values


@dataclass
class _Run:
    """One layer's forward run symbolically: the outer layer's, or a sub's for one call."""

    layer: N.Layer
    layers: Mapping[str, N.Layer]
    counter: _Counter
    leaves: dict[str, Value | None] = field(default_factory=dict)  # inputs and members (None: not built)
    known: dict[str, object] = field(default_factory=dict)  # numbers: arguments, lets, loop variables
    at: Callable[[Span], Span] = lambda span: span  # a span of this layer's as the outer forward's
    origin: str = ""  # "the sub 'fc'": this run is (in) that sub of the outer layer
    path: tuple[str, ...] = ()  # the subs this run's layer is held by, from the outer layer
    unrolled: int = 0  # the loops `unroll` writes out around this point (number locals are known in them)
    env: dict[str, Value] = field(default_factory=dict)
    lists: dict[str, list[Value]] = field(default_factory=dict)
    bound: dict[str, tuple[N.Sub, int]] = field(default_factory=dict)  # `for block in blocks`: its item
    sides: _Sides = field(default_factory=lambda: _Sides({}))

    def forward(self) -> list[Value]:
        """The values the forward returns; the outer layer's inputs and members are its leaves."""
        fwd = self.layer.forward
        assert fwd is not None
        if not self.path:
            for i in fwd.inputs:
                if i.optional or i.parts is not None or i.alternatives is not None or i.flag is not None:
                    raise _Unknown
                self.leaves[i.name] = ("leaf", i.name)
        for t in self.layer.tensors:
            if t.repeat is not None:
                raise _Unknown
            built = t.cond is None or self._number(t.cond) is True
            self.leaves[t.name] = ("member", *self.path, t.name) if built else None
            if t.cond is not None and not self.path:
                raise _Unknown  # a side each, built and not (`loops.member_choice`)
        try:
            self.block(fwd.body)
        except _Returned as r:
            return r.values
        raise _Unknown

    def _number(self, e: N.Expr) -> object:
        """The value of a number expression, or None where it is not known before forward runs."""
        try:
            return evaluate(e, self.known)
        except _NOT_A_NUMBER:
            return None

    def block(self, body: list[N.Stmt]) -> None:
        for stmt in body:
            self.statement(stmt)

    def statement(self, stmt: N.Stmt) -> None:
        self.counter.step()  # a chain of subs each calling the next twice, computing nothing, ends too
        if isinstance(stmt, N.Assign):
            self.assign(stmt.target, stmt.value)
        elif isinstance(stmt, N.Append):
            if stmt.target not in self.lists:
                raise _Unknown
            self.lists[stmt.target].append(self.value(stmt.value))
        elif isinstance(stmt, N.Unpack):
            results = self.called(stmt.value) if isinstance(stmt.value, N.Call) else None
            if results is None or len(results) != len(stmt.targets):
                raise _Unknown
            self.env.update({t: v for (t, _), v in zip(stmt.targets, results)})
        elif isinstance(stmt, N.Return):
            raise _Returned([self.value(v) if v.kind == N.Kind.TENSOR else ("none",) for v in stmt.values])
        elif isinstance(stmt, N.For):
            self.loop(stmt)
        elif isinstance(stmt, N.If):
            taken = self._number(stmt.cond)
            if not isinstance(taken, bool) and not self.path and _on_arguments(stmt.cond):
                taken = self.sides.taken(stmt)  # a tape per side: each run takes one
            if not isinstance(taken, bool):
                raise _Unknown  # each `if` a segment: the plan counts
            self.block(stmt.body if taken else stmt.orelse)
        elif not isinstance(stmt, N.Require):
            raise _Unknown

    def assign(self, target: str, value: N.Expr) -> None:
        items = value.items if isinstance(value, N.ListExpr) else None
        listed = (
            [self.value(i) for i in items]
            if items is not None and all(i.kind == N.Kind.TENSOR for i in items)
            else None
        )
        tensor = self.value(value) if listed is None and value.kind == N.Kind.TENSOR else None
        number = self._number(value) if value.kind in N.NUMBERS and self.unrolled else None
        self.known.pop(target, None)
        self.env.pop(target, None)
        self.lists.pop(target, None)
        if listed is not None:
            self.lists[target] = listed
        elif tensor is not None:
            self.env[target] = tensor
        elif number is not None:
            self.known[target] = number  # `k = t + 1` in a copy of an unrolled loop's body: written as its value

    def loop(self, loop: N.For) -> None:
        """A loop `unroll` writes out (or the inliner, over a list of subs), stepped through; else unknown."""
        if isinstance(loop.iter, N.Name) and (sub := self._subs().get(loop.iter.id)) is not None:
            if sub.repeat is None or not isinstance(sub.repeat.iter, N.Call):
                raise _Unknown
            # a count written in the spec: the inliner writes each item out; else `unroll` may, as any loop
            written = _range(sub.repeat.iter.args, {})
            for k in written if written is not None else self._unrolled_range(sub.repeat.iter):
                self.bound[loop.var] = (sub, k)
                self.block(loop.body)
            self.bound.pop(loop.var, None)
            return
        self.unrolled += 1
        for k in self._unrolled_range(loop.iter):
            self.known[loop.var] = k
            self.block(loop.body)
        self.unrolled -= 1
        for s in statements(loop.body):  # the copies' number locals are not known after the loop
            if isinstance(s, N.Assign):
                self.known.pop(s.target, None)
        self.known.pop(loop.var, None)

    def _unrolled_range(self, it: N.Expr) -> range:
        """The values of a loop `unroll` writes out; unknown for one kept as a loop (derived once: its body
        is not counted against the limit)."""
        if not (isinstance(it, N.Call) and it.func == "range"):
            raise _Unknown
        steps = _range(it.args, self.known)
        if steps is None or len(steps) > MAX_UNROLLED:
            raise _Unknown
        return steps

    def _subs(self) -> dict[str, N.Sub]:
        return {s.name: s for s in self.layer.subs}

    # -- values

    def value(self, e: N.Expr) -> Value:
        """The value number of a tensor expression, counting the operations it runs."""
        if e.kind != N.Kind.TENSOR:
            number = self._number(e)
            return ("number", number) if number is not None else ("number",)
        if isinstance(e, N.Name):
            return self.name(e)
        if isinstance(e, N.BinOp) and e.op in OPERATORS:
            row = OPERATORS[e.op]
            left, right = (self.value(o) if o.kind == N.Kind.TENSOR else ("number",) for o in (e.left, e.right))
            return self.operation((row.name, left, right), e, row.cost == "random")
        if isinstance(e, N.UnaryOp):
            operand = self.value(e.operand)
            return operand if e.op == "+" else self.operation(("neg", operand), e)
        if isinstance(e, N.Call):
            return self.call(e)
        if isinstance(e, N.Compare):  # an opaque step of its own each time
            for o in e.operands:
                self.value(o)
            return self.operation(self.counter.unique(), e)
        if isinstance(e, N.Subscript):
            return self.subscript(e)
        raise _Unknown

    def name(self, e: N.Name) -> Value:
        if e.ref == N.Ref.LOCAL and e.id in self.env:
            return self.env[e.id]
        if e.ref in (N.Ref.INPUT, N.Ref.PARAM, N.Ref.BUFFER) and (leaf := self.leaves.get(e.id)) is not None:
            return leaf
        raise _Unknown

    def operation(self, key: Value, e: N.Expr, random: bool = False) -> Value:
        key = (*key, self.counter.unique()) if random else key  # a draw is never shared
        return self.counter.operation(key, self.at(e.span), self.origin)

    def call(self, e: N.Call) -> Value:
        if (results := self.called(e)) is not None:
            if len(results) != 1:
                raise _Unknown
            return results[0]
        op = OPS.get(e.func)
        if op is None:
            raise _Unknown  # a callable argument's call: refused or dropped by the plan
        # The operands alone make the key (numbers, positions and names left out): coarser than the tape's,
        # so never counting one operation twice
        operands: list[Value] = []
        for a in [*e.args, *(k.value for k in e.kwargs)]:
            if isinstance(a, N.ListExpr):
                operands += [self.value(i) for i in a.items if i.kind == N.Kind.TENSOR]
            elif isinstance(a, N.Name) and a.id in self.lists:
                operands += self.lists[a.id]
            elif a.kind == N.Kind.TENSOR:
                operands.append(self.value(a))
        return self.operation((op.name, frozenset(operands)), e, op.cost == "random")

    def subscript(self, e: N.Subscript) -> Value:
        if isinstance(e.value, N.Name) and e.value.id in self.lists:  # an item of a list an unrolled loop made
            at = self._number(e.items[0]) if len(e.items) == 1 and isinstance(e.items[0], N.Expr) else None
            items = self.lists[e.value.id]
            if not isinstance(at, int) or not -len(items) <= at < len(items):
                raise _Unknown
            return items[at]
        value = self.value(e.value)
        if all(isinstance(i, N.EllipsisItem) or _whole(i) for i in e.items):
            return value
        parts: list[Value] = []
        for item in e.items:
            if isinstance(item, N.Slice):
                parts.append(("slice", *(self._number(b) if b is not None else None for b in _bounds(item))))
            elif isinstance(item, N.Expr):
                parts.append(self.value(item))
            else:
                parts.append(("...",))
        return self.operation(("subscript", value, *parts), e)

    # -- a sub's call

    def called(self, e: N.Call) -> list[Value] | None:
        """The values a call of a sub returns (its forward run), or None where `e` calls no sub."""
        if e.func in self.bound:
            sub, index = self.bound[e.func]
        elif e.sub and (found := self._subs().get(e.func)) is not None:
            if found.repeat is not None:
                raise _Unknown
            sub, index = found, -1
        else:
            return None
        if sub.given is not None:
            raise _Unknown  # a held layer argument: its layer's arguments are known when forward runs
        shown = sub.name if index < 0 else f"{sub.name}[{index}]"
        loop: dict[str, object] = {sub.repeat.var.id: index} if sub.repeat is not None and index >= 0 else {}
        args = [self.value(a) if a.kind == N.Kind.TENSOR else None for a in e.args]
        return self.module(sub.call, e, shown, loop, args, e.kwargs)

    def module(
        self,
        built: N.Call,
        call: N.Call,
        shown: str,
        loop: dict[str, object],
        args: list[Value | None],
        kwargs: list[N.Keyword],
    ) -> list[Value]:
        """The values the module `built` returns when `call` calls it (an nn.Sequential: its items in turn)."""
        if built.func == "nn.Sequential":
            if kwargs:
                raise _Unknown
            items = [item for item in built.args if isinstance(item, N.Call)]
            values = args
            for k, item in enumerate(items):
                values = list(self.module(item, call, f"{shown}[{k}]", loop, values, []))
            return [v for v in values if v is not None]
        layer = torch_nn_layer(built.func) if built.func.startswith("nn.") else self.layers.get(built.func)
        if layer is None or layer.forward is None or layer.backward is not None:
            raise _Unknown  # the inliner refuses it
        fwd = layer.forward
        passed = {i.name: v for i, v in zip(fwd.inputs, args) if v is not None}
        passed |= {k.name: self.value(k.value) for k in kwargs if k.value.kind == N.Kind.TENSOR}
        for i in fwd.inputs:
            if i.parts is not None or i.alternatives is not None or i.flag is not None:
                raise _Unknown
        known = self._arguments(layer, built, loop)
        here = layer.path == self.layer.path
        outer = self.at

        def at(span: Span) -> Span:  # another file's lines: the inliner writes them at the call
            return outer(span if here else call.span)

        origin = self.origin or (
            f"the sub '{shown}'" if here else f"the sub '{shown}', whose layer {layer.name} is in {layer.path}"
        )
        leaves: dict[str, Value | None] = dict(passed)
        path = (*self.path, shown)
        return _Run(layer, self.layers, self.counter, leaves, known, at, origin, path, self.unrolled).forward()

    def _arguments(self, layer: N.Layer, built: N.Call, loop: dict[str, object]) -> dict[str, object]:
        """The sub's arguments and lets that are numbers known before forward runs."""
        caller = {**self.known, **loop}
        given = dict(zip([a.name for a in layer.args], built.args)) | {k.name: k.value for k in built.kwargs}
        known: dict[str, object] = {}
        for a in layer.args:
            value = None
            try:
                if a.name in given:
                    value = evaluate(given[a.name], caller)
                elif a.default is not None:
                    value = evaluate(a.default, known)
            except _NOT_A_NUMBER:
                continue
            if value is not None:
                known[a.name] = value
        for let in layer.lets:
            try:
                known[let.name] = evaluate(let.value, known)
            except _NOT_A_NUMBER:
                continue
        return known


def _on_arguments(cond: N.Expr) -> bool:
    """Whether `cond` reads only the layer's arguments and lets (and constants)."""
    return any(isinstance(n, N.Name) for n in walk(cond)) and reads_only_arguments(cond)


def _range(bounds: list[N.Expr], known: Mapping[str, object]) -> range | None:
    try:
        values = [evaluate(b, known) for b in bounds]
    except _NOT_A_NUMBER:
        return None
    if not all(isinstance(b, int) and not isinstance(b, bool) for b in values):
        return None
    return range(*values)


def _whole(item: N.SubscriptItem) -> bool:
    return isinstance(item, N.Slice) and item.lower is None and item.upper is None and item.step is None


def _bounds(item: N.Slice) -> list[N.Expr | None]:
    return [item.lower, item.upper, item.step]
