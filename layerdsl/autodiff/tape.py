"""The tape: a `@function` layer's forward as single operations (SSA), each an op-table row on named operands.

`Linearizer` walks forward's statements and binds every tensor operation to a step, keeping the spec's
local names for the steps that bind them; numbers computed from dims and arguments are kept as written.
What the derivation cannot go through is reported as `NotDerivable`, with its location; the Linearizer
records each such operation (`Linearizer.problems`) and goes on with its result as an opaque value, so one
run reports every independent one.
"""

from __future__ import annotations

import builtins
import itertools
from dataclasses import dataclass, field

from layerdsl.autodiff.formulas import parse_default
from layerdsl.autodiff.sub_requires import as_check
from layerdsl.autodiff.unpack_checks import PartsCheck, parts_check
from layerdsl.diagnostics import Span
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import walk
from layerdsl.language.ops import CALLABLE, OPERATORS, OPS, Op, Param
from layerdsl.language.tables import GENERATED_API, GENERATED_BUILTINS, GENERATED_IMPORTS
from layerdsl.semantics.evaluate import NotConstant, evaluate
from layerdsl.semantics.shapes import dim_text

LOWERED = ("einsum", "permute", "align")  # ops that index notation lowers to


class NotDerivable(Exception):
    """Forward uses something the derivation cannot go through; carries the location and a message."""

    def __init__(self, span: Span, message: str, hint: str = "write `backward(grad_y) { grad x = ... }`"):
        super().__init__(message)
        self.span = span
        self.message = message
        self.hint = hint
        self.others: list[NotDerivable] = []  # further independent problems of the same layer

    def every(self) -> list[NotDerivable]:
        """This problem and the others it carries, in the order they were found."""
        return [self, *(p for other in self.others for p in other.every())]


def refusal(problems: list[NotDerivable]) -> NotDerivable:
    """One exception carrying every problem of `problems` (at least one) once each, in order."""
    seen: set[tuple[int, int, str]] = set()
    unique: list[NotDerivable] = []
    for p in (q for problem in problems for q in problem.every()):
        if (p.span.line, p.span.col, p.message) not in seen:
            seen.add((p.span.line, p.span.col, p.message))
            unique.append(p)
    first = NotDerivable(unique[0].span, unique[0].message, unique[0].hint)
    first.others = [NotDerivable(p.span, p.message, p.hint) for p in unique[1:]]
    return first


@dataclass(eq=False)
class Step:
    """`var = op(args)`: one operation of the forward."""

    var: str
    op: Op | None  # None: a non-differentiable computation (comparisons) kept as written
    args: dict[str, N.Expr]  # op parameter -> operand (a Name of a var, or a constant expression)
    expr: N.Expr  # the step as one IR expression over operand names
    guard: str | None = None  # an optional member: when it is None the step is `var = base`
    base: str | None = None
    conj_result: bool = False  # formulas read `result` conjugated (a complex value: `autodiff.reverse`)
    by_mask: bool = False  # an index by a bool mask: its result's length is data (no static shape)

    @property
    def costly(self) -> bool:
        return self.op is not None and self.op.cost == "costly"

    @property
    def reads(self) -> set[str]:
        """The names the step reads: in its expression and operands, and an optional member's guard and base."""
        found = {n.id for e in (self.expr, *self.args.values()) for n in walk(e) if isinstance(n, N.Name)}
        return found | {v for v in (self.base, self.guard) if v is not None}


