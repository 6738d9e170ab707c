"""A `@function` layer whose forward only calls its subs, planned as those calls of the subs' Functions.

A stack of copies of a layer (torch's TransformerEncoder: `for block in layers { output = block(output,
mask) }`, then `norm` if given) cannot always be derived as one forward: once its sub is inlined, the loop's
body holds the layer's `if`s on arguments, ranks and dtypes (hundreds of ways), and a loop's body is
derived as one straight plan. The sub's layer alone derives (its own plan takes each `if` as a segment).
So, where every sub such a forward calls is a `@function` layer whose backward derives, the layer's
Function composes theirs instead of inlining them: a step of its forward runs the sub's Function's
forward (as `apply` would, without recording), keeping the context that Function's backward reads, one
per call and per copy; its backward runs the subs' backwards in reverse, each given the gradients of its
outputs, and hands each sub's input gradients to the value it was called on. What each call saves goes
through the layer's own `save_for_backward`, and every output of every call is an output of the layer's
Function: double backward goes through the subs' derived backwards, which are written in differentiable
operations.

The forward is planned as its statements, in order: `x = y` (a value named again), `x = sub(a, b)`,
`for block in layers { x = block(x, a) }` (a list of subs: one call per copy, `x` carried), `if norm !=
none { x = norm(x) }` (a sub holding an optional layer argument), and `return x` or `return sub(a, b)`.
A call passes values by name (or none), one per input of the sub's forward, in order. Anything else is
not composed: `composed_plan` returns None, and the layer's own refusal stands.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from layerdsl.autodiff.copied_layers import none_test
from layerdsl.autodiff.tape import NotDerivable
from layerdsl.ir import nodes as N
from layerdsl.language.naming import fresh_name


def function_name(layer_name: str) -> str:
    """The Function class of a `@function` layer."""
    return f"{layer_name}Function"


@dataclass(frozen=True)
class Alias:
    """`target = source`: a value named again."""

    target: str
    source: str


@dataclass(frozen=True)
class SubCall:
    """`target = sub(inputs)`: the sub's Function run on the values `inputs` (None: an input left out)."""

    target: str
    sub: str  # the sub's name: `layers`, `norm`, `encoder`
    layer: N.Layer  # its layer, a `@function` layer that derives
    inputs: tuple[str | None, ...]  # one per input of its forward
    composed: CallPlan | None  # its own plan, where it composes its subs' Functions too
    copies: bool = False  # `for block in layers`: one call per item, `target` carried
    optional: bool = False  # `if norm != none`: called when the sub is given


@dataclass
class CallPlan:
    """The plan of a forward that only calls its subs: its steps in order, and the value it returns."""

    layer: N.Layer
    inputs: list[str]  # the forward's inputs, in order
    steps: list[Alias | SubCall]
    result: str

    @property
    def calls(self) -> list[SubCall]:
        return [s for s in self.steps if isinstance(s, SubCall)]


def composed_plan(
    layer: N.Layer, layers: Mapping[str, N.Layer], derives: Callable[[N.Layer], bool], assumed: bool = False
) -> CallPlan | None:
    """The plan of `layer` as calls of its subs' Functions, or None where its forward is not only such calls
    or a sub it calls is not a `@function` layer that `derives` (its own plan, inlined or composed);
    `assumed`: as if every layer it calls were `@function`."""
    fwd = layer.forward
    if fwd is None or layer.backward is not None or not _plain_inputs(fwd):
        return None
    subs = {s.name: s for s in layer.subs}
    inputs = [i.name for i in fwd.inputs]
    steps: list[Alias | SubCall] = []
    for k, stmt in enumerate(fwd.body):
        last = k == len(fwd.body) - 1
        if isinstance(stmt, N.Return) and last and len(stmt.values) == 1:
            value = stmt.values[0]
            if isinstance(value, N.Name) and value.ref in (N.Ref.INPUT, N.Ref.LOCAL):
                return _named_apart(CallPlan(layer, inputs, steps, value.id))
            out = fresh_name("out", {*inputs, *(s.target for s in steps)})
            call = _call(value, out, subs, layers, derives, fwd, assumed)
            return _named_apart(CallPlan(layer, inputs, [*steps, call], out)) if call is not None else None
        step = _step(stmt, subs, layers, derives, fwd, assumed)
        if step is None:
            return None
        steps.append(step)
    return None


def _named_apart(plan: CallPlan) -> CallPlan | None:
    """`plan`, where it calls a sub. What the Function adds for itself is named around the plan's values
    (`codegen.function_sub_calls`), so no name of the spec stops it."""
    return plan if plan.calls else None


