"""The Lark tree → IR builder (`nodes.SpecFile`'s layers, or one expression).

The grammar is permissive where a precise message beats a parse error (assignment targets, defaults,
initialisers, `sub` calls); the builder checks those shapes and reports through the `Reporter`,
building placeholders (`Invalid`) so that checking can go on.
"""

from __future__ import annotations

import ast
import warnings
from dataclasses import dataclass
from typing import TypeVar

from lark import Token, Transformer, Tree, v_args

from layerdsl.diagnostics import Reporter, Span, did_you_mean
from layerdsl.ir import nodes as N
from layerdsl.language.ops import REDUCTIONS
from layerdsl.language.tables import DTYPES, OP_ALIASES


def _reduction_hint(name: str) -> str:
    """`max[d](...)`: the reduction meant (by meaning, then by spelling), and the list of reductions."""
    meant = [t for t in OP_ALIASES.get(name.lower(), ()) if t in REDUCTIONS]
    close = f"did you mean '{meant[0]}'? " if meant else (did_you_mean(name, REDUCTIONS) or "") + " "
    return close.lstrip() + "the reductions are " + ", ".join(f"{r}[...]" for r in REDUCTIONS)


def _span(meta) -> Span:
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


def _tspan(tok: Token) -> Span:
    # Lark types token positions as optional (a token can be built by hand); its lexer always sets them.
    if tok.line is None or tok.column is None or tok.end_line is None or tok.end_column is None:
        raise ValueError(f"token {tok.type} has no position")
    return Span(tok.line, tok.column, tok.end_line, tok.end_column)


def _keyword(span: Span, word: str) -> Span:
    """The span of the keyword that starts a construct."""
    return Span(span.line, span.col, span.line, span.col + len(word))


def _espan(node) -> Span:
    if isinstance(node, Token):
        return _tspan(node)
    return node.span


_Block = TypeVar("_Block", N.Forward, N.Backward)


@dataclass
class _Alternatives:
    """An input's declared alternatives: its tensor types (dtype, shape), and whether a tuple of ints is one."""

    tensors: list[tuple[str, N.Shape]]
    ints: bool


