"""The static shape pass: every layer's forward checked over symbolic dims before any tensor exists.

Each expression's shape is computed by the rules of `shapes` (the one engine) from the declared shapes
of inputs, parameters and buffers; a spec sub contributes its declared forward shapes, common `nn.*` subs
a rule from `NN_SHAPES`, other `nn.*` subs an unknown shape. A rule that fails is reported at the
offending expression with both operand shapes; an unknown shape is no error (no follow-on errors
either). At a `return` the inferred shape is compared with the declared one: equal is proven, different
is an error, unknown is left to a run-time check in the generated code (`LayerShapes.unproven`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from layerdsl.diagnostics import Reporter
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import Kind, Ref
from layerdsl.ir.printer import and_terms, spec_text
from layerdsl.ir.visit import walk
from layerdsl.language.ops import OPS
from layerdsl.semantics import shapes as S
from layerdsl.semantics.shapes import GROUP, ONE, Poly, Shape, show


@dataclass
class Binding:
    """A name a forward statement binds (or a value it returns), with its inferred shape."""

    span: N.Span  # the statement's target (the returned expression for a return)
    name: str  # the bound name; "return" for a returned value
    shape: Shape


@dataclass
class LayerShapes:
    """What the pass found in one layer: each binding's shape, and which declared outputs it could not
    prove (their indices: the generated forward checks those at run time)."""

    bindings: list[Binding] = field(default_factory=list)
    unproven: set[int] = field(default_factory=set)


def check_layer_shapes(layer: N.Layer, layers: dict[str, N.Layer], reporter: Reporter | None = None) -> LayerShapes:
    """Checks `layer`'s forward (its names resolved by the checker); reports every shape error to
    `reporter` (none: only the shapes are computed, as `show --shapes` and the language server want)."""
    result = LayerShapes()
    fwd = layer.forward
    if fwd is None:
        return result
    lets: dict[str, Poly] = {}
    for let in layer.lets:
        if let.value.kind == Kind.INT:
            lets[let.name] = S.poly(let.value, lets)
    # an input of several ranks (`long[N, S] | long[L]`) has no one static shape
    env: dict[str, Shape] = {
        i.name: S.declared_shape(None if i.alternatives else i.shape, i.name, lets) for i in fwd.inputs if not i.parts
    }
    env.update({t.name: S.declared_shape(t.shape, t.name, lets) for t in layer.tensors if t.repeat is None})
    env.update({t.name: _family_shape(t, lets) for t in layer.tensors if t.repeat is not None})
    pass_ = _ShapePass(layer, layers, reporter or Reporter(layer.path, ""), result, lets)
    for i in fwd.inputs:
        if i.parts:  # a tuple input: the shapes `h, c = hx` gives its names
            pass_.tuples[i.name] = [S.declared_shape(p.shape, p.name, lets) for p in i.parts]
    pass_.block(fwd.body, env)
    if fwd.outputs is not None:
        result.unproven |= {k for k in range(len(fwd.outputs)) if k not in pass_.proven or k in pass_.open}
    return result


def shape_hints(shapes: LayerShapes) -> list[tuple[N.Span, str]]:
    """Where each inferred shape belongs, and its text: `: [B, n]` after a bound name, `-> [B, n]` after a
    returned value (what `show --shapes` prints and an editor shows as inlay hints)."""
    hints = []
    for b in shapes.bindings:
        hints.append((b.span, f"{'-> ' if b.name == 'return' else ': '}{show(b.shape)}"))
    return hints


def binding_at(shapes: LayerShapes, line: int, col: int) -> Binding | None:
    """The binding whose span holds the 1-based position `line:col` (the end column is exclusive), for
    hover; None if none does."""
    for b in shapes.bindings:
        span = b.span
        starts = (span.line, span.col) <= (line, col)
        if starts and (line, col) < (span.end_line, span.end_col):
            return b
    return None


class _ShapePass:
    def __init__(self, layer: N.Layer, layers: dict[str, N.Layer], reporter: Reporter, result: LayerShapes, lets: dict):
        self.layer = layer
        self.lets = lets  # the int lets' values, as polynomials
        self.layers = layers
        self.r = reporter
        self.result = result
        self.subs = {s.name: s.call for s in layer.subs}
        self.proven: set[int] = set()  # outputs some return proved
        self.open: set[int] = set()  # outputs some return left unproven
        self.tuples: dict[str, list[Shape]] = {}  # each tuple input's declared shapes
        self.parts: dict[int, list[Shape]] = {}  # each chunk()/split() call's parts, where known
        self.no_group = False  # inside an `if x.ndim == k` that proves the `...` group empty

    # ------------------------------------------------------------ statements

    def block(self, body: list[N.Stmt], env: dict[str, Shape]) -> dict[str, N.Span]:
        """Checks `body`, updating `env`; the names it binds, with where."""
        bound: dict[str, N.Span] = {}
        for stmt in body:
            match stmt:
                case N.Assign(target=target, value=value):
                    env[target] = self.shape(value, env)
                    bound[target] = stmt.target_span
                    self.result.bindings.append(Binding(stmt.target_span, target, env[target]))
                case N.Unpack(targets=targets, value=value):
                    shapes = self.tuples.get(value.id, []) if isinstance(value, N.Name) else []
                    if isinstance(value, N.Call):
                        found = self.shape(value, env)  # a sub's inputs are checked; its outputs are not known here
                        shapes = self.parts.get(id(value), [])
                        if (op := OPS.get(value.func)) is not None and op.with_indices:
                            shapes = [found, found]  # the indices have the result's shape
                        if shapes and len(shapes) != len(targets):
                            self.r.error(
                                stmt.span,
                                f"{_text(value)} gives {len(shapes)} tensors, unpacked into {len(targets)} names",
                            )
                    for k, (target, span) in enumerate(targets):
                        env[target] = shapes[k] if k < len(shapes) else None
                        bound[target] = span
                        self.result.bindings.append(Binding(span, target, env[target]))
                case N.IndexAssign():
                    env[stmt.target] = self.index_assign(stmt, env)
                    bound[stmt.target] = stmt.target_span
                    self.result.bindings.append(Binding(stmt.target_span, stmt.target, env[stmt.target]))
                case N.Update(target=target, value=value):
                    self.update(stmt, env.get(target), self.shape(value, env))
                case N.If(cond=cond, body=then, orelse=orelse):
                    self.branches(then, orelse, env, bound, _empties_group(cond, env), _equal_dims(cond))
                case N.For():
                    self.loop(stmt, env, bound)
                case N.Append(value=value):
                    self.shape(value, env)
                case N.Return(values=values):
                    self.returns(values, env)
        return bound

    def branches(
        self,
        then: list[N.Stmt],
        orelse: list[N.Stmt],
        env: dict[str, Shape],
        bound: dict,
        no_group: bool = False,
        equal: dict[str, str] | None = None,
    ) -> None:
        """Both branches of an `if`; a name both bind must get one shape. Under `if x.ndim == 2` where x is
        `[..., L, n]`, the `...` group is empty: the branch's shapes and declared outputs lose it. Under
        `if kdim == embed_dim` (an `and` term of the condition), kdim is embed_dim in the branch's shapes."""
        env_then, env_else = {k: S.renamed(v, equal or {}) for k, v in env.items()}, dict(env)
        outer = self.no_group
        if no_group:
            env_then = {k: _without_group(v) for k, v in env_then.items()}
            self.no_group = True
        bound_then = self.block(then, env_then)
        self.no_group = outer
        bound_else = self.block(orelse, env_else)
        for name in bound_then.keys() | bound_else.keys():
            a, b = env_then.get(name), env_else.get(name)
            if name in bound_then and name in bound_else and a is not None and b is not None and a != b:
                self.r.error(
                    bound_else[name],
                    f"'{name}' is {show(a)} on one branch of the `if` and {show(b)} on the other",
                    "both branches must give a name the same shape",
                )
            env[name] = a if a == b else None
            bound[name] = bound_else.get(name) or bound_then[name]

    def loop(self, stmt: N.For, env: dict[str, Shape], bound: dict) -> None:
        """A `for` body, once: a name it rebinds keeps its shape only if the body gives it the same one
        (then every step does); a list of subs' loop variable is called like one of them."""
        if isinstance(stmt.iter, N.Name) and stmt.iter.id in self.subs:
            self.subs[stmt.var] = self.subs[stmt.iter.id]
        # A silent first pass finds the names a step changes the shape of (the second step starts from
        # those): they are unknown in the pass that reports.
        reporter, mark = self.r, len(self.result.bindings)
        trial = dict(env, **{stmt.var: ()})
        self.r = Reporter(self.layer.path, "")
        changed = [n for n in self.block(stmt.body, trial) if n in env and trial.get(n) != env[n]]
        self.r = reporter
        del self.result.bindings[mark:]
        inner = dict(env, **{stmt.var: ()}, **{n: None for n in changed})
        for name, span in self.block(stmt.body, inner).items():
            if name in env:
                env[name] = env[name] if inner.get(name) == env[name] else None
                bound[name] = span
        self.subs.pop(stmt.var, None)

    def returns(self, values: list[N.Expr], env: dict[str, Shape]) -> None:
        outputs = self.layer.forward.outputs if self.layer.forward is not None else None
        for k, value in enumerate(values):
            got = self.shape(value, env)
            self.result.bindings.append(Binding(value.span, "return", got))
            if outputs is None or k >= len(outputs) or value.kind not in (Kind.TENSOR, Kind.UNKNOWN):
                continue
            declared = S.declared_shape(outputs[k], "", self.lets)
            declared = _without_group(declared) if self.no_group else declared
            verdict = _compare(got, declared)
            if verdict is True:
                self.proven.add(k)
                continue
            self.open.add(k)
            if verdict is False:
                which = f"output {k + 1}" if len(outputs) > 1 else "the output"
                self.r.error(
                    value.span,
                    f"forward returns {show(got)} but declares {show(declared)} for {which}",
                    "fix the expression or the declared output shape after `->`",
                )

    def update(self, stmt: N.Update, target: Shape, value: Shape) -> None:
        if target is None or value is None:
            return
        pair = S.mismatch(target, value)
        too_many = not S.opaque(value) and GROUP not in value + target and len(value) > len(target)
        if pair is not None or too_many:
            self.r.error(
                stmt.value.span,
                f"update {stmt.target}: {show(value)} does not fit {show(target)}",
                f"the new value must have the shape of '{stmt.target}' (or broadcast to it)",
            )

    def index_assign(self, stmt: N.IndexAssign, env: dict[str, Shape]) -> Shape:
        """`y[b, i] = ...`: each index ranges over the dim it indexes; an index over two different dims
        is an error."""
        sizes: dict[str, S.Dim] = {}
        where: dict[str, str] = {}
        for node in walk(stmt.value):
            if not isinstance(node, N.Indexed):
                continue
            shape = env.get(node.name.id)
            if shape is None or GROUP in shape or S.opaque(shape) or len(shape) != len(node.indices):
                continue
            for index, dim in zip(node.indices, shape):
                if dim == ONE:
                    continue
                if index.id in sizes and sizes[index.id] != dim:
                    self.r.error(
                        index.span,
                        f"index '{index.id}' ranges over {sizes[index.id]} in '{where[index.id]}' "
                        f"but over {dim} in '{node.name.id}'",
                        "an index must range over the same dim everywhere it is used",
                    )
                    continue
                sizes.setdefault(index.id, dim)
                where.setdefault(index.id, node.name.id)
        if not all(i.id in sizes for i in stmt.indices):
            return None
        return tuple(sizes[i.id] for i in stmt.indices)

    # ------------------------------------------------------------ expressions

    def shape(self, e: N.Expr, env: dict[str, Shape]) -> Shape:
        """`e`'s shape; a rule that fails is reported here and gives None (no follow-on errors)."""
        if e.kind in (Kind.INT, Kind.FLOAT, Kind.BOOL):
            return ()
        match e:
            case N.Name() if e.kind == Kind.TUPLE:
                return None  # a tuple input passed to a sub: its tensors are checked where they are unpacked
            case N.Name(id=name) if e.kind == Kind.TENSOR or name in env:
                return env.get(name)
            case N.Name() | N.Num() | N.Bool():
                return ()
            case N.BinOp(op="@", left=left, right=right):
                return self.matmul(e, left, right, env)
            case N.BinOp(op=op, left=left, right=right):
                return self.broadcast(e, [left, right], env, op)
            case N.Compare(operands=operands):
                return self.broadcast(e, operands, env, e.ops[0])
            case N.UnaryOp(operand=operand):
                return self.shape(operand, env)
            case N.Subscript(value=value, items=items):
                return self.subscript(e, self.shape(value, env), items, env)
            case N.Call(func=func) if func in self.subs:
                return self.sub_call(e, self.subs[func], env)
            case N.Call(func=func) if func in OPS:
                return self.op_call(e, env)
        return None

    def broadcast(self, e: N.Expr, operands: Sequence[N.Expr], env: dict[str, Shape], op: str) -> Shape:
        if e.kind == Kind.TENSOR and (flag := next((o for o in operands if self.is_flag(o)), None)) is not None:
            self.r.error(
                flag.span,
                f"'{_text(flag)}' is a flag (a Python bool the caller passes), not a tensor operand",
                f"choose with it: `if {_text(flag)} {{ ... }}`, or make it a bool argument of the layer",
            )
            return None
        shapes = [self.shape(o, env) for o in operands]
        out: Shape = ()
        for s in shapes:
            pair = S.mismatch(out, s)
            if pair is not None:
                joined = (", " if op == "," else f" {op} ").join(show(x) for x in shapes)
                self.r.error(
                    e.span,
                    f"{_text(e)}: {joined} — dims {pair[0]} and {pair[1]} differ",
                    "two dims broadcast only when they are equal or one of them is 1",
                )
                return None
            out = S.broadcast([out, s])
        return out

    def is_flag(self, e: N.Expr) -> bool:
        """Whether `e` names a flag input (`need_weights: bool = true`)."""
        inputs = self.layer.forward.inputs if self.layer.forward is not None else []
        return (
            isinstance(e, N.Name) and e.ref == Ref.INPUT and any(i.name == e.id and i.flag is not None for i in inputs)
        )

    def matmul(self, e: N.Expr, left: N.Expr, right: N.Expr, env: dict[str, Shape]) -> Shape:
        a, b = self.shape(left, env), self.shape(right, env)
        if a == () or b == ():
            side = left if a == () else right
            self.r.error(e.span, f"{_text(e)}: '{_text(side)}' is a scalar", "`@` needs operands with 1 or more dims")
            return None
        pair = S.inner_dims(a, b)
        if pair is not None and pair[0] != pair[1]:
            hint = None
            if b is not None and len(b) == 2 and b[1] == pair[0]:
                hint = f"did you mean transpose({_text(right)}, 0, 1)?"
            elif a is not None and len(a) == 2 and a[0] == pair[1]:
                hint = f"did you mean transpose({_text(left)}, 0, 1)?"
            hint = hint or "the left operand's last dim must be the right one's first (a vector) or second to last"
            self.r.error(e.span, f"{_text(e)}: {show(a)} @ {show(b)} — inner dims {pair[0]} and {pair[1]} differ", hint)
            return None
        if a is not None and b is not None and len(a) > 2 and len(b) > 2:
            batch = S.mismatch(a[:-2], b[:-2])
            if batch is not None:
                self.r.error(
                    e.span,
                    f"{_text(e)}: {show(a)} @ {show(b)} — batch dims {batch[0]} and {batch[1]} differ",
                    "batch dims broadcast only when they are equal or one of them is 1",
                )
                return None
        return S.matmul(a, b)

    def op_call(self, call: N.Call, env: dict[str, Shape]) -> Shape:
        op = OPS[call.func]
        args = S.call_args(op, call)
        if op.shape == "elementwise":
            operands = [args[p.name] for p in op.params if p.tensor and p.name in args]
            return self.broadcast(call, operands, env, ",")  # shown as `[B, n], [m]`
        if op.shape == "matmul" and "input" in args and "other" in args:
            return self.matmul(call, args["input"], args["other"], env)
        shapes: dict[int, Shape] = {}

        def shape_of(x: N.Expr) -> Shape:
            if id(x) not in shapes:
                shapes[id(x)] = self.shape(x, env)
            return shapes[id(x)]

        if not self.check_dims(call, op, args, shape_of):
            return None
        if op.shape == "concat" and isinstance(args.get("tensors"), N.ListExpr):
            dim = S.literal(op, args, "dim")
            items = args["tensors"].items  # type: ignore[attr-defined]
            if type(dim) is int:
                bad = S.concat_mismatch([shape_of(t) for t in items], dim, new=op.name == "stack")
                if bad is not None:
                    k, first, other = bad
                    rule = (
                        "every operand the same shape" if op.name == "stack" else f"the same shape except at dim {dim}"
                    )
                    self.r.error(
                        items[k].span,
                        f"{op.name}: operand {k + 1} is {show(other)} but operand 1 is {show(first)}",
                        f"{op.name} needs {rule}",
                    )
                    return None
        if op.shape == "conv":
            problem = _conv_problem(
                op.name, shape_of(args["input"]), shape_of(args["weight"]), S.literal(op, args, "groups")
            )
            if problem:
                self.r.error(
                    call.span,
                    f"{_text(call)}: {problem}",
                    "conv weights are [out_channels, in_channels / groups, k...]",
                )
                return None
        if op.name == "reshape" and _kept_leading(args.get("shape")):
            if not self.reshape_kept(call, args, shape_of):
                return None
            return self.op_call(call, env)  # now flatten/unflatten
        if op.shape == "parts":
            found, problem = S.parts(op, args, shape_of(args["input"]))
            if problem is not None:
                self.r.error(call.span, f"{_text(call)}: {problem}", _PARTS_HINT[op.name])
            if found is not None:
                self.parts[id(call)] = found
                call.parts_proven = True
            return None
        if op.shape in ("pool", "pad", "glu") and (window := S.window_problem(op, args, shape_of)):
            self.r.error(call.span, f"{_text(call)}: {window[0]}", window[1])
            return None
        if op.shape == "loss" and (fault := S.loss_problem(op, args, shape_of)) is not None:
            at, message, hint = fault
            self.r.error(at.span if at is not None else call.span, f"{op.name}: {message}", hint)
            return None
        if op.name == "expand" and isinstance(args.get("size"), N.ListExpr):
            sizes = S.expand_sizes(args["size"].items)  # type: ignore[attr-defined]
            sizes = None if sizes is None else list(S.substituted(tuple(sizes), self.lets) or ())  # lets' values
            if sizes is not None and (problem := S.expand_problem(shape_of(args["input"]), sizes)) is not None:
                self.r.error(
                    call.span,
                    f"{_text(call)}: {show(shape_of(args['input']))} cannot expand: {problem}",
                    "each size equals the input's dim or the input's dim is 1; -1 keeps a dim; new dims go first",
                )
                return None
        if op.shape == "reshape" or op.name == "reshape":
            return self.reshape(call, args, shape_of)
        if op.shape in S.INDEX_RULES or op.name in ("flip", "unflatten"):
            if not self.check_indexing(call, op, args, shape_of):
                return None
        return S.substituted(S.op_shape(op, args, shape_of, call.items), self.lets)  # sizes written with lets

    def reshape_kept(self, call: N.Call, args: dict, shape_of: Callable[[N.Expr], Shape]) -> bool:
        """`reshape(x, [..., h, d])`: `...` keeps x's leading dims and the sizes listed replace its last
        dims, the fewest whose product they make; rewritten as `unflatten(flatten(x, -m), -1, [h, d])`
        (just one of the two where that is all it takes). Which dims those are is decided here, from the
        static shapes: where they cannot tell, it is an error."""
        inp, sizes = shape_of(args["input"]), args["shape"].items[1:]
        product = S.constant(1)
        for size in sizes:
            product = S.poly_mul(product, S.poly(size))
        trailing = [] if inp is None or S.opaque(inp) else list(inp[inp.index(GROUP) + 1 :] if GROUP in inp else inp)
        kept, running = None, S.constant(1)
        for m in range(1, len(trailing) + 1):
            running = S.poly_mul(running, S.text_poly(trailing[-m]))
            if running == product:
                kept = m
                break
        if kept is None or any(_minus_one(s) for s in sizes) or not sizes:
            what = (
                f"{_text(args['input'])} is {show(inp)}"
                if inp is not None
                else f"the shape of {_text(args['input'])} is not known here"
            )
            self.r.error(
                call.span,
                f"{_text(call)}: no last dims multiply to {S.poly_text(product)} ({what})",
                "`...` keeps the leading dims; the sizes after it replace the last dims they multiply to "
                "(else write unflatten(x, dim, sizes) or flatten(x, start_dim))",
            )
            return False
        value = args["input"]
        if kept > 1:
            value = _call("flatten", [value, B.num(-kept)], call)
        if len(sizes) > 1 or kept == 1:
            sizes_list = N.ListExpr(args["shape"].span, list(sizes))
            sizes_list.kind = Kind.LIST
            value = _call("unflatten", [value, B.num(-1), sizes_list], call)
        assert isinstance(value, N.Call)
        call.func, call.args, call.kwargs = value.func, value.args, value.kwargs
        return True

    def check_indexing(self, call: N.Call, op, args: dict, shape_of: Callable[[N.Expr], Shape]) -> bool:
        """The index ops' rules torch enforces at run time, reported here where the shapes tell: integer
        index tensors, gather's index of the input's rank, index_select's 1-d index, a 2-d embedding
        weight, flip's list of dims, unflatten's sizes multiplying to the dim they split."""
        index = args.get("index") if op.name != "one_hot" else args.get("input")
        index = index if index is not None else (args.get("input") if op.name == "embedding" else None)
        if index is not None and self.float_tensor(index):
            self.r.error(
                index.span,
                f"{op.name}: the index '{_text(index)}' is a float tensor",
                "indices are integers: declare it `long[...]` (or `int[...]`)",
            )
            return False
        problem = _index_problem(op, args, shape_of)
        if problem:
            self.r.error(call.span, f"{_text(call)}: {problem[0]}", problem[1])
            return False
        return True

    def float_tensor(self, e: N.Expr) -> bool:
        """Whether `e` is an input, parameter or buffer declared float (a computed value: not known)."""
        return self.declared_dtype(e) in ("float", "double", "half", "bfloat16")

    def check_dims(self, call: N.Call, op, args: dict, shape_of: Callable[[N.Expr], Shape]) -> bool:
        """A constant `dim` argument must name a dim of the input; reports it when it cannot."""
        names = [n for n in ("dim", "dim0", "dim1", "start_dim", "end_dim", "dims") if op.param(n) is not None]
        source = args.get("input")
        if source is None:
            return True
        shape = shape_of(source)
        extra = 1 if op.name in ("unsqueeze", "stack") else 0
        for name in names:
            value = S.literal(op, args, name)
            values = value if isinstance(value, list) else [value]
            if not self.dim_list_reads_as_written(call, op, args, name, values, shape):
                return False
            for v in values:
                if type(v) is int and not S.in_range(shape, v, extra):
                    rank = len(shape or ()) + extra
                    self.r.error(
                        args[name].span if name in args else call.span,
                        f"{call.func}: dim {v} is out of range for {show(shape)}",
                        f"{name} is in {-rank}..{rank - 1} here" if rank else f"{show(shape)} has no dims",
                    )
                    return False
        return True

    def dim_list_reads_as_written(self, call: N.Call, op, args: dict, name: str, values: list, shape: Shape) -> bool:
        """A list of dims that torch reads otherwise than it looks is reported: an empty one, with which
        torch's sum, mean, var, std and norm reduce every dim (amax's and amin's default says so), and a dim
        named twice, which torch refuses at run time."""
        if name not in args or not isinstance(args[name], N.ListExpr):
            return True
        if not values and op.shape == "reduce" and op.name not in ("amax", "amin"):
            self.r.error(
                args[name].span,
                f"{call.func}: `{name} = []` is not 'no dim' in torch: it reduces every dim (logsumexp refuses it)",
                f"leave `{name}` out to reduce every dim",
            )
            return False
        rank = len(shape) if shape is not None and GROUP not in shape else None
        seen: set[int] = set()
        for v in values:
            if type(v) is not int:
                continue
            where = v % rank if rank and -rank <= v < rank else v if rank is None and v >= 0 else None
            if where is not None and where in seen:
                self.r.error(args[name].span, f"{call.func}: dim {v} is named twice in {name}", "name each dim once")
                return False
            if where is not None:
                seen.add(where)
        return True

    def reshape(self, call: N.Call, args: dict, shape_of: Callable[[N.Expr], Shape]) -> Shape:
        out = S.substituted(S.op_shape(OPS["reshape"], args, shape_of), self.lets)
        inp = shape_of(args["input"])
        if out is None or inp is None or S.opaque(inp) or GROUP in inp:
            return out
        if _numel(inp) != _numel(out):
            self.r.error(
                call.span,
                f"{_text(call)}: {show(inp)} has {S.poly_text(_numel(inp))} elements, {show(out)} has {S.poly_text(_numel(out))}",
                "a reshape keeps the number of elements (where two counts are equal only at run time, as"
                " `dim // heads * heads` and `dim` are, write -1 for one size)",
            )
            return None
        return out

    def subscript(self, e: N.Subscript, shape: Shape, items: list[N.SubscriptItem], env: dict) -> Shape:
        """Indexing and slicing: an integer drops a dim, a slice sizes one, `none` adds a 1, `...` keeps
        the dims it stands for."""
        if shape is None or S.opaque(shape):
            return None
        tensors = [i for i in items if isinstance(i, N.Expr) and i.kind == Kind.TENSOR]
        if tensors:
            return self.tensor_index(e, shape, items, tensors, env)
        ell = next((k for k, i in enumerate(items) if isinstance(i, N.EllipsisItem)), None)
        consuming = [i for i in items if not isinstance(i, (N.EllipsisItem, N.NoneLit))]
        if GROUP not in shape and len(consuming) > len(shape):
            self.r.error(
                e.span,
                f"{_text(e)}: {len(consuming)} indices for {show(shape)}",
                f"a tensor with {len(shape)} dims takes at most {len(shape)} indices (and `...`, `none`)",
            )
            return None
        before = items if ell is None else items[:ell]
        after = [] if ell is None else items[ell + 1 :]
        n_before = sum(not isinstance(i, N.NoneLit) for i in before)
        n_after = sum(not isinstance(i, N.NoneLit) for i in after)
        if GROUP in shape:
            g = shape.index(GROUP)
            if ell is None or n_before > g or n_after > len(shape) - g - 1:
                return None
        head, rest = self._consume(before, list(shape))
        if head is None:
            return None
        tail_dims = rest[len(rest) - n_after :] if n_after else []
        middle = rest[: len(rest) - n_after] if n_after else rest
        tail, _ = self._consume(after, tail_dims)
        if tail is None:
            return None
        return tuple(head + middle + tail)

    def tensor_index(
        self, e: N.Subscript, shape: Shape, items: list[N.SubscriptItem], tensors: list[N.Expr], env: dict
    ) -> Shape:
        """Advanced indexing: an index tensor's dims take the place of the dim it indexes; known statically
        for one integer index tensor with whole dims (`:`, `...`) elsewhere."""
        for index in tensors:
            if self.float_tensor(index):
                self.r.error(
                    index.span,
                    f"{_text(e)}: the index '{_text(index)}' is a float tensor",
                    "index with integers (`long[...]`) or a bool mask",
                )
                return None
        whole = all(
            isinstance(i, N.EllipsisItem) or (isinstance(i, N.Slice) and i.lower is i.upper is i.step is None)
            for i in items
            if not any(i is t for t in tensors)
        )
        index = tensors[0]
        bool_mask = isinstance(index, N.Compare) or self.declared_dtype(index) == "bool"
        if len(tensors) > 1 or not whole or bool_mask or shape is None or GROUP in shape:
            return None
        k = next(j for j, i in enumerate(items) if i is index)
        ell = next((j for j, i in enumerate(items) if isinstance(i, N.EllipsisItem)), None)
        dim = k if ell is None or k < ell else k - len(items)
        n_dims = len(items) - (ell is not None)
        if n_dims > len(shape):
            self.r.error(
                e.span,
                f"{_text(e)}: {n_dims} indices for {show(shape)}",
                f"a tensor with {len(shape)} dims takes at most {len(shape)} indices (and `...`, `none`)",
            )
            return None
        shapes = {id(e.value): shape, id(index): self.shape(index, env)}
        return S.op_shape(OPS["index"], {"input": e.value, "dim": B.num(dim), "index": index}, lambda x: shapes[id(x)])

    def declared_dtype(self, e: N.Expr) -> str | None:
        fwd = self.layer.forward
        declared: list[N.Input | N.Tensor] = [*(fwd.inputs if fwd is not None else []), *self.layer.tensors]
        return next((d.dtype for d in declared if isinstance(e, N.Name) and d.name == e.id), None)

    def _consume(self, items: Sequence[N.SubscriptItem], dims: list[str]) -> tuple[list[str] | None, list[str]]:
        out: list[str] = []
        dims = list(dims)
        for item in items:
            if isinstance(item, N.NoneLit):
                out.append(ONE)
                continue
            dim = dims.pop(0)
            if isinstance(item, N.Slice):
                size = S.slice_size(item.lower, item.upper, item.step, dim)
                if size is None:
                    return None, dims
                out.append(size)
        return out, dims

    # ------------------------------------------------------------ subs

    def sub_call(self, call: N.Call, construction: N.Call, env: dict) -> Shape:
        inputs = [self.shape(a, env) for a in call.args]
        if construction.func.startswith("nn."):
            return _nn_shape(
                construction,
                inputs,
                lambda msg: self.r.error(call.span, f"{_text(call)}: {msg}", f"see `sub {call.func} = ...`"),
            )
        target = self.layers.get(construction.func)
        if target is None or target.forward is None or len(call.args) > len(target.forward.inputs):
            return None
        subst = _layer_args(target, construction, self.lets)
        for arg, inp, actual in zip(call.args, target.forward.inputs, inputs):
            if inp.flag is not None and arg.kind == Kind.TENSOR:
                self.r.error(
                    arg.span,
                    f"{_text(arg)} is a tensor; {target.name}'s input '{inp.name}' is a flag (a bool)",
                    f"give '{inp.name}' `true`, `false` or a bool argument, in {target.name}'s forward order",
                )
                return None
            if inp.shape is None or actual is None:
                continue
            problem = _bind(inp.shape, actual, subst)
            if problem:
                declared = show(tuple(S.dim_text(d, subst) for d in inp.shape.dims))
                self.r.error(
                    arg.span,
                    f"{_text(arg)}: {show(actual)} does not fit {target.name}'s input '{inp.name}': {declared} — {problem}",
                    f"{target.name} declares forward({inp.name}: {spec_text_shape(inp.shape)})",
                )
                return None
        outputs = target.forward.outputs
        if not outputs or len(outputs) != 1:
            return None
        out = []
        for d in outputs[0].dims:
            if isinstance(d, N.EllipsisItem):
                if "..." not in subst:
                    return None
                out += [S.poly_text(p) for p in subst["..."]]
                continue
            if any(isinstance(n, N.Name) and n.ref == Ref.DIM and n.id not in subst for n in walk(d)):
                return None
            out.append(S.dim_text(d, subst))
        return tuple(out)