def _step(
    stmt: N.Stmt,
    subs: dict[str, N.Sub],
    layers: Mapping[str, N.Layer],
    derives: Callable[[N.Layer], bool],
    fwd: N.Forward,
    assumed: bool,
) -> Alias | SubCall | None:
    if isinstance(stmt, N.Assign):
        if isinstance(stmt.value, N.Name) and stmt.value.ref in (N.Ref.INPUT, N.Ref.LOCAL):
            return Alias(stmt.target, stmt.value.id)
        return _call(stmt.value, stmt.target, subs, layers, derives, fwd, assumed)
    if isinstance(stmt, N.For) and isinstance(stmt.iter, N.Name) and len(stmt.body) == 1:
        sub = subs.get(stmt.iter.id)
        inner = stmt.body[0]
        if sub is None or sub.repeat is None or not isinstance(inner, N.Assign):
            return None
        if not (isinstance(inner.value, N.Call) and inner.value.func == stmt.var):
            return None
        call = _call(inner.value, inner.target, subs, layers, derives, fwd, assumed, sub)
        if call is None or call.composed is not None or inner.target not in call.inputs:
            return None  # a copy's Function takes a fixed number of members; the loop carries its value
        return SubCall(call.target, sub.name, call.layer, call.inputs, None, copies=True)
    if isinstance(stmt, N.If) and not stmt.orelse and len(stmt.body) == 1 and isinstance(stmt.body[0], N.Assign):
        test = none_test(stmt.cond)
        inner = stmt.body[0]
        if test is None or not test[1] or not isinstance(inner.value, N.Call) or inner.value.func != test[0]:
            return None
        sub = subs.get(test[0])
        if sub is None or sub.given is None:
            return None
        call = _call(inner.value, inner.target, subs, layers, derives, fwd, assumed)
        if call is None or call.composed is not None:
            return None
        return SubCall(call.target, call.sub, call.layer, call.inputs, None, optional=True)
    return None


def _call(
    e: N.Expr,
    target: str,
    subs: dict[str, N.Sub],
    layers: Mapping[str, N.Layer],
    derives: Callable[[N.Layer], bool],
    fwd: N.Forward,
    assumed: bool,
    item_of: N.Sub | None = None,
) -> SubCall | None:
    """`target = e`, `e` a call of a sub (of an item of `item_of`) passing values by name."""
    if not isinstance(e, N.Call) or e.kwargs:
        return None
    sub = item_of if item_of is not None else subs.get(e.func)
    if sub is None or (item_of is None and (sub.repeat is not None or sub.given is not None and sub.copied)):
        return None
    layer = layers.get(sub.call.func)
    if layer is None or layer.forward is None or not (layer.is_function or assumed) or not _plain_inputs(layer.forward):
        return None
    taken = layer.forward.inputs
    if len(e.args) > len(taken) or any(not i.optional for i in taken[len(e.args) :]):
        return None
    passed: list[str | None] = []
    for a in e.args:
        if isinstance(a, N.NoneLit):
            passed.append(None)
        elif isinstance(a, N.Name) and a.ref in (N.Ref.INPUT, N.Ref.LOCAL):
            passed.append(a.id)
        else:
            return None
    passed += [None] * (len(taken) - len(e.args))
    if not _single_output(layer.forward):
        return None
    composed = composed_plan(layer, layers, derives, assumed)
    if composed is None and not derives(layer):
        return None
    return SubCall(target, sub.name, layer, tuple(passed), composed)


def _plain_inputs(fwd: N.Forward) -> bool:
    """Inputs that are each one tensor, passed as they are (no tuple, flag, alternative or int tuple)."""
    return all(i.parts is None and i.alternatives is None and i.flag is None and not i.takes_ints for i in fwd.inputs)


def _single_output(fwd: N.Forward) -> bool:
    if fwd.outputs is not None:
        return len(fwd.outputs) == 1 and not fwd.optional_outputs
    return all(len(s.values) == 1 for s in fwd.body if isinstance(s, N.Return))


def save_inputs_refused(plan: CallPlan) -> NotDerivable | None:
    """The refusal of `@function(save = "inputs")` on a layer whose Function composes its subs': each call
    saves what its own layer's Function saves (rerunning the calls in backward is not written yet), so the
    policy would not be taken. Located at the `save = ...` argument; None where it is not written."""
    dec = plan.layer.decorator("function")
    save = next((k for k in dec.kwargs if k.name == "save"), None) if dec is not None else None
    if save is None or getattr(save.value, "value", None) != "inputs":
        return None
    names = [c.layer.name for c in _once_per_layer(plan)]
    theirs = f"{names[0]}'s" if len(names) == 1 else "theirs"
    return NotDerivable(
        save.span,
        f"save = \"inputs\" is not taken by '{plan.layer.name}', whose Function runs {theirs} (of"
        f" {' and '.join(names)}): each call saves what its own layer's Function saves",
        f'drop `save = "inputs"` here; {" or ".join(names)} may take it (a call of it then saves only its inputs'
        " and parameters, and runs its forward again in backward)",
    )


def _once_per_layer(plan: CallPlan) -> list[SubCall]:
    """The calls of `plan` and of the plans it composes that run a Function of their own, each layer once."""
    out: dict[str, SubCall] = {}
    for call in plan.calls:
        for c in _once_per_layer(call.composed) if call.composed is not None else [call]:
            out.setdefault(c.layer.name, c)
    return list(out.values())


def functions_to_add(plan: CallPlan) -> list[str]:
    """The layers a plan made `assumed` calls that are not `@function` (its composed calls' too), in order."""
    names: list[str] = []
    for call in plan.calls:
        more = [call.layer.name] if not call.layer.is_function else []
        more += functions_to_add(call.composed) if call.composed is not None else []
        names += [n for n in more if n not in names]
    return names