@v_args(meta=True)
class IRBuilder(Transformer):
    """Builds IR nodes bottom-up; reports misplaced constructs instead of failing."""

    def __init__(self, reporter: Reporter):
        super().__init__()
        self.r = reporter

    def build_expression(self, tree: Tree) -> N.Expr:
        """The IR of a tree parsed from the `expr` rule: a dotted name at its root (never valid there) is
        reported like one anywhere else."""
        expr = self.transform(tree)
        if isinstance(expr, AttrChain):
            self._dotted_name(expr)
            return Invalid(expr.span)
        return expr

    def _call_userfunc(self, tree, new_children=None):
        # A dotted name is only valid as what is called (`nn.Conv2d(...)`): anywhere else, report it here
        # and go on with a placeholder.
        children = list(tree.children if new_children is None else new_children)
        for i, child in enumerate(children):
            if isinstance(child, AttrChain) and not (tree.data in ("call", "attr", "append") and i == 0):
                if tree.data == "sub":
                    self.r.error(child.span, "a sub is a call to a layer", f"write `{child.dotted}(...)`")
                elif _could_be_sub_member(child.dotted):
                    children[i] = N.Name(child.span, child.dotted)  # `linear.weight`: the checker resolves it
                    continue
                else:
                    self._dotted_name(child)
                children[i] = Invalid(child.span)
        return super()._call_userfunc(tree, children)

    def _dotted_name(self, chain: AttrChain) -> None:
        base, _, last = chain.dotted.rpartition(".")
        if chain.dotted.startswith("nn."):
            self.r.error(
                chain.span,
                f"'{chain.dotted}' can only be constructed in a sub",
                f"write `sub name = {chain.dotted}(...)`",
            )
        elif base in ("torch", "math", "F", "np", "numpy"):
            hint = (
                f"did you mean '{last}'?"
                if last in ("pi", "inf")
                else "specs use the built-in names: see the operation table"
            )
            self.r.error(chain.span, f"unknown name '{chain.dotted}'", hint)
        else:
            hint = (
                f"write transpose({base}, -2, -1)"
                if last in ("T", "mT")
                else "dotted names exist only as `nn.X(...)` in a sub"
            )
            self.r.error(chain.span, "attribute access is not part of the language", hint)

    # -- file and layer

    def start(self, meta, layers):
        return [layer for layer in layers if layer is not None]

    def layer(self, meta, items):
        decorators = [i for i in items if isinstance(i, N.Decorator)]
        name_tok = next(i for i in items if isinstance(i, Token))
        layer = N.Layer(
            name=str(name_tok),
            span=_tspan(name_tok),
            path=self.r.path,
            decorators=decorators,
            args=[i for i in items if isinstance(i, N.Arg)],
        )
        members = [i for i in items if not isinstance(i, (N.Decorator, N.Arg, Token)) and i is not None]
        for index, member in enumerate(members):
            self._add_member(layer, member, first=index == 0)
        if layer.forward is None:
            self.r.error(layer.span, f"layer '{layer.name}' has no forward", "add `forward(x) { ... return ... }`")
        return layer

    def _add_member(self, layer: N.Layer, member, first: bool) -> None:
        match member:
            case ("docstring", span, text):
                if not first:
                    self.r.error(
                        span,
                        "a docstring may only be the first item of a layer's body",
                        "move it to the top of the body",
                    )
                layer.docstring = text
            case N.Tensor():
                layer.tensors.append(member)
            case ("member_loop", tensors):
                layer.tensors.extend(tensors)
            case N.Sub():
                layer.subs.append(member)
            case N.Reinit():
                member.after = len(layer.tensors)
                layer.reinits.append(member)
            case N.Let():
                layer.lets.append(member)
            case N.Redraw():
                layer.redraws.append(member)
            case list():  # example(...): each line seeds configurations of its own
                group = max((e.group for e in layer.examples), default=-1) + 1
                for value in member:
                    value.group = group
                layer.examples.extend(member)
            case N.Forward():
                layer.forward = self._only(layer, layer.forward, member, "forward", "exactly one")
            case N.Backward():
                layer.backward = self._only(layer, layer.backward, member, "backward", "at most one")

    def _only(self, layer: N.Layer, earlier: _Block | None, member: _Block, word: str, how_many: str) -> _Block:
        """The block a layer keeps: the first of its kind; a second is reported at its keyword."""
        if earlier is None:
            return member
        self.r.error(
            _keyword(member.span, word),
            f"layer '{layer.name}' has a second {word}",
            f"a layer has {how_many}; the first is at line {earlier.span.line}",
        )
        return earlier

    def decorator(self, meta, items):
        name, callargs = items
        args, kwargs = callargs if callargs is not None else ([], [])
        return N.Decorator(str(name), _span(meta), args, kwargs)

    def argdef(self, meta, items):
        if len(items) == 5:  # `output_size: [int?]`
            name, (text, type_span), maybe_none, choices, default = items
            length = None
        else:
            name, type_tok, length, maybe_none, choices, default = items
            type_span, text = _tspan(type_tok), str(type_tok)
        if length is not None:  # `ints[4]`: the type's text and span cover the length
            text += f"[{length[0]}]"
            type_span = type_span.to(length[1])
        if maybe_none is not None:  # `float?`
            text += "?"
            type_span = type_span.to(_tspan(maybe_none))
        if choices is not None:  # `int | "same" | "valid"`: the span covers the strings
            type_span = type_span.to(choices[-1].span)
        return N.Arg(str(name), _tspan(name), text, type_span, default, tuple(c.value for c in choices or ()))

    def none_entries(self, meta, items):
        """`[int?]`: ints whose entries may be none; only int entries are."""
        entry = str(items[0])
        if entry != "int":
            self.r.error(
                _tspan(items[0]),
                f"only int entries may be none: `[int?]`, not `[{entry}?]`",
                "write `[int?]` (an int or a tuple of ints and none)",
            )
        return "[int?]", _span(meta)

    def arg_choices(self, meta, items):
        return [self.string(meta, [tok]) for tok in items]

    def arg_length(self, meta, items):
        return str(items[0]), _span(meta)

    def docstring(self, meta, items):
        r"""The text as written, as torch's raw docstrings hold it (LaTeX's `\frac` stays itself: as an escape
        it would be a form feed); line breaks as Python reads them."""
        (tok,) = items
        quotes = 3 if str(tok).startswith('"""') else 1
        text = str(tok)[quotes:-quotes].replace("\r\n", "\n").replace("\r", "\n")
        surrogate = next((c for c in text if 0xD800 <= ord(c) <= 0xDFFF), None)
        if surrogate is not None:  # an editor's text (a file's is UTF-8): Python cannot make it a docstring
            self.r.error(_tspan(tok), f"a string cannot hold a lone surrogate (\\u{ord(surrogate):04x})")
            text = ""
        return ("docstring", _tspan(tok), text)

    def spread_shape(self, meta, items):
        return N.Shape(_span(meta), [], N.Name(_tspan(items[0]), str(items[0])))

    def param(self, meta, items):
        name, shape, init, cond = items
        tensor = N.Tensor(N.Ref.PARAM, N.family_key(str(name)), _tspan(name), "float", shape, self._init(init), cond)
        if name.type == "FAMILY":
            tensor.written = str(name)
        return tensor

    def member_loop(self, meta, items):
        """`for k in range(n) { param ... }`: the params it declares, sharing one Repeat; each family's
        index must be the loop's variable."""
        var, iterable, *members = _without_keywords(items)
        loop_var = N.Name(_tspan(var), str(var))
        if not (isinstance(iterable, N.Call) and iterable.func == "range"):
            self.r.error(
                iterable.span,
                "a family of params repeats over `range(...)`",
                "write e.g. `for k in range(num_layers) { param weight_l{k}: [...] }`",
            )
            iterable = N.Call(iterable.span, "?", iterable.span, [], [])
        repeat = N.Repeat(loop_var, iterable)
        tensors = []
        for member in members:
            if member is None:
                continue
            if not isinstance(member, N.Tensor) or member.kind != N.Ref.PARAM:
                span = member[1] if isinstance(member, tuple) else getattr(member, "span", _span(meta))
                if isinstance(member, list):
                    span = _span(meta)
                self.r.error(span, "a member `for` declares params only", "move it out of the loop")
                continue
            index = member.written[member.written.find("{") + 1 : member.written.find("}")]
            if index != loop_var.id:
                self.r.error(
                    member.span,
                    f"'{member.written or member.name}' in a loop over '{loop_var.id}' is one of a family: "
                    "name it by the loop variable",
                    (
                        f"write e.g. `param {member.name}_l{{{loop_var.id}}}: ...`"
                        if not member.written
                        else f"write `{member.written.replace('{' + index + '}', '{' + loop_var.id + '}')}`"
                    ),
                )
                continue
            member.repeat = repeat
            tensors.append(member)
        return ("member_loop", tensors)

    def buffer(self, meta, items):
        transient, name, dtype, shape, init, cond = items
        return N.Tensor(
            N.Ref.BUFFER,
            str(name),
            _tspan(name),
            self._dtype(dtype),
            shape,
            self._init(init),
            cond,
            persistent=transient is None,
        )

    def _init(self, expr) -> N.Init | None:
        match expr:
            case None | Invalid() | N.Call(func="?"):  # nothing, or already reported
                return None
            case N.Name(id=name, span=span):
                return N.Init(name, span, [], [])
            case N.Call(func=name, func_span=span, args=args, kwargs=kwargs) if "." not in name:
                return N.Init(name, span, args, kwargs)
        self.r.error(expr.span, "an initialiser is a name or a call", "e.g. `= zeros` or `= normal(0, 0.02)`")
        return None

    def sub(self, meta, items):
        name, expr = items
        repeat = None
        if isinstance(expr, N.ListComp):
            repeat = self._repeat(expr)
            expr = expr.item
        given, copied = None, False
        if isinstance(expr, N.Name):  # `sub norm = norm`: a layer argument, held as given
            given, expr = expr, N.Call(expr.span, expr.id, expr.span, [], [])
        elif isinstance(expr, N.Call) and expr.func == "copy":  # `copy(encoder_layer)`: a deep copy of one
            if len(expr.args) != 1 or not isinstance(expr.args[0], N.Name) or expr.kwargs:
                self.r.error(expr.span, "copy takes one layer argument", "e.g. `copy(encoder_layer)`")
            else:
                given, copied = expr.args[0], True
        if not isinstance(expr, N.Call):
            if not isinstance(expr, Invalid):
                self.r.error(
                    expr.span,
                    "a sub is a call to a layer",
                    "e.g. `sub fc = Linear(in_features, 10)` or `sub act = nn.ReLU()`",
                )
            expr = N.Call(expr.span, "?", expr.span, [], [])
        return N.Sub(str(name), _tspan(name), expr, repeat, given, copied)

    def reinit(self, meta, items):
        (sub, member, span), expr = items
        init = self._init(expr)
        return N.Reinit(str(sub), str(member), span, init, sub_span=_tspan(sub), member_span=_tspan(member))

    def member_ref(self, meta, items):
        sub, member = items
        return sub, member, _span(meta)

    def _repeat(self, comp: N.ListComp) -> N.Repeat:
        if not (isinstance(comp.iter, N.Call) and comp.iter.func == "range"):
            self.r.error(
                comp.iter.span,
                "a list of subs repeats over `range(...)`",
                "write e.g. `sub layers = [Block(d) for i in range(num_layers)]`",
            )
            return N.Repeat(comp.var, N.Call(comp.iter.span, "?", comp.iter.span, [], []))
        return N.Repeat(comp.var, comp.iter)

    def redraw(self, meta, items):
        target, init, cond = items
        return N.Redraw(_span(meta), N.Name(_tspan(target), str(target)), self._init(init), cond)

    def let(self, meta, items):
        name, expr = items
        return N.Let(str(name), _tspan(name), expr)

    def example(self, meta, items):
        (callargs,) = items
        args, kwargs = callargs if callargs is not None else ([], [])
        for a in args:
            self.r.error(a.span, "example values are named", "write `example(in_features = 5)`")
        return [N.ExampleValue(k.name, k.span, k.value) for k in kwargs]

    def forward(self, meta, items):
        *inputs, outputs, body = items
        optional = set()
        if outputs is not None:
            optional = {k for k, (_, maybe_none) in enumerate(outputs) if maybe_none}
            outputs = [shape for shape, _ in outputs]
        return N.Forward(_span(meta), [i for i in inputs if i is not None], outputs, body, optional)

    def backward(self, meta, items):
        *names, body = items
        return N.Backward(_span(meta), [(str(n), _tspan(n)) for n in names if n is not None], body)

    def input(self, meta, items):
        name, declared, maybe_none, default = items
        span = _tspan(name)
        if isinstance(declared, Token) and str(declared) != "ints":  # `need_weights: bool = true`: a flag
            return self._flag(name, declared, maybe_none, default)
        if isinstance(declared, Token):  # `x: ints` (one alternative, alone)
            declared = self.input_type(meta, [declared])
        alternatives = declared if isinstance(declared, _Alternatives) else None
        if alternatives is not None:
            declared = alternatives.tensors[0] if alternatives.tensors else ("long", None)
        if isinstance(declared, list):  # a tuple of tensors
            dtype, shape = declared[0].dtype, declared[0].shape
        else:
            dtype, shape = declared if declared is not None else ("float", None)
        inp = N.Input(str(name), span, dtype, shape, optional=maybe_none is not None)
        if isinstance(declared, list):
            inp.parts = [N.Input(f"{name}[{k}]", span, p.dtype, p.shape) for k, p in enumerate(declared)]
        if alternatives is not None:
            inp.takes_ints = alternatives.ints
            if len(alternatives.tensors) > 1:
                inp.alternatives = [N.Input(str(name), span, d, sh) for d, sh in alternatives.tensors]
        if default is not None and not (inp.optional and isinstance(default, N.NoneLit)):
            hint = f"write `{name}: ...? = none`" if not inp.optional else None
            self.r.error(default.span, "an input's only default is `none`, for an optional input (`T? = none`)", hint)
        elif inp.optional and default is None:
            self.r.error(_tspan(maybe_none), f"optional input '{name}' needs its default", "write `? = none`")
        return inp

    def input_type(self, meta, items):
        """`long[N, S] | long[L]` (tensors of different ranks, each without `...`) and `long[N] | ints` (or a
        tuple of ints): an input's alternatives."""
        alternatives = _Alternatives([], False)
        ranks: set[int] = set()
        for item in items:
            if isinstance(item, Token):
                if str(item) != "ints" or alternatives.ints:
                    why = "`ints` is given twice" if str(item) == "ints" else f"unknown input type '{item}'"
                    self.r.error(_tspan(item), why, "an input is a tensor type (`[B, n]`, `long[N]`), or `T | ints`")
                alternatives.ints = True
                continue
            dtype, shape = item
            alternatives.tensors.append(item)
            rank = len(shape.dims)
            if len([i for i in items if not isinstance(i, Token)]) > 1:
                if any(isinstance(d, N.EllipsisItem) for d in shape.dims):
                    self.r.error(shape.span, "an input's alternatives have fixed ranks: no `...`")
                elif rank in ranks:
                    self.r.error(
                        shape.span,
                        f"an input's alternatives differ in rank: two have {rank} dim{'s' if rank != 1 else ''}",
                        "for any rank, write one shape with `...`",
                    )
                ranks.add(rank)
        if not alternatives.tensors:
            self.r.error(
                _span(meta),
                "an input that is only a tuple of ints is not supported",
                "write the tensor it may also be: `lengths: long[N] | ints`",
            )
        return alternatives

    def _flag(self, name: Token, type_tok: Token, maybe_none: Token | None, default) -> N.Input:
        """`need_weights: bool = true`: a plain bool input with its default, as torch's forwards take flags."""
        flag = default if isinstance(default, N.Bool) else N.Bool(_tspan(type_tok), False)
        if str(type_tok) != "bool" or maybe_none is not None:
            number = str(type_tok) in ("int", "float") and maybe_none is None
            self.r.error(
                _tspan(type_tok),
                f"an input is a tensor (`{name}: [B, n]`) or a bool flag (`{name}: bool = true`), not '{type_tok}'"
                + ("?" if maybe_none is not None else ""),
                (
                    f"a number the layer is built with is an argument: `layer ...(..., {name}: {type_tok})`; or give"
                    f" a tensor input its shape, e.g. `{name}: [B, n]`"
                    if number
                    else "give a tensor input its shape, e.g. `x: [B, n]`"
                ),
            )
            # (reported here: of no kind the checker knows, so it reports no follow-on error at its uses)
            return N.Input(str(name), _tspan(name), "float", None, mistyped=True)
        elif not isinstance(default, N.Bool):
            self.r.error(
                default.span if default is not None else _tspan(type_tok),
                f"flag '{name}' needs its default, `true` or `false`",
                f"write `{name}: bool = false`",
            )
        return N.Input(str(name), _tspan(name), "bool", None, flag=flag)

    def output(self, meta, items):
        shape, maybe_none = items
        return shape, maybe_none is not None

    def tensor_type(self, meta, items):
        dtype, shape = items
        return self._dtype(dtype), shape

    def tuple_type(self, meta, items):
        return [N.Input("", _span(meta), dtype, shape) for dtype, shape in items if shape is not None]

    def _dtype(self, tok: Token | None) -> str:
        if tok is None:
            return "float"
        if str(tok) not in DTYPES:
            hint = did_you_mean(str(tok), DTYPES) or "dtypes are float, long, int and bool"
            self.r.error(_tspan(tok), f"unknown dtype '{tok}'", hint)
        return str(tok)

    def outputs(self, meta, items):
        return [s for s in items if s is not None]

    def shape(self, meta, items):
        dims = [self._ellipsis(d) for d in items if d is not None]
        return N.Shape(_span(meta), dims)

    def _ellipsis(self, item):
        if isinstance(item, Token) and item.type == "ELLIPSIS":
            return N.EllipsisItem(_tspan(item))
        return item

    # -- statements

    def block(self, meta, items):
        return [s for s in items if s is not None]

    def assign(self, meta, items):
        target, value = items
        match target:
            case N.Name(id=name, span=span):
                return N.Assign(_span(meta), name, span, value)
            case N.Subscript(value=N.Name(id=name, span=span), items=idx):
                indices = [i for i in idx if isinstance(i, N.Name)]
                for i in idx:
                    if not isinstance(i, N.Name):
                        span_i = i.span
                        self.r.error(
                            span_i,
                            "the left side of an index statement holds bare index names",
                            "write e.g. `y[b, k] = ...`",
                        )
                return N.IndexAssign(_span(meta), name, span, indices, value)
        if not isinstance(target, Invalid):
            self.r.error(
                target.span,
                "cannot assign to this",
                "assign to a name: `y = ...`, or in index notation: `y[b, k] = ...`",
            )
        return None

    def unpack(self, meta, items):
        *names, value = [i for i in items if i is not None]
        return N.Unpack(_span(meta), [(str(n), _tspan(n)) for n in names], value)

    def update(self, meta, items):
        name, value = items
        return N.Update(_span(meta), str(name), _tspan(name), value)

    def if_stmt(self, meta, items):
        cond, body, orelse = items
        if isinstance(orelse, N.If):
            orelse = [orelse]
        return N.If(_span(meta), cond, body, orelse or [])

    def for_stmt(self, meta, items):
        var, iterable, body = _without_keywords(items)
        return N.For(_span(meta), str(var), _tspan(var), iterable, body)

    def append(self, meta, items):
        target, callargs = items
        args, kwargs = callargs if callargs is not None else ([], [])
        if isinstance(target, AttrChain) and target.dotted.count(".") == 1 and target.dotted.endswith(".append"):
            if len(args) == 1 and not kwargs:
                name = target.dotted.removesuffix(".append")
                at = target.span
                return N.Append(_span(meta), name, Span(at.line, at.col, at.line, at.col + len(name)), args[0])
            self.r.error(_span(meta), "append takes one tensor", "write e.g. `outputs.append(h)`")
            return None
        if not isinstance(target, Invalid):
            self.r.error(
                _span(meta),
                "a call is not a statement",
                "assign its value (`y = f(x)`); the one call statement is `outputs.append(h)`",
            )
        return None

    def return_stmt(self, meta, items):
        return N.Return(_span(meta), [v for v in items if v is not None])

    def require(self, meta, items):
        cond, guard, message = items
        return N.Require(_span(meta), cond, guard, self.string(meta, [message]) if message is not None else None)

    def grad(self, meta, items):
        name, value = items
        return N.Grad(_span(meta), str(name), _tspan(name), value)

    # -- expressions

    def or_(self, meta, items):
        return N.BoolOp(_span(meta), "or", items[0], items[1])

    def and_(self, meta, items):
        return N.BoolOp(_span(meta), "and", items[0], items[1])

    def not_(self, meta, items):
        return N.Not(_span(meta), items[0])

    def compare(self, meta, items):
        return N.Compare(_span(meta), [str(t) for t in items[1::2]], items[0::2])

    def binop(self, meta, items):
        left, op, right = items
        return N.BinOp(_span(meta), str(op), left, right)

    def pow(self, meta, items):
        left, right = items
        return N.BinOp(_span(meta), "**", left, right)

    def unary(self, meta, items):
        op, operand = items
        if isinstance(operand, N.Num) and str(op) == "-":
            return N.Num(_span(meta), -operand.value, "-" + operand.text)
        return N.UnaryOp(_span(meta), str(op), operand)

    def call(self, meta, items):
        func, callargs = items
        args, kwargs = callargs if callargs is not None else ([], [])
        match func:
            case N.Name(id=name, span=span):
                return N.Call(_span(meta), name, span, args, kwargs)
            case N.Subscript(value=N.Name(id=name), items=idx) if name in REDUCTIONS:
                return self._reduce(meta, name, idx, args, kwargs)
            case N.Subscript(value=N.Name(id=name, span=span), items=idx) if all(isinstance(i, N.Name) for i in idx):
                # Reported once, then read as a sum so that its indices count as reduced (no follow-on errors).
                self.r.error(span, f"'{name}[...]' is not a reduction", _reduction_hint(name))
                return self._reduce(meta, "sum", idx, args, kwargs)
            case AttrChain(dotted=dotted, span=span):
                return N.Call(_span(meta), dotted, span, args, kwargs)
        match func:
            case N.Call(func=inner) if inner.startswith("nn."):
                self.r.error(
                    func.span,
                    f"'{inner}' can only be constructed in a sub",
                    f"declare `sub name = {inner}(...)` and call `name(x)`",
                )
            case Invalid():
                pass  # already reported
            case _:
                self.r.error(func.span, "only operations and subs can be called", "write e.g. `relu(x)` or `layer1(x)`")
        return N.Call(_span(meta), "?", func.span, args, kwargs)

    def _reduce(self, meta, name, idx, args, kwargs):
        indices = []
        for i in idx:
            if isinstance(i, N.Name):
                indices.append(i)
            else:
                self.r.error(_espan(i), f"a {name}[...] reduction lists bare index names")
        if len(args) != 1 or kwargs:
            self.r.error(_span(meta), f"{name}[...](...) takes exactly one argument")
        body = args[0] if args else N.Num(_span(meta), 0, "0")
        return N.Reduce(_span(meta), name, indices, body)

    def subscript(self, meta, items):
        value, subs = items
        for item in subs:
            if isinstance(item, N.Slice) and isinstance(item.step, N.Num) and item.step.value == 0:
                self.r.error(
                    item.step.span, "a slice step cannot be zero", "write a step of 1 or more, or -1 to reverse"
                )
        flips = [k for k, i in enumerate(subs) if isinstance(i, N.Slice) and _negative(i.step)]
        if flips:
            return self._reversed(_span(meta), value, subs, flips)
        return N.Subscript(_span(meta), value, subs)

    def _reversed(self, span: Span, value: N.Expr, subs: list, flips: list[int]) -> N.Expr:
        """`x[::-1]` is `flip(x, [0])` (torch slices take positive steps only) and `x[i, ::-2]` is
        `flip(x, [1])[i, ::2]`: the dims are reversed first, then indexed with the steps made positive."""
        ell = next((k for k, i in enumerate(subs) if isinstance(i, N.EllipsisItem)), len(subs))
        dims: list[N.Expr] = []
        for k in flips:
            item = subs[k]
            if item.lower is not None or item.upper is not None:
                self.r.error(
                    item.span,
                    "a negative step is written without bounds here",
                    "slice first, then reverse: x[a:b][::-1], or flip(x[a:b], [dim])",
                )
            consumed = [i for i in (subs[:k] if k < ell else subs[k + 1 :]) if not isinstance(i, N.NoneLit)]
            dims.append(
                N.Num(item.span, len(consumed), str(len(consumed)))
                if k < ell
                else _negative_num(item.span, len(consumed) + 1)
            )
            step = (
                item.step.operand
                if isinstance(item.step, N.UnaryOp)
                else N.Num(item.step.span, -item.step.value, str(-item.step.value))
            )
            subs[k] = N.Slice(item.span, None, None, None if _is_one(step) else step)
        flipped = N.Call(span, "flip", span, [value, N.ListExpr(span, dims)], [])
        if all(
            isinstance(i, N.EllipsisItem) or (isinstance(i, N.Slice) and i.lower is i.upper is i.step is None)
            for i in subs
        ):
            return flipped
        return N.Subscript(span, flipped, subs)

    def subscripts(self, meta, items):
        return [self._ellipsis(i) for i in items if i is not None]

    def slice(self, meta, items):
        # The grammar keeps the colons (`!slice`), so that even `:` alone has a position.
        lower, _colon, upper, _colon2, step = items
        return N.Slice(_span(meta), lower, upper, step)

    def attr(self, meta, items):
        value, name = items
        match value:
            case N.Name(id=base) if name == "ndim" and base not in ("nn", "torch", "math", "F", "np", "numpy"):
                return N.Rank(_span(meta), value)  # a tensor's number of dims: rank branching
            case N.Name(id=base):
                return AttrChain(_span(meta), f"{base}.{name}")
            case AttrChain(dotted=base):
                return AttrChain(_span(meta), f"{base}.{name}")
        self.r.error(
            _span(meta),
            "attribute access is not part of the language",
            "dotted names exist only as `nn.X(...)` in a sub",
        )
        return Invalid(_span(meta))

    def name(self, meta, items):
        (tok,) = items
        return N.Name(_tspan(tok), str(tok))

    def family(self, meta, items):
        (tok,) = items
        text, at = str(tok), _tspan(tok)
        prefix, _, rest = text.partition("{")
        index, _, suffix = rest.partition("}")
        col = at.col + len(prefix) + 1
        name = N.Name(Span(at.line, col, at.line, col + len(index)), index)
        return N.FamilyName(at, N.family_key(text), prefix, name, suffix)

    def if_exp(self, meta, items):
        then, cond, orelse = items
        return N.IfExp(_span(meta), cond, then, orelse)

    def number(self, meta, items):
        (tok,) = items
        text = str(tok)
        is_float = any(c in text for c in ".eE")
        if not is_float and text.startswith("0") and text.strip("0"):  # as in Python: 007 is not an integer
            self.r.error(_tspan(tok), f"an integer cannot start with 0: '{text}'", f"write {text.lstrip('0')}")
        return N.Num(_tspan(tok), float(text) if is_float else int(text), text)

    def string(self, meta, items):
        (tok,) = items
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                value = ast.literal_eval(str(tok))
        except (SyntaxError, ValueError) as exc:
            self.r.error(_tspan(tok), f"invalid string: {exc.msg if isinstance(exc, SyntaxError) else exc}")
            value = ""
        for w in caught:  # Python keeps an unknown escape's backslash but warns that it will not for long
            if issubclass(w.category, (DeprecationWarning, SyntaxWarning)):
                self.r.error(_tspan(tok), str(w.message), "write `\\\\` for a backslash")
                break
        surrogate = next((c for c in value if 0xD800 <= ord(c) <= 0xDFFF), None)
        if surrogate is not None:  # no UTF-8 for it: Python cannot even make it a class's docstring
            self.r.error(
                _tspan(tok),
                f"a string cannot hold a lone surrogate (\\u{ord(surrogate):04x})",
                "write the character itself, or a `\\U` escape of its code point",
            )
            value = ""
        return N.Str(_tspan(tok), value)

    def true(self, meta, items):
        return N.Bool(_span(meta), True)

    def false(self, meta, items):
        return N.Bool(_span(meta), False)

    def none(self, meta, items):
        return N.NoneLit(_span(meta))

    def starred(self, meta, items):
        (tok,) = items
        return N.Spread(_span(meta), N.Name(_tspan(tok), str(tok)))

    def tuple(self, meta, items):
        return N.TupleExpr(_span(meta), [i for i in items if i is not None])

    def list(self, meta, items):
        return N.ListExpr(_span(meta), [self._ellipsis(i) for i in items if i is not None])  # `...`: reshape's

    def list_comp(self, meta, items):
        item, var, iterable = _without_keywords(items)
        return N.ListComp(_span(meta), item, N.Name(_tspan(var), str(var)), iterable)

    def callargs(self, meta, items):
        args, kwargs = [], []
        for item in items:
            if isinstance(item, N.Keyword):
                kwargs.append(item)
            elif kwargs:
                self.r.error(item.span, "positional argument after a keyword argument")
            else:
                args.append(item)
        return args, kwargs

    def kwarg(self, meta, items):
        name, value = items
        return N.Keyword(str(name), value, _tspan(name))

    def __default__(self, data, children, meta):  # pragma: no cover - every rule has a method
        raise AssertionError(f"no builder for rule {data}")