def _family_shape(t: N.Tensor, lets: dict[str, Poly]) -> Shape:
    """A family member's shape, when it is the same for every member (no dim reads the loop variable)."""
    assert t.repeat is not None
    for node in walk(t.shape):
        if isinstance(node, N.IfExp) or (isinstance(node, N.Name) and node.id == t.repeat.var.id):
            return None
    return S.declared_shape(t.shape, t.name, lets)


def spec_text_shape(shape: N.Shape) -> str:
    return "[" + ", ".join("..." if isinstance(d, N.EllipsisItem) else spec_text(d) for d in shape.dims) + "]"


def _layer_args(target: N.Layer, construction: N.Call, outer: dict[str, Poly]) -> dict:
    """The sub's arguments as polynomials over the outer layer's names (`outer`: its lets); its lets too."""
    subst: dict = {}
    given = {a.name: v for a, v in zip(target.args, construction.args)}
    given.update((k.name, k.value) for k in construction.kwargs)
    for a in target.args:
        if a.type != "int":
            continue
        if a.name in given:
            subst[a.name] = S.poly(given[a.name], outer)  # written in the outer layer's names
        elif a.default is not None:
            subst[a.name] = S.poly(a.default, subst)  # written in the sub's names
    for let in target.lets:
        if let.value.kind == Kind.INT:
            subst[let.name] = S.poly(let.value, subst)
    return subst


