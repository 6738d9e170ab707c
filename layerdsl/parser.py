"""Parsing: spec text → Lark tree → IR (`nodes.SpecFile`), with syntax errors as located diagnostics.

The grammar is permissive where a precise message beats a parse error (assignment targets, defaults,
initialisers, `sub` calls); the builder below checks those shapes and reports through the `Reporter`.
"""

from __future__ import annotations

import ast
import functools

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from . import nodes as N
from .diagnostics import Reporter, Span, SpecError
from .resources import resource_dir

GRAMMAR_FILE = "layer.lark"


class _Layout:
    """Post-lexer: newlines inside ( ) and [ ] and at the start of the file are dropped, and the file
    always ends with a newline token. It never looks ahead, which the contextual lexer relies on."""

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        last = None
        for tok in stream:
            if tok.type == "_NL" and (depth > 0 or last is None or last.type == "_NL"):
                continue
            if tok.type in ("LPAR", "LSQB"):
                depth += 1
            elif tok.type in ("RPAR", "RSQB"):
                depth = max(0, depth - 1)
            last = tok
            yield tok
        if last is not None and last.type != "_NL":
            yield Token.new_borrow_pos("_NL", "\n", last)


@functools.lru_cache(maxsize=None)
def lark_parser(strict: bool = False) -> Lark:
    grammar = (resource_dir("grammars") / GRAMMAR_FILE).read_text(encoding="utf-8")
    return Lark(
        grammar,
        parser="lalr",
        lexer="contextual",
        postlex=_Layout(),
        propagate_positions=True,
        maybe_placeholders=True,
        strict=strict,
        cache=not strict,
    )


def parse_file(path: str, source: str) -> N.SpecFile:
    """Parse one spec file; raises SpecError with every problem the builder finds."""
    reporter = Reporter(path, source)
    try:
        tree = lark_parser().parse(source)
    except UnexpectedInput as exc:
        span, message, hint = _describe_syntax_error(exc, source)
        reporter.error(span, message, hint)
        reporter.raise_if_any()
    try:
        layers = _Builder(reporter).transform(tree)
    except VisitError as exc:  # a builder bug, not a spec problem: let it surface as one
        raise exc.orig_exc from None
    reporter.raise_if_any()
    return N.SpecFile(path, source, layers)


# ---------------------------------------------------------------- syntax errors

_DISPLAY = {
    "_NL": "a newline",
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "$END": "end of file",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "COMMA": "','",
    "COLON": "':'",
    "EQUAL": "'='",
    "DOT": "'.'",
    "AT": "'@'",
    "ELLIPSIS": "'...'",
    "__ANON_0": "'->'",
    "ADD_OP": "an operator",
    "MUL_OP": "an operator",
    "COMP_OP": "a comparison",
}


def _display(term: str) -> str:
    if term in _DISPLAY:
        return _DISPLAY[term]
    return f"'{term.lower()}'" if term.isalpha() else term


def _describe_syntax_error(exc: UnexpectedInput, source: str) -> tuple[Span, str, str | None]:
    if isinstance(exc, UnexpectedCharacters):
        span = Span.point(exc.line, exc.column)
        char = source[exc.pos_in_stream] if exc.pos_in_stream < len(source) else ""
        if char == '"':
            return span, "unterminated string", "close it with a matching '\"' (or '\"\"\"' for a multi-line string)"
        if char == "'":
            return span, "strings use double quotes", 'write "..." instead of \'...\''
        return span, f"unexpected character {char!r}", None
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        line = source.count("\n") + 1
        col = len(source.rsplit("\n", 1)[-1]) + 1
        return Span.point(line, col), "unexpected end of file", "is a '}' missing?"
    assert isinstance(exc, UnexpectedToken)
    tok = exc.token
    expected = sorted(exc.expected, key=_display)
    if tok.type == "_NL":
        span = Span.point(tok.line, tok.column)
        what = "unexpected end of line"
    else:
        span = Span(tok.line, tok.column, tok.end_line or tok.line, tok.end_column or tok.column + 1)
        what = f"unexpected {tok.value!r}"
    hint = None
    if tok.type == "NAME" and tok.value in ("True", "False", "None"):
        hint = f"did you mean '{tok.value.lower()}'?"
    if len(expected) <= 6:
        return span, f"{what}; expected {' or '.join(_display(e) for e in expected)}", hint
    return span, what, hint


# ---------------------------------------------------------------- tree → IR


def _span(meta) -> Span:
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


def _tspan(tok: Token) -> Span:
    return Span(tok.line, tok.column, tok.end_line, tok.end_column)


def _espan(node) -> Span:
    if isinstance(node, Token):
        return _tspan(node)
    return node.span


_INIT_NAMES_AS_CALLS = True