def _without_keywords(items: list) -> list:
    """A rule's children without its `for` and `in` (named terminals, so Lark keeps them)."""
    return [i for i in items if not (isinstance(i, Token) and i.type in ("FOR", "IN"))]


class Invalid(N.Expr):
    """Stands in for an expression the parser already reported, so that checking can go on; it has no
    kind, so it never causes a follow-on error."""


def _could_be_sub_member(dotted: str) -> bool:
    """`linear.weight` may name a sub's parameter (the checker knows the subs); `x.T`, `torch.pi` never do."""
    base, _, last = dotted.partition(".")
    return "." not in last and base not in ("nn", "torch", "math", "F", "np", "numpy") and last not in ("T", "mT")


class AttrChain(N.Expr):
    """A dotted name while it is being built (`nn.Conv2d`); only valid as the callee of a call."""

    def __init__(self, span: Span, dotted: str):
        super().__init__(span)
        self.dotted = dotted

    __match_args__ = ("span", "dotted")


def _negative(step: N.Expr | None) -> bool:
    """A step written as a negative number (`-1`, `-2`)."""
    match step:
        case N.UnaryOp(op="-", operand=N.Num(value=v)):
            return v > 0
        case N.Num(value=v):
            return v < 0
    return False


def _negative_num(span: Span, value: int) -> N.Expr:
    return N.UnaryOp(span, "-", N.Num(span, value, str(value)))


def _is_one(e: N.Expr) -> bool:
    return isinstance(e, N.Num) and e.value == 1