def _bind(declared: N.Shape, actual: tuple[str, ...], subst: dict) -> str | None:
    """Matches an actual shape against a sub's declared input shape, binding its symbolic dims (and `...`)
    in `subst`; the problem when they do not fit."""
    dims = declared.dims
    if S.opaque(actual) or GROUP in actual and not declared.has_ellipsis:
        return None
    ell = next((k for k, d in enumerate(dims) if isinstance(d, N.EllipsisItem)), None)
    if ell is None:
        if len(actual) != len(dims):
            return f"{len(actual)} dims, not {len(dims)}"
        pairs = list(zip(dims, actual))
    else:
        after = dims[ell + 1 :]
        if len(actual) < len(dims) - 1:
            return f"{len(actual)} dims, not at least {len(dims) - 1}"
        lead = actual[: len(actual) - len(after)]
        subst["..."] = tuple(S.text_poly(x) for x in lead)
        pairs = list(zip(dims[:ell], actual)) + list(zip(after, actual[len(actual) - len(after) :]))
    for d, got in pairs:
        assert isinstance(d, N.Expr)
        if got == GROUP:
            return None
        # A dim, or an argument whose value is not known here (a layer argument's instance: `sub norm = norm`)
        unknown = (Ref.DIM, Ref.ARG)
        if isinstance(d, N.Name) and d.ref in unknown and d.id not in subst:
            subst[d.id] = S.text_poly(got)
            continue
        if any(isinstance(n, N.Name) and n.ref in unknown and n.id not in subst for n in walk(d)):
            continue
        want = S.dim_text(d, subst)
        if want != got:
            return f"{want} and {got} differ"
    return None