@v_args(meta=True)
class _Builder(Transformer):
    """Builds IR nodes bottom-up; reports misplaced constructs instead of failing."""

    def __init__(self, reporter: Reporter):
        super().__init__()
        self.r = reporter

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
                    self.r.error(span, "a docstring may only be the first item of a layer's body")
                layer.docstring = text
            case N.Tensor():
                layer.tensors.append(member)
            case N.Sub():
                layer.subs.append(member)
            case N.Let():
                layer.lets.append(member)
            case list():  # example(...)
                layer.examples.extend(member)
            case N.Forward():
                if layer.forward is not None:
                    self.r.error(member.span, f"layer '{layer.name}' has a second forward", "a layer has exactly one forward")
                else:
                    layer.forward = member
            case N.Backward():
                if layer.backward is not None:
                    self.r.error(member.span, f"layer '{layer.name}' has a second backward")
                else:
                    layer.backward = member

    def decorator(self, meta, items):
        name, callargs = items
        args, kwargs = callargs if callargs is not None else ([], [])
        return N.Decorator(str(name), _span(meta), args, kwargs)

    def argdef(self, meta, items):
        name, type_tok, default = items
        return N.Arg(str(name), _tspan(name), str(type_tok), _tspan(type_tok), default)

    def docstring(self, meta, items):
        s = self.string(meta, items)
        return ("docstring", s.span, s.value)

    def param(self, meta, items):
        name, shape, init, cond = items
        return N.Tensor("param", str(name), _tspan(name), "float", shape, self._init(init), cond)

    def buffer(self, meta, items):
        transient, name, dtype, shape, init, cond = items
        return N.Tensor(
            "buffer",
            str(name),
            _tspan(name),
            str(dtype) if dtype is not None else "float",
            shape,
            self._init(init),
            cond,
            persistent=transient is None,
        )

    def _init(self, expr) -> N.Init | None:
        match expr:
            case None:
                return None
            case N.Name(id=name, span=span):
                return N.Init(name, span, [], [])
            case N.Call(func=name, func_span=span, args=args, kwargs=kwargs) if "." not in name:
                return N.Init(name, span, args, kwargs)
        self.r.error(expr.span, "an initialiser is a name or a call", "e.g. `= zeros` or `= normal(0, 0.02)`")
        return None

    def sub(self, meta, items):
        name, expr = items
        if not isinstance(expr, N.Call):
            self.r.error(expr.span, "a sub is a call to a layer", "e.g. `sub fc = Linear(in_features, 10)` or `sub act = nn.ReLU()`")
            expr = N.Call(expr.span, "?", expr.span, [], [])
        return N.Sub(str(name), _tspan(name), expr)

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
        return N.Forward(_span(meta), [i for i in inputs if i is not None], outputs, body)

    def backward(self, meta, items):
        *names, body = items
        return N.Backward(_span(meta), [(str(n), _tspan(n)) for n in names if n is not None], body)

    def input(self, meta, items):
        name, dtype, shape = items
        return N.Input(str(name), _tspan(name), str(dtype) if dtype is not None else "float", shape)

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
                        self.r.error(span_i, "the left side of an index statement holds bare index names", "write e.g. `y[b, k] = ...`")
                return N.IndexAssign(_span(meta), name, span, indices, value)
        self.r.error(target.span, "cannot assign to this", "assign to a name: `y = ...`, or in index notation: `y[b, k] = ...`")
        return None

    def update(self, meta, items):
        name, value = items
        return N.Update(_span(meta), str(name), _tspan(name), value)

    def if_stmt(self, meta, items):
        cond, body, orelse = items
        if isinstance(orelse, N.If):
            orelse = [orelse]
        return N.If(_span(meta), cond, body, orelse or [])

    def return_stmt(self, meta, items):
        return N.Return(_span(meta), [v for v in items if v is not None])

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
            case N.Subscript(value=N.Name(id=name), items=idx) if name in ("sum", "mean", "amax", "amin"):
                return self._reduce(meta, name, idx, args, kwargs)
            case AttrChain(dotted=dotted, span=span):
                return N.Call(_span(meta), dotted, span, args, kwargs)
        self.r.error(func.span, "only operations, layers and nn.* constructors can be called")
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
        return N.Subscript(_span(meta), value, subs)

    def subscripts(self, meta, items):
        return [self._ellipsis(i) for i in items if i is not None]

    def slice(self, meta, items):
        lower, upper, step = items
        return N.Slice(_span(meta) if not meta.empty else Span(0, 0, 0, 0), lower, upper, step)

    def attr(self, meta, items):
        value, name = items
        match value:
            case N.Name(id=base):
                return AttrChain(_span(meta), f"{base}.{name}")
            case AttrChain(dotted=base):
                return AttrChain(_span(meta), f"{base}.{name}")
        self.r.error(_span(meta), "attribute access is not part of the language", "only `nn.X` constructors are written with a dot")
        return N.NoneLit(_span(meta))

    def name(self, meta, items):
        (tok,) = items
        return N.Name(_tspan(tok), str(tok))

    def number(self, meta, items):
        (tok,) = items
        text = str(tok)
        is_float = any(c in text for c in ".eE")
        return N.Num(_tspan(tok), float(text) if is_float else int(text), text)

    def string(self, meta, items):
        (tok,) = items
        try:
            value = ast.literal_eval(str(tok))
        except (SyntaxError, ValueError) as exc:
            self.r.error(_tspan(tok), f"invalid string: {exc.msg if isinstance(exc, SyntaxError) else exc}")
            value = ""
        return N.Str(_tspan(tok), value)

    def true(self, meta, items):
        return N.Bool(_span(meta), True)

    def false(self, meta, items):
        return N.Bool(_span(meta), False)

    def none(self, meta, items):
        return N.NoneLit(_span(meta))

    def list(self, meta, items):
        return N.ListExpr(_span(meta), [i for i in items if i is not None])

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


class AttrChain(N.Expr):
    """A dotted name while it is being built (`nn.Conv2d`); only valid as the callee of a call."""

    def __init__(self, span: Span, dotted: str):
        super().__init__(span)
        self.dotted = dotted

    __match_args__ = ("span", "dotted")