@dataclass
class Tape:
    """The forward as steps, with what the derivation and the emitter need to know about its names."""

    steps: list[Step]
    outputs: list[N.Expr]  # Names of vars (or inputs)
    leaves: list[str]  # inputs and tensors, in Function.apply order
    differentiable: set[str]  # leaves that can have a gradient
    env: dict[str, str] = field(default_factory=dict)  # spec local -> the var holding its final value
    numbers: list[tuple[str, N.Expr]] = field(default_factory=list)  # number locals, computed as written
    # Static shapes of leaves and steps (`autodiff.shapes`); empty until the plan stage infers them.
    shapes: dict[str, tuple | None] = field(default_factory=dict)
    # `update b = ...`: each buffer -> the var holding its new value, which the Function returns (not
    # differentiable) and the module writes into the buffer (`codegen.function_buffers`).
    updates: dict[str, str] = field(default_factory=dict)
    # The subs' `require`s the Function checks (`autodiff.sub_requires`), on the vars whose shapes they test.
    checks: list[N.Require] = field(default_factory=list)

    # `step`'s index: the list it was built from, its length then, and each var's first step. Passes
    # replace the steps (a new list, `dataclasses.replace`) or append to them; either rebuilds it. (Steps
    # are renamed only while linearizing, before the tape exists.)
    _indexed: tuple[list[Step], int, dict[str, Step]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def step(self, var: str) -> Step | None:
        """The step binding `var` (None for a leaf or a name the tape does not bind)."""
        indexed = self._indexed
        if indexed is None or indexed[0] is not self.steps or indexed[1] != len(self.steps):
            by_var: dict[str, Step] = {}
            for s in self.steps:
                by_var.setdefault(s.var, s)
            indexed = self._indexed = (self.steps, len(self.steps), by_var)
        found = indexed[2].get(var)
        if found is not None and found.var != var:  # a step renamed since: look again
            self._indexed = None
            return self.step(var)
        return found


def reserved_names(layer: N.Layer) -> set[str]:
    """Names a value of the Function never takes: the layer's arguments, members, lets, inputs and dims, its
    number locals, the names of its backward block, and module-level names."""
    assert layer.forward is not None
    taken = {a.name for a in layer.args} | {t.name for t in layer.tensors} | {l.name for l in layer.lets}
    taken |= {i.name for i in layer.forward.inputs} | set(layer.symbolic_dims)
    taken |= {s.target for s in layer.forward.body if isinstance(s, N.Assign) and s.value.kind != "tensor"}
    if layer.backward is not None:
        taken |= {g for g, _ in layer.backward.grads}
        taken |= {s.target for s in layer.backward.body if isinstance(s, N.Assign)}
    taken |= GENERATED_IMPORTS | GENERATED_BUILTINS | GENERATED_API
    taken |= {n for n in dir(builtins) if not n.startswith("_")}  # a step named `sum` would shadow it
    return taken


class Linearizer:
    """Turns a layer's forward into a tape (`run`); `semantics.index_notation` adds its statements' steps."""

    def __init__(self, layer: N.Layer, optional: set[str], deriving: bool = True):
        if layer.forward is None:
            raise ValueError(f"layer '{layer.name}' has no forward")  # the parser reports it first
        self.deriving = deriving  # with a hand-written backward, ops without derivatives are fine
        self.layer = layer
        self.forward: N.Forward = layer.forward
        self.optional = optional
        self.steps: list[Step] = []
        # (op, the expression's key) -> the first unguarded step computing it: `add` computes each once
        self.computed: dict[tuple[str, str], Step] = {}
        self.drawn: set[str] = set()  # the steps drawn at random (`add` never shares them)
        self.env: dict[str, str] = {}  # spec local -> current var
        self.taken = reserved_names(layer)
        self.counter = itertools.count(1)
        self.numbers: list[tuple[str, N.Expr]] = []
        self.lists: dict[str, list[N.Expr]] = {}  # a list local (`outputs = []`) -> the vars appended to it
        self.updates: dict[str, str] = {}  # a buffer -> the var holding the value `update` gave it
        self.detached: dict[str, str] = {}  # a buffer -> its new value as later reads see it (no gradient)
        self.problems: list[NotDerivable] = []  # what could not be derived; its values went on as opaque
        self.checks: list[N.Require] = []  # the subs' `require`s on computed values (`Tape.checks`)

    def fresh(self, hint: str) -> str:
        name = hint
        while name in self.taken:
            name = f"{hint}{next(self.counter)}"
        self.taken.add(name)
        return name

    def run(self) -> Tape:
        fwd = self.forward
        outputs: list[N.Expr] = []
        for stmt in fwd.body:
            match stmt:
                case N.Assign(target=t, value=N.ListExpr(items=items) as v) if items and all(
                    i.kind != "tensor" for i in items
                ):
                    self.numbers.append((t, v))  # a list of numbers (fractional pooling's `[ratio, ratio]`)
                case N.Assign(target=t, value=N.ListExpr(items=items)):  # a list an unrolled loop appends to
                    self.lists[t] = [self.operand(i, "t") for i in items]
                case N.Append(target=t, value=v):
                    self.lists[t].append(self.operand(v, "t"))
                case N.Assign(target=t, value=v) if v.kind != "tensor":
                    self.numbers.append((t, v))  # a number (from dims and arguments): computed as written
                case N.Assign(target=t, value=v):
                    self.env[t] = self.value(v, hint=t, target=t)
                case N.Return(values=vs):
                    outputs = [B.name(self.value(v, hint="out")) if v.kind == "tensor" else v for v in vs]
                case N.If():  # a derived backward is planned per branch (`autodiff.plan`): a written one is not
                    raise NotDerivable(
                        stmt.span,
                        "a backward block cannot follow an `if` of forward (it is one straight-line backward)",
                        "leave the backward out: a derived backward follows the branch forward took",
                    )
                case N.Unpack(targets=targets, value=N.Call(func="chunk" | "split") as v) if v.func in OPS:
                    source = self.operand(v.args[0], "t")  # a name: each part slices it
                    if isinstance(source, N.Name) and source.ref == "local":
                        self.env.setdefault(source.id, source.id)  # a step's var, read as a local by the slices
                    for (t, _), part in zip(targets, _part_slices(v, source, len(targets))):
                        self.env[t] = self.value(part, hint=t, target=t)
                    if (parts := _parts_check(v, source, len(targets))) is not None:
                        self.checks.append(parts)  # the parts torch's call gives, where the shapes do not tell
                case N.Unpack(targets=[(result, _), (indices, _)], value=N.Call(func=func) as v) if (
                    func in OPS and OPS[func].with_indices
                ):
                    # `pooled, indices = max_pool2d_with_indices(...)`: the pooling step with its indices
                    # step, as a plain max_pool2d() makes them (one call computes both); the indices are
                    # an output of no gradient
                    base = N.Call(v.span, func.removesuffix("_with_indices"), v.func_span, v.args, v.kwargs)
                    base.kind = N.Kind.TENSOR
                    self.env[result] = self.value(base, hint=result, target=result)
                    step = self.step_of(self.env[result])
                    where = step.args.get("indices") if step is not None else None
                    assert isinstance(where, N.Name), "a max pooling step has its indices step"
                    self.env[indices] = where.id
                case N.Update(target=t, value=v):
                    self.updates[t] = self.updated_value(t, v)
                    self.detached.pop(t, None)
                case N.IndexAssign():
                    from layerdsl.semantics.index_notation import linearize_index_assign

                    self.env[stmt.target] = linearize_index_assign(self, stmt)
                case N.Require() if (check := as_check(stmt, self.env)) is not None:
                    self.checks.append(check)  # a sub's, on a value computed here: the Function checks it
        leaves = [i.name for i in fwd.inputs] + [t.name for t in self.layer.tensors]
        diff = {i.name for i in fwd.inputs if i.dtype == "float"} | {t.name for t in self.layer.params}
        tape = Tape(self.steps, outputs, leaves, diff, env=dict(self.env), numbers=list(self.numbers))
        tape.updates = dict(self.updates)
        tape.checks = list(self.checks)
        return tape

    def updated_value(self, buffer: str, value: N.Expr) -> str:
        """The steps of `update buffer = value`: the buffer exists where the spec updates it, so its own
        optional members are read as given; later reads of the buffer read the new value."""
        read = {n.id for n in walk(value) if isinstance(n, N.Name) and n.ref == "buffer"}
        optional, self.optional = self.optional, self.optional - read - {buffer}
        try:
            return self.value(value, hint=buffer, target=f"new_{buffer}")
        finally:
            self.optional = optional

    def updated_buffer(self, buffer: str, span: Span) -> N.Name:
        """A read of `buffer` after its update: the new value, through a step no gradient flows back
        through, as the plain module reads it from the buffer it copied it into under no_grad."""
        var = self.detached.get(buffer)
        if var is None:
            var = self.fresh(buffer)
            self.steps.append(Step(var, None, {}, B.name(self.updates[buffer], span)))
            self.detached[buffer] = var
        return B.name(var, span)

    def value(self, e: N.Expr, hint: str = "t", target: str | None = None) -> str:
        """Emit steps computing `e`; return the var holding it (an input or param name for leaves). What
        cannot be derived is recorded, and the value goes on as opaque (later statements are checked too)."""
        try:
            operand = self.operand(e, "t")
        except NotDerivable as exc:
            self.problems.append(exc)
            return self.opaque(e, hint).id
        if isinstance(operand, N.Name) and operand.ref in ("local",) and target is None:
            return operand.id
        if isinstance(operand, N.Name):
            if (
                target is not None
                and operand.id != target
                and operand.ref == "local"
                and self._is_fresh_step(operand.id)
            ):
                self.steps[-1].var = self.fresh(target)  # the last step is this local's value: name it so
                return self.steps[-1].var
            return operand.id
        raise NotDerivable(e.span, "forward returns or binds a number, not a tensor")

    def _is_fresh_step(self, var: str) -> bool:
        collected = {v.id for items in self.lists.values() for v in items if isinstance(v, N.Name)}
        return bool(self.steps) and self.steps[-1].var == var and var not in {*self.env.values(), *collected}

    def operand(self, e: N.Expr, hint: str) -> N.Expr:
        if e.kind != "tensor":
            return e  # a number: an argument, let, dim or literal
        match e:
            case N.Name(id=i, ref=ref):
                if ref == "local":
                    return B.name(self.env[i], e.span)
                if (
                    ref == "buffer" and i in self.updates
                ):  # read after its update (or an earlier segment's): the new value
                    return self.updated_buffer(i, e.span)
                return B.name(i, e.span, ref)
            case N.BinOp(op=op, left=l, right=r):
                row = OPERATORS[op]
                return self.add(
                    row,
                    {"input": self.operand(l, hint), "other" if op != "**" else "exponent": self.operand(r, hint)},
                    hint,
                    e,
                )
            case N.UnaryOp(op="-", operand=o):
                return self.add(OPERATORS["neg"], {"input": self.operand(o, hint)}, hint, e)
            case N.UnaryOp(op="+", operand=o):
                return self.operand(o, hint)
            case N.Call(func=f) if f in CALLABLE or f in LOWERED:
                row = OPS[f]
                args: dict[str, N.Expr] = {}
                for p, a in zip(row.params, e.args):
                    if p.tensors and isinstance(a, N.Name) and a.id in self.lists:  # its items are vars
                        args[p.name] = N.ListExpr(a.span, list(self.lists[a.id]))
                        args[p.name].kind = N.Kind.LIST
                        continue
                    if p.tensors and isinstance(a, N.ListExpr):
                        items = N.ListExpr(a.span, [self.operand(i, hint) for i in a.items])
                        items.kind = N.Kind.LIST
                        args[p.name] = items
                        continue
                    args[p.name] = self.operand(a, hint) if (p.tensor or p.tensors) else a
                tensor_params = {p.name for p in row.params if p.tensor or p.tensors}
                for k in e.kwargs:
                    args[k.name] = self.operand(k.value, hint) if k.name in tensor_params else k.value
                for p in row.params:
                    if p.name not in args and p.default is not None:
                        args[p.name] = parse_default(p.default)
                if f == "align":
                    return self.add(row, args, hint, e, items=e.items)
                if f == "cross_entropy" and self.deriving:
                    return self._cross_entropy(args, hint, e)
                if f == "dropout" and self.deriving:  # the mask is drawn once, saved, and applied
                    keep = self.add(OPS["dropout_mask"], {"input": args["input"], "p": args["p"]}, "keep", e)
                    return self.add(OPS["dropout_apply"], {**args, "mask": keep}, hint, e)
                if f == "linear_cross_entropy" and self.deriving:
                    return self._linear_cross_entropy(args, hint, e)
                if f"{f}_indices" in OPS and self.deriving:  # the maxima's indices: computed with them, saved
                    where = self.add(OPS[f"{f}_indices"], args, "argmax", e)
                    return self.add(row, {**args, "indices": where}, hint, e)
                if row.statistics and self.deriving:  # computed with the result, saved (layer_norm's mean, rstd)
                    stats = {k: self.add(OPS[f"{f}_{k}"], args, k, e) for k in row.statistics}
                    return self.add(row, {**args, **stats}, hint, e)
                if f == "pad" and self.deriving:
                    if isinstance(args["mode"], N.Str) and args["mode"].value == "circular":
                        args["pad"] = _listed_widths(args["pad"], self.layer)
                    _check_pad_mode(args, e)
                return self.add(row, args, hint, e)
            case N.Compare(ops=ops, operands=operands):
                new = N.Compare(e.span, ops, [self.operand(o, hint) for o in operands])
                new.kind = N.Kind.TENSOR
                return self.opaque(new, hint)
            case N.Subscript(value=N.Name(id=i), items=[N.Expr() as at]) if i in self.lists:
                return self.lists[i][self._list_position(at)]
            case N.Subscript(value=v, items=items):
                return self.subscript(self.operand(v, hint), items, hint, e)
            case N.Call(func=f):
                raise NotDerivable(
                    e.func_span,
                    f"a derived backward cannot go through '{f}' (a sub-layer: its forward is not on the tape)",
                )
        raise NotDerivable(e.span, "a derived backward cannot go through this expression")

    def _linear_cross_entropy(self, args: dict[str, N.Expr], hint: str, source: N.Call) -> N.Name:
        """`linear_cross_entropy(x, w, t, linear_bias = b, ...)` as what it computes, whose rows derive:
        `cross_entropy(x @ transpose(w, 0, 1) + b, t, ...)` (the logits whole: `options` chunks the same
        values, to save memory, which a Function that keeps what its backward reads does not)."""
        weight = args["linear_weight"]
        declared = self._declared_shape(weight)
        rank = None if declared is None else len(declared)
        class_dims = self._spread_class_dims(weight) if rank is None else None
        if class_dims is not None:
            logits = self._flat_logits(args, class_dims, source)
        elif rank is None or rank < 2:
            raise NotDerivable(
                source.span,
                "linear_cross_entropy() is derived for a linear_weight declared with its dims written out,"
                " [classes, features] or [classes, d1, ..., features] (a K-dimensional loss), or reshaped to"
                " [classes, *out_features, features]",
                "declare the weight's dims without `...`, reshape it to its dims, or write a backward block",
            )
        elif rank == 2:
            transposed = self.add(
                OPS["transpose"], {"input": weight, "dim0": B.num(0), "dim1": B.num(1)}, "w_t", source
            )
            logits = self.add(OPERATORS["@"], {"input": args["input"], "other": transposed}, "logits", source)
        else:  # [N, features] and [classes, d1, ..., dK, features]: logits [N, classes, d1, ..., dK]
            dims = "cdefghjklm"[: rank - 1]
            equation = N.Str(source.span, f"ni,{dims}i->n{dims}")
            equation.kind = N.Kind.STR
            operands = N.ListExpr(source.span, [args["input"], weight])
            operands.kind = N.Kind.LIST
            logits = self.add(OPS["einsum"], {"equation": equation, "operands": operands}, "logits", source)
        if class_dims is None and not isinstance(args["linear_bias"], N.NoneLit):
            logits = self.add(OPERATORS["+"], {"input": logits, "other": args["linear_bias"]}, "logits", source)
        ignore_index = self._ignored_class(args["ignore_index"])
        loss = {"input": logits, "target": args["target"], "weight": args["weight"], "ignore_index": ignore_index}
        loss |= {k: args[k] for k in ("reduction", "label_smoothing")}
        return self._cross_entropy(loss, hint, source)

    def _ignored_class(self, ignore_index: N.Expr) -> N.Expr:
        """linear_cross_entropy's `ignore_index` as cross_entropy takes it: none is -100 (torch's default), an
        argument that may be none a number local computed once (`ignore_index if ... else -100`)."""
        if isinstance(ignore_index, N.NoneLit):
            return parse_default("-100")
        if not (isinstance(ignore_index, N.Name) and ignore_index.ref == N.Ref.ARG):
            return ignore_index
        if not any(a.name == ignore_index.id and a.maybe_none for a in self.layer.args):
            return ignore_index
        given = N.Compare(ignore_index.span, ["!="], [ignore_index, N.NoneLit(ignore_index.span)])
        given.kind = N.Kind.BOOL
        chosen = N.IfExp(ignore_index.span, given, ignore_index, parse_default("-100"))
        chosen.kind = N.Kind.INT
        local = self.fresh("ignored_class")
        self.numbers.append((local, chosen))
        number = B.name(local, ignore_index.span)
        number.kind = N.Kind.INT
        return number

    def _cross_entropy(self, args: dict[str, N.Expr], hint: str, source: N.Call) -> N.Name:
        """`cross_entropy(input, ...)` as the loss over `class_log_softmax(input)`, computed once and saved (an
        expert's form); a class weight needing a gradient keeps the op whole (its row then refuses it)."""
        weight = args.get("weight")
        if isinstance(weight, N.Name) and self._needs_grad(weight):
            return self.add(OPS["cross_entropy"], args, hint, source)
        log_probs = self.add(OPS["class_log_softmax"], {"input": args["input"]}, "log_probs", source)
        return self.add(OPS["cross_entropy_of_log_probs"], {**args, "input": log_probs}, hint, source)

    def _spread_class_dims(self, weight: N.Expr) -> N.ListExpr | None:
        """`[classes, *out_features]` of a weight reshaped to `[classes, *out_features, features]` (its rank
        known only at construction); None for a weight of another origin."""
        shape = self._reshaped_to(weight)
        if shape is None or len(shape.items) < 2 or isinstance(shape.items[-1], N.Spread):
            return None
        class_dims = N.ListExpr(shape.span, shape.items[:-1])
        class_dims.kind = N.Kind.LIST
        return class_dims

    def _reshaped_to(self, tensor: N.Expr) -> N.ListExpr | None:
        """The list a `reshape(x, [...])` step gave `tensor`, None if it is not one."""
        step = self.step_of(tensor.id) if isinstance(tensor, N.Name) else None
        shape = step.args.get("shape") if step is not None and step.op is OPS["reshape"] else None
        return shape if isinstance(shape, N.ListExpr) else None

    def _flat(self, tensor: N.Expr, dims: int, source: N.Call) -> N.Expr:
        """`tensor` as `dims` dims, its leading ones merged into one (the weight as `[classes * d1 * ... * dK,
        features]`, the bias as `[classes * d1 * ... * dK]`): the tensor it was reshaped from where that is
        declared so already (a Linear's weight and bias: no view), else flattened."""
        step = self.step_of(tensor.id) if isinstance(tensor, N.Name) else None
        shape = self._reshaped_to(tensor)
        if step is not None and shape is not None:
            origin = step.args["input"]
            declared = self._declared_shape(origin)
            kept = shape.items[len(shape.items) - (dims - 1) :]  # the dims not merged: the weight's features
            if declared is not None and len(declared) == dims and declared[1:] == tuple(map(dim_text, kept)):
                return origin
        merged = {"input": tensor, "start_dim": B.num(0), "end_dim": B.num(-dims)}
        return self.add(OPS["flatten"], merged, f"flat_{'weight' if dims == 2 else 'bias'}", source)

    def _flat_logits(self, args: dict[str, N.Expr], class_dims: N.ListExpr, source: N.Call) -> N.Name:
        """The logits of `linear_cross_entropy` as torch computes them for a K-dimensional weight, K known only
        at construction (0 included): one matrix product with the weight `[classes * d1 * ... * dK, features]`
        (plus the bias `[classes * d1 * ... * dK]`), its last dim split into `[classes, d1, ..., dK]`."""
        weight = self._flat(args["linear_weight"], 2, source)
        transposed = self.add(OPS["transpose"], {"input": weight, "dim0": B.num(0), "dim1": B.num(1)}, "w_t", source)
        logits = self.add(OPERATORS["@"], {"input": args["input"], "other": transposed}, "logits", source)
        if not isinstance(args["linear_bias"], N.NoneLit):
            bias = self._flat(args["linear_bias"], 1, source)
            logits = self.add(OPERATORS["+"], {"input": logits, "other": bias}, "logits", source)
        return self.add(OPS["class_unflatten"], {"input": logits, "sizes": class_dims}, "logits", source)

    def _declared_shape(self, tensor: N.Expr) -> tuple[str, ...] | None:
        """The dims an input or parameter is declared with, as the shape engine writes them (None: not a
        leaf, or declared with `...` or a spread)."""
        shapes = {i.name: i.shape for i in self.forward.inputs if not i.parts} | {
            t.name: t.shape for t in self.layer.tensors
        }
        shape = shapes.get(tensor.id) if isinstance(tensor, N.Name) else None
        if shape is None or shape.spread is not None or any(isinstance(d, N.EllipsisItem) for d in shape.dims):
            return None
        return tuple(dim_text(d) for d in shape.dims)

    def _list_position(self, at: N.Expr) -> int:
        """`outputs[T - 1 - t]` in an unrolled loop: the position, a number once `t` is written out."""
        try:
            return int(evaluate(at, {}))
        except NotConstant:
            raise NotDerivable(
                at.span, "a derived backward picks from a list at positions known when generating"
            ) from None

    def subscript(self, value: N.Expr, items: list[N.SubscriptItem], hint: str, source: N.Expr) -> N.Expr:
        """`x[a:b, i, none]` as one step per dim it changes (a slice, a select, an unsqueeze): items before
        a `...` count dims from the front, the ones after it from the back."""
        tensors = [k for k, i in enumerate(items) if isinstance(i, N.Expr) and i.kind == "tensor"]
        if tensors:
            return self._index_by_tensor(value, items, tensors, hint, source)
        ell = next((k for k, i in enumerate(items) if isinstance(i, N.EllipsisItem)), len(items))
        dim = 0
        for item in items[:ell]:
            value, dim = self._index_one(value, item, dim, hint, source)
        dim = -1
        for item in reversed(items[ell + 1 :]):
            value, dim = self._index_one(value, item, dim, hint, source)
        return value

    def _index_by_tensor(
        self, value: N.Expr, items: list[N.SubscriptItem], tensors: list[int], hint: str, source: N.Expr
    ) -> N.Expr:
        """`x[idx]`, `x[:, idx]`, `x[..., idx]`: one index tensor, whole dims (`:`, `...`) elsewhere; slices and
        ints of other dims (`x[idx, 1:]`, `x[:, 0, idx]`) are taken first (`_basic_items_first`)."""
        whole = all(isinstance(i, N.EllipsisItem) or _whole(i) for k, i in enumerate(items) if k not in tensors)
        if not whole:
            value, items, tensors = self._basic_items_first(value, items, tensors, hint, source)
        if len(tensors) > 1:
            return self._index_by_tensors(value, items, tensors, hint, source)
        k = tensors[0]
        ell = next((j for j, i in enumerate(items) if isinstance(i, N.EllipsisItem)), None)
        dim = k if ell is None or k < ell else k - len(items)
        index = self.operand(items[k], hint)  # type: ignore[arg-type]
        picked = self.add(OPS["index"], {"input": value, "dim": B.num(dim), "index": index}, hint, source)
        if _bool_mask(items[k], self.forward.inputs):  # how many elements it picks is data: no static shape
            step = self.step_of(picked.id)
            if step is not None:
                step.by_mask = True
        return picked

    def _basic_items_first(
        self, value: N.Expr, items: list[N.SubscriptItem], tensors: list[int], hint: str, source: N.Expr
    ) -> tuple[N.Expr, list[N.SubscriptItem], list[int]]:
        """`x[idx, 1:]` as `x[:, 1:][idx, :]`, `x[:, 0, idx]` as `x[:, 0][:, idx]`: the slices and ints of a
        subscript with index tensors, each a step of its own, then the tensors with `:` for the rest. A slice
        commutes with the index; an int does when it is next to the tensors (torch then puts the picked dims
        where the tensors are, as after the select), so ints elsewhere are refused."""
        mask = next((k for k in tensors if _bool_mask(items[k], self.forward.inputs)), None)
        if mask is not None:  # it indexes as many dims as it has: which dim each item has is data
            raise NotDerivable(
                items[mask].span,
                "a derived backward goes through index tensors with `:` or `...` for the other dims when one is"
                " a bool mask; index the other dims in a statement of their own",
            )
        ints = [k for k, i in enumerate(items) if isinstance(i, N.Expr) and k not in tensors]
        advanced = sorted(ints + tensors)
        unsqueezed = next((i for i in items if isinstance(i, N.NoneLit)), None)
        if unsqueezed is not None or (ints and advanced != list(range(advanced[0], advanced[-1] + 1))):
            raise NotDerivable(
                (unsqueezed or items[ints[0]]).span,
                "a derived backward goes through index tensors mixed with slices, and with ints only next to"
                " them (torch moves the picked dims to the front otherwise)",
                "index the other dims in a statement of their own (`y = x[1]`, then `y[:, idx]`)",
            )
        ell = next((j for j, i in enumerate(items) if isinstance(i, N.EllipsisItem)), len(items))
        dims = {k: k if k < ell else k - len(items) for k in range(len(items)) if k != ell}
        for k, item in enumerate(items):  # a slice keeps its dim: every dim keeps its number
            if isinstance(item, N.Slice) and not _whole(item):
                value, _ = self._index_one(value, item, dims[k], hint, source)
        # an int removes its dim: from the front the last first, from the back the first first
        for k in sorted(ints, key=lambda k: (dims[k] < 0, -dims[k] if dims[k] >= 0 else dims[k])):
            value, _ = self._index_one(value, items[k], dims[k], hint, source)
        whole = N.Slice(source.span, None, None, None)
        rest = [whole if isinstance(i, N.Slice) else i for k, i in enumerate(items) if k not in ints]
        return value, rest, [k for k, i in enumerate(rest) if isinstance(i, N.Expr) and i.kind == "tensor"]

    def _index_by_tensors(
        self, value: N.Expr, items: list[N.SubscriptItem], tensors: list[int], hint: str, source: N.Expr
    ) -> N.Expr:
        """`x[i, j]`, `x[:, i, j, :]`: several int index tensors side by side, after whole dims only."""
        ell = next((j for j, i in enumerate(items) if isinstance(i, N.EllipsisItem)), len(items))
        side_by_side = tensors == list(range(tensors[0], tensors[-1] + 1)) and tensors[-1] < ell
        masks = [k for k in tensors if _bool_mask(items[k], self.forward.inputs)]
        if not side_by_side or masks:
            raise NotDerivable(
                items[tensors[0] if side_by_side else tensors[-1]].span,
                "a derived backward goes through several index tensors when they are ints, side by side,"
                " before any `...`; index in two statements",
            )
        listed = N.ListExpr(source.span, [self.operand(items[k], hint) for k in tensors])  # type: ignore[arg-type]
        listed.kind = N.Kind.LIST
        return self.add(OPS["index_many"], {"input": value, "dim": B.num(tensors[0]), "indices": listed}, hint, source)

    def _index_one(self, value: N.Expr, item: N.SubscriptItem, dim: int, hint: str, source: N.Expr):
        """One item of a subscript at `dim`: the value it gives and the dim the next item indexes (the
        next one to the right from the front, to the left from the back)."""
        step = 1 if dim >= 0 else -1
        at = B.num(dim)
        if isinstance(item, N.NoneLit):
            return self.add(OPS["unsqueeze"], {"input": value, "dim": at}, hint, source), dim + step
        if isinstance(item, N.Slice):
            if item.lower is None and item.upper is None and item.step is None:
                return value, dim + step
            bounds = {"start": item.lower, "end": item.upper, "step": item.step}
            args: dict[str, N.Expr] = {"input": value, "dim": at}
            args |= {
                k: b if b is not None else parse_default("1" if k == "step" else "none") for k, b in bounds.items()
            }
            return self.add(OPS["slice"], args, hint, source), dim + step
        assert isinstance(item, N.Expr)  # an integer index: the dim goes, the next one takes its place
        return self.add(OPS["select"], {"input": value, "dim": at, "index": item}, hint, source), (dim)

    def add(
        self,
        op: Op,
        args: dict[str, N.Expr],
        hint: str,
        source: N.Expr,
        items: list[N.SubscriptItem] | None = None,
    ) -> N.Name:
        for pname, formula_text in op.grads.items():
            operand = args.get(pname)
            if (
                self.deriving
                and formula_text is None
                and isinstance(operand, N.Name)
                and operand.kind == "tensor"
                and self._needs_grad(operand)
            ):
                which = f" with respect to '{pname}'" if any(op.grads.values()) else ""  # a loss's class weight
                self.problems.append(
                    NotDerivable(
                        source.span,
                        f"{op.name}() has no derivative{which}; write a backward block (or mark a deliberate"
                        " surrogate with @surrogate)",
                    )
                )
                return self.opaque(_op_expr(op, args, source), hint)  # no gradient flows through it
        guard, base = None, None
        member = next((a for a in args.values() if isinstance(a, N.Name) and a.id in self.optional), None)
        if member is not None and op.operator in ("+", "-", "*", "/"):
            guard = member.id
            other = args["other"] if args["input"] is member else args["input"]
            base = other.id if isinstance(other, N.Name) else None
            if base is None or (op.operator in ("-", "/") and args["input"] is member):
                raise NotDerivable(
                    source.span, f"a derived backward needs the optional '{member.id}' on the right of {op.operator}"
                )
        expr = _op_expr(op, args, source)
        if items is not None:
            assert isinstance(expr, N.Call), "only align() takes items, and it is written as a call"
            expr.items = items
        # a random draw (dropout's mask, fractional pooling's windows) is drawn at each call, and what reads it
        # (the pooled values, whose expression does not show the windows) is computed from each draw
        fresh = (
            guard is not None
            or op.cost == "random"
            or any(isinstance(a, N.Name) and a.id in self.drawn for a in args.values())
        )
        if not fresh:  # the same operation on the same operands is computed once
            done = self.computed.get((op.name, B.key(expr)))
            if done is not None and done.op is op:
                return B.name(done.var, source.span)
        var = self.fresh(_hint_for(op, hint))
        self.steps.append(Step(var, op, args, expr, guard, base))
        if op.cost == "random":
            self.drawn.add(var)
        if not fresh:
            self.computed.setdefault((op.name, B.key(expr)), self.steps[-1])
        return B.name(var, source.span)

    def step_of(self, var: str) -> Step | None:
        return next((s for s in self.steps if s.var == var), None)

    def opaque(self, expr: N.Expr, hint: str) -> N.Name:
        var = self.fresh("mask")
        self.steps.append(Step(var, None, {}, expr))
        return B.name(var, expr.span)

    def _needs_grad(self, operand: N.Name) -> bool:
        diff = {i.name for i in self.forward.inputs if i.dtype == "float"} | {t.name for t in self.layer.params}
        if operand.id in diff:
            return True
        step = next((s for s in self.steps if s.var == operand.id), None)
        if step is None:
            return False
        return (
            any(isinstance(a, N.Name) and a.kind == "tensor" and self._needs_grad(a) for a in step.args.values())
            if step.op
            else False
        )


def _part_slices(call: N.Call, source: N.Expr, count: int) -> list[N.Expr]:
    """`a, b = chunk(x, 2, dim = d)` and `split(x, sizes, dim = d)` as one slice of x per name (whose
    gradients the slice rows give): `x[..., start:end]`, the last one running to the end."""
    words = {k.name: k.value for k in call.kwargs}
    cut = call.args[1] if len(call.args) > 1 else words.get("chunks", words.get("sizes"))
    dim = call.args[2] if len(call.args) > 2 else words.get("dim", B.num(0))
    assert cut is not None, "the checker checks the call's arguments"
    if isinstance(cut, N.ListExpr):
        sizes = list(cut.items)
    else:
        each = cut
        if call.func == "chunk":  # torch.chunk's parts: ceil(size / count) each, the last one shorter where
            # the checker could not tell the size divisible (a cat of a run-time loop's items)
            size = B.int_valued(N.Call(N.NOWHERE, "size_at", N.NOWHERE, [source, dim], []))
            less = (
                B.num(cut.value - 1) if isinstance(cut, N.Num) else B.int_valued(N.BinOp(N.NOWHERE, "-", cut, B.num(1)))
            )
            up = B.int_valued(N.BinOp(N.NOWHERE, "+", size, less))
            each = B.int_valued(N.BinOp(N.NOWHERE, "//", up, cut))
        sizes = [each] * count
    d = _int_literal(dim)
    if d is None:
        raise NotDerivable(call.span, f"a derived backward through {call.func}() needs its dim written as an int")
    parts: list[N.Expr] = []
    start: N.Expr = B.num(0)
    for k, size in enumerate(sizes):
        end = None if k == len(sizes) - 1 else size if k == 0 else B.int_valued(N.BinOp(N.NOWHERE, "+", start, size))
        parts.append(_sliced(source, d, N.Slice(N.NOWHERE, start, end, None)))
        start = end if end is not None else start
    return parts


def _parts_check(call: N.Call, source: N.Expr, count: int) -> PartsCheck | None:
    """The check that `call` (`chunk` or `split`, cutting `source`) gives `count` parts (`unpack_checks`)."""
    words = {k.name: k.value for k in call.kwargs}
    cut = call.args[1] if len(call.args) > 1 else words.get("chunks", words.get("sizes"))
    dim = _int_literal(call.args[2] if len(call.args) > 2 else words.get("dim", B.num(0)))
    assert cut is not None and dim is not None, "the checker checks the call's arguments, _part_slices the dim"
    return parts_check(call, source, dim, cut, count)


def _int_literal(e: N.Expr) -> int | None:
    if isinstance(e, N.UnaryOp) and e.op == "-" and isinstance(e.operand, N.Num):
        return -int(e.operand.value)
    return int(e.value) if isinstance(e, N.Num) and isinstance(e.value, int) else None


def _sliced(source: N.Expr, d: int, cut: N.Slice) -> N.Expr:
    """`source` cut along dim `d`: `x[:, a:b]`, `x[..., a:b, :]`."""
    whole = N.Slice(N.NOWHERE, None, None, None)
    items: list[N.SubscriptItem] = (
        [*[whole] * d, cut] if d >= 0 else [N.EllipsisItem(N.NOWHERE), cut, *[whole] * (-d - 1)]
    )
    e = N.Subscript(N.NOWHERE, source, items)
    e.kind = N.Kind.TENSOR
    return e


def _listed_widths(widths: N.Expr, layer: N.Layer) -> N.Expr:
    """An `ints[N]` argument's widths as the list `[widths[0], ..., widths[N - 1]]` (circular pad's gradient
    folds each dim by its own pair)."""
    arg = layer.arg(widths.id) if isinstance(widths, N.Name) and widths.ref == N.Ref.ARG else None
    if arg is None or arg.length is None or arg.maybe_none:
        return widths
    items: list[N.Expr] = []
    for k in range(arg.length):
        item = N.Subscript(widths.span, widths, [B.num(k)])
        item.kind = N.Kind.INT
        items.append(item)
    listed = N.ListExpr(widths.span, items)
    listed.kind = N.Kind.LIST
    return listed


def _check_pad_mode(args: dict[str, N.Expr], source: N.Call) -> None:
    """A derived backward through `pad` needs its mode when generating (its gradient differs by mode)."""
    mode = args["mode"]
    if not isinstance(mode, N.Str):
        raise NotDerivable(source.span, "a derived backward through pad() needs its mode written as a string")
    if mode.value == "circular" and not isinstance(args["pad"], N.ListExpr):
        raise NotDerivable(
            source.span,
            "a derived backward through circular pad() needs how many widths there are: write them as a list,"
            " or declare the argument with its length (`widths: ints[4]`)",
        )


def _hint_for(op: Op, hint: str) -> str:
    return (
        hint
        if hint not in ("t", "out")
        else {
            "matmul": "mm",
            "sigmoid": "s",
            "tanh": "th",
            "slice": "part",
            "select": "part",
            "dropout_apply": "dropped",
            "index": "picked",
            "index_many": "picked",
            "gather": "picked",
            "index_select": "picked",
            "flip": "flipped",
            "embedding": "rows",
            "pad": "padded",
            "layer_norm": "normed",
            "group_norm": "normed",
        }.get(op.name, "pooled" if "_pool" in op.name else op.name[:4])
    )


def _op_expr(op: Op, args: dict[str, N.Expr], source: N.Expr) -> N.Expr:
    """The step as an expression, in operator form where the op is one."""
    e: N.UnaryOp | N.BinOp | N.Call | N.Subscript
    if op.name in ("slice", "select", "index"):
        e = _subscript_expr(args, source)
    elif op.name == "index_many":
        dim, listed = args["dim"], args["indices"]
        assert isinstance(dim, N.Num) and isinstance(listed, N.ListExpr), "Linearizer.subscript lists them"
        whole: list[N.SubscriptItem] = [N.Slice(source.span, None, None, None)] * int(dim.value)
        e = N.Subscript(source.span, args["input"], [*whole, *listed.items])
    elif op.operator == "neg":
        e = N.UnaryOp(source.span, "-", args["input"])
    elif op.operator:
        e = N.BinOp(source.span, op.operator, args["input"], args["other"] if "other" in args else args["exponent"])
    elif op.template:  # written by its template: every argument in signature order
        e = N.Call(source.span, op.name, source.span, [args[p.name] for p in op.params if p.name in args], [])
    elif _number_before_tensor(op, args):  # layer_norm(input, normalized_shape, weight): in signature order
        given = [p for p in op.params if p.name in args]
        while given and _is_default(given[-1], args[given[-1].name]):
            given.pop()
        e = N.Call(source.span, op.name, source.span, [args[p.name] for p in given], [])
    else:
        e = N.Call(source.span, op.name, source.span, [], [N.Keyword(k, v, source.span) for k, v in args.items()])
        e.args = [v for p in op.params if (v := args.get(p.name)) is not None and (p.tensor or p.tensors)]
        leading = _leading_params(op, args)  # `gather(x, dim, index)`: a number between tensors
        e.args = [args[p.name] for p in leading] if leading else e.args
        e.kwargs = [
            N.Keyword(p.name, args[p.name], source.span)
            for p in op.params
            if not (p.tensor or p.tensors or p in leading) and p.name in args and not _is_default(p, args[p.name])
        ]
    e.kind = N.Kind.TENSOR
    return e


def _number_before_tensor(op: Op, args: dict[str, N.Expr]) -> bool:
    """Whether a number parameter comes before a tensor operand the call gives (so the tensors cannot be
    written first, positionally)."""
    tensors = [k for k, p in enumerate(op.params) if (p.tensor or p.tensors) and p.name in args]
    return any(not (p.tensor or p.tensors) for p in op.params[: tensors[-1]]) if tensors else False


def _subscript_expr(args: dict[str, N.Expr], source: N.Expr) -> N.Subscript:
    """A one-dim slice or select as the subscript Python writes: `x[:, 0]`, `x[..., : n // 2]`."""
    dim = args["dim"]
    assert isinstance(dim, N.Num) and isinstance(dim.value, int), "Linearizer.subscript numbers the dims"
    item: N.SubscriptItem
    if "index" in args:
        item = args["index"]
    else:
        start, end, step = (None if isinstance(b, N.NoneLit) else b for b in (args["start"], args["end"], args["step"]))
        item = N.Slice(source.span, start, end, None if isinstance(step, N.Num) and step.value == 1 else step)
    whole: list[N.SubscriptItem] = [N.Slice(source.span, None, None, None)]
    items: list[N.SubscriptItem] = (
        whole * dim.value + [item] if dim.value >= 0 else [N.EllipsisItem(source.span), item] + whole * (-dim.value - 1)
    )
    return N.Subscript(source.span, args["input"], items)


def _leading_params(op: Op, args: dict[str, N.Expr]) -> tuple[Param, ...]:
    """The parameters to pass positionally when a number comes between two tensor operands (torch takes
    `gather(input, dim, index)` so): every one up to the last tensor given; () when the tensors lead."""
    given = [k for k, p in enumerate(op.params) if (p.tensor or p.tensors) and p.name in args]
    if not any(p.tensor or p.tensors for p in op.params):  # made from numbers (arange): torch takes them in order
        given = [k for k, p in enumerate(op.params) if p.name in args and not _is_default(p, args[p.name])]
        return op.params[: given[-1] + 1] if given else ()
    leading = op.params[: given[-1] + 1] if given and op.positional is None else ()
    if all(p.tensor or p.tensors for p in leading) or not all(p.name in args for p in leading):
        return ()
    return leading


def _bool_mask(index: N.SubscriptItem, inputs: list[N.Input]) -> bool:
    """A comparison, or an input declared bool: its True elements pick, however many there are."""
    if isinstance(index, N.Compare):
        return True
    return isinstance(index, N.Name) and any(i.name == index.id and i.dtype == "bool" for i in inputs)


def _whole(item: N.SubscriptItem) -> bool:
    return isinstance(item, N.Slice) and item.lower is None and item.upper is None and item.step is None


def _is_default(p: Param, value: N.Expr) -> bool:
    if p.default is None:
        return False
    return _same(value, parse_default(p.default))


def _same(a, b) -> bool:
    match a, b:
        case N.Num(value=x), N.Num(value=y):
            return x == y
        case N.Bool(value=x), N.Bool(value=y):
            return x == y
        case N.NoneLit(), N.NoneLit():
            return True
        case N.Name(id=x), N.Name(id=y):
            return x == y
    return False