# ------------------------------------------------------------------ torch.nn subs

_SAME_SHAPE = set(
    "Identity ReLU ReLU6 LeakyReLU ELU SELU CELU GELU SiLU Mish Sigmoid Tanh Softplus Softsign Softmax LogSoftmax "
    "Hardtanh Hardswish Hardsigmoid Tanhshrink Threshold Dropout Dropout1d Dropout2d Dropout3d AlphaDropout PReLU "
    "LayerNorm RMSNorm BatchNorm1d BatchNorm2d BatchNorm3d GroupNorm InstanceNorm1d InstanceNorm2d InstanceNorm3d".split()
)


def _nn_shape(construction: N.Call, inputs: list[Shape], error: Callable[[str], None]) -> Shape:
    """The shape a common `torch.nn` layer gives (None for the others: they are opaque)."""
    name = construction.func[3:]
    if len(inputs) != 1:
        return None
    x = inputs[0]
    args = [S.dim_text(a) if a.kind == Kind.INT else None for a in construction.args]
    kwargs = {k.name: k.value for k in construction.kwargs}
    if name in _SAME_SHAPE:
        return x
    if name == "Sequential":
        for layer in construction.args:
            if not isinstance(layer, N.Call) or not layer.func.startswith("nn."):
                return None
            x = _nn_shape(layer, [x], error)
        return x
    if name == "Linear" and len(args) >= 2 and x is not None and x and not S.opaque(x):
        if x[-1] not in (GROUP,) and args[0] is not None and x[-1] != args[0]:
            error(f"nn.Linear({args[0]}, {args[1]}) takes [..., {args[0]}], got {show(x)}")
            return None
        return None if args[1] is None else x[:-1] + (args[1],)
    if name == "Flatten":
        start = _int_kwarg(kwargs, "start_dim", construction.args, 0, 1)
        end = _int_kwarg(kwargs, "end_dim", construction.args, 1, -1)
        return S.flatten(x, start, end) if start is not None and end is not None else None
    if name in ("Conv1d", "Conv2d") and len(args) >= 3 and x is not None and not S.opaque(x):
        spatial = int(name[4])
        if len(x) != spatial + 2 or GROUP in x or None in args[:3]:
            return None
        if x[1] != args[0]:
            error(f"{construction.func}({args[0]}, ...) takes {args[0]} channels at dim 1, got {show(x)}")
            return None
        stride = _int_kwarg(kwargs, "stride", construction.args, 3, 1)
        padding = _int_kwarg(kwargs, "padding", construction.args, 4, 0)
        if stride is None or padding is None or "dilation" in kwargs or "groups" in kwargs:
            return None
        weight = (args[1], args[0]) + (args[2],) * spatial
        return S.conv(x, weight, stride, padding, 1, spatial)  # type: ignore[arg-type]
    if name in ("MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d") and construction.args and x is not None:
        spatial = int(name[-2])
        k = _int_kwarg(kwargs, "kernel_size", construction.args, 0, None)
        stride = _int_kwarg(kwargs, "stride", construction.args, 1, k)
        padding = _int_kwarg(kwargs, "padding", construction.args, 2, 0)
        if k is None or stride is None or padding is None or S.opaque(x) or GROUP in x or len(x) < spatial + 1:
            return None
        sizes = []
        for d in x[len(x) - spatial :]:
            span = S.poly_add(S.text_poly(d), S.constant(2 * padding - k))
            whole = S.as_int(span)
            q = S.constant(whole // stride) if whole is not None else S.atom(f"({S.poly_text(span)}) // {stride}")
            sizes.append(S.poly_text(S.poly_add(q, S.constant(1))))
        return x[: len(x) - spatial] + tuple(sizes)
    return None


def _int_kwarg(kwargs: dict, name: str, args: list, pos: int, default: int | None) -> int | None:
    value = kwargs.get(name, args[pos] if pos < len(args) else None)
    if value is None:
        return default
    return value.value if isinstance(value, N.Num) and isinstance(value.value, int) else None


# ------------------------------------------------------------------ helpers


def _empties_group(cond: N.Expr, env: dict[str, Shape]) -> bool:
    """Whether `cond` is `x.ndim == k` for an `x` declared with `...` and k other dims (so `...` is empty)."""
    if not isinstance(cond, N.Compare) or cond.ops != ["=="]:
        return False
    ranks = [o for o in cond.operands if isinstance(o, N.Rank)]
    counts = [o.value for o in cond.operands if isinstance(o, N.Num)]
    shape = env.get(ranks[0].value.id) if ranks else None
    return bool(shape and counts and GROUP in shape and len(shape) - 1 == counts[0])


def _equal_dims(cond: N.Expr) -> dict[str, str]:
    """`kdim == embed_dim` and the like among the `and` terms of `cond`: each int name on the left mapped
    to the one on the right (then-branch shapes are renamed by it)."""
    equal = {}
    for term in and_terms(cond):
        if isinstance(term, N.Compare) and term.ops == ["=="]:
            left, right = term.operands
            if isinstance(left, N.Name) and isinstance(right, N.Name) and Kind.INT == left.kind == right.kind:
                equal[left.id] = right.id
    return equal


def _without_group(shape):
    return tuple(d for d in shape if d != GROUP) if shape is not None and GROUP in shape else shape


def _compare(got: Shape, declared: tuple[str, ...]) -> bool | None:
    """Whether an inferred shape is the declared one: True (proven), False (proven wrong) or None."""
    if got is None or S.opaque(got) or S.opaque(declared):
        return None
    if got == declared:
        return True
    if (GROUP in got) != (GROUP in declared):
        return None
    if len(got) != len(declared):
        return False
    return False if any(a != b and GROUP not in (a, b) for a, b in zip(got, declared)) else None


def _conv_problem(name: str, inp: Shape, weight: Shape, groups) -> str | None:
    spatial = int(name[4])
    for what, shape in (("input", inp), ("weight", weight)):
        if shape is not None and not S.opaque(shape) and GROUP not in shape and len(shape) != spatial + 2:
            return f"the {what} is {show(shape)}; {name} needs {spatial + 2} dims"
    if inp is None or weight is None or S.opaque(inp) or S.opaque(weight) or GROUP in inp or type(groups) is not int:
        return None
    channels = S.poly_text(S.poly_mul(S.text_poly(weight[1]), S.constant(groups)))
    if inp[1] != channels:
        return f"the input has {inp[1]} channels at dim 1, the weight {show(weight)} takes {channels}"
    return None


def _numel(shape: Sequence[str]) -> Poly:
    out = S.constant(1)
    for d in shape:
        out = S.poly_mul(out, S.text_poly(d))
    return out


def _text(e: N.Expr) -> str:
    text = spec_text(e)
    return text if len(text) <= 60 else text[:57] + "..."


def _index_problem(op, args: dict, shape_of: Callable[[N.Expr], Shape]) -> tuple[str, str] | None:
    """What is wrong with an index op's operands (message, hint), as far as the static shapes tell."""

    def known(x: N.Expr | None) -> Shape:
        shape = shape_of(x) if x is not None else None
        return None if shape is None or S.opaque(shape) or GROUP in shape else shape

    end = args.get("end")
    if op.name == "arange" and "step" in args and (end is None or isinstance(end, N.NoneLit)):
        return "a step needs a start and an end", "write arange(0, n, step)"
    dims = args.get("dims")
    if op.name == "flip" and dims is not None and (type(S.literal(op, args, "dims")) is int or dims.kind == Kind.INT):
        return "flip takes a list of dims", f"write flip({_text(args['input'])}, [{_text(dims)}])"
    inp, index = known(args.get("input")), known(args.get("index"))
    if op.name in ("gather", "scatter", "scatter_add") and inp is not None and index is not None:
        if len(inp) != len(index):
            return (
                f"index is {show(index)} but input is {show(inp)}",
                f"{op.name}'s index has as many dims as its input (unsqueeze it)",
            )
    if op.name == "index_select" and index is not None and len(index) != 1:
        return f"index is {show(index)}", "index_select takes a 1-d index (flatten it, or use gather)"
    weight = known(args.get("weight"))
    if op.name == "embedding" and weight is not None and len(weight) != 2:
        return f"weight is {show(weight)}", "an embedding weight is [num_embeddings, embedding_dim]"
    if op.name == "unflatten" and inp is not None and isinstance(args.get("sizes"), N.ListExpr):
        dim, items = S.literal(op, args, "dim"), args["sizes"].items
        p = S.position(inp, dim) if type(dim) is int else None
        if p is not None and not any(_minus_one(i) for i in items):
            product = S.constant(1)
            for i in items:
                product = S.poly_mul(product, S.poly(i))
            gap = S.as_int(S.poly_add(product, S.text_poly(inp[p]), -1))
            if gap:  # provably different (`2 * (n // 2)` may be n)
                return (
                    f"sizes multiply to {S.poly_text(product)}, not {inp[p]}",
                    "unflatten splits one dim: its sizes multiply to that dim (one of them may be -1)",
                )
    return None


def _minus_one(e: N.Expr) -> bool:
    return isinstance(e, N.UnaryOp) and e.op == "-" and isinstance(e.operand, N.Num) and e.operand.value == 1


def _kept_leading(shape: N.Expr | None) -> bool:
    """Whether reshape's shape starts with `...` (the input's leading dims kept)."""
    return isinstance(shape, N.ListExpr) and bool(shape.items) and isinstance(shape.items[0], N.EllipsisItem)


def _call(func: str, args: list[N.Expr], at: N.Call) -> N.Call:
    call = N.Call(at.span, func, at.func_span, args, [])
    call.kind = Kind.TENSOR
    return call


_PARTS_HINT = {
    "chunk": "chunk() cuts equal parts: a dim of a size the count divides; split(x, [...]) cuts unequal ones",
    "split": "list sizes that add up to the dim's size",
}
