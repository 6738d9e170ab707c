"""Parsing: spec text → Lark tree → IR (`nodes.SpecFile`), with syntax errors as located diagnostics.

The grammar is permissive where a precise message beats a parse error (assignment targets, defaults,
initialisers, `sub` calls); the builder below checks those shapes and reports through the `Reporter`.
"""

from __future__ import annotations

import ast
import difflib
import functools
import re
import warnings
from dataclasses import dataclass, field

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from layerdsl.diagnostics import Diagnostic, Reporter, Span, did_you_mean
from layerdsl.ir import nodes as N
from layerdsl.language.tables import DTYPES
from layerdsl.resources import resource_dir

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
            # Placed just after the last token; its empty value marks it as the end of the file.
            end_line, end_col = last.end_line or last.line, last.end_column or last.column
            yield Token("_NL", "", last.end_pos, end_line, end_col, end_line, end_col + 1, last.end_pos)


@functools.cache
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


@dataclass(eq=False)
class ParsedFile(N.SpecFile):
    """A parsed spec file with the problems found while parsing it, reported by `checker.check_program`
    together with every semantic error, so that one run shows them all."""

    problems: list[Diagnostic] = field(default_factory=list)
    # Layers lost to a syntax error: other layers that use them get no follow-on "unknown layer" error.
    broken: set[str] = field(default_factory=set)


def parse_file(path: str, source: str, strict: bool = False) -> ParsedFile:
    """Parse one spec file into IR.

    At most one syntax error is reported per file; the layers it does not touch are still parsed. Problems
    found while building the IR (a second forward, a misplaced docstring, ...) leave a usable IR. With
    `strict=False` (what `compiler` uses) all of them are kept in `ParsedFile.problems` and raised by
    `check_program` along with the semantic errors; with `strict=True` they are raised here as a SpecError.
    """
    if source.startswith("\ufeff"):  # a byte-order mark: read as a space, so that columns stay those of the text
        source = " " + source[1:]
    reporter = Reporter(path, source)
    tree, broken = _parse_salvaging(source, reporter)
    if tree is not None and (deep := _too_deep(tree)) is not None:
        reporter.error(
            deep,
            "this expression is nested too deeply",
            f"split it into several statements (at most {MAX_DEPTH} levels)",
        )
        tree = None
        broken |= {m.group(1) for m in re.finditer(r"^[ \t]*layer\s+([A-Za-z_][A-Za-z0-9_]*)", source, re.M)}
    layers = []
    if tree is not None:
        try:
            layers = _Builder(reporter).transform(tree)
        except VisitError as exc:  # a builder bug, not a spec problem: let it surface as one
            raise exc.orig_exc from None
    if strict:
        reporter.raise_if_any()
    return ParsedFile(path, source, layers, list(reporter.diagnostics), broken)


_LAYER_LINE = re.compile(r"layer\s+([A-Za-z_][A-Za-z0-9_]*)")


def _parse_salvaging(source: str, reporter: Reporter) -> tuple[Tree | None, set[str]]:
    """Parse `source`; on a syntax error, report it, then blank out the layer declaration that holds it
    (and any other that still fails, without reporting those: they may only be follow-ons) so that the
    remaining layers are still parsed and checked. Returns the tree (None when nothing is left) and the
    names of the layers that were blanked out."""
    try:
        return lark_parser().parse(source), set()
    except UnexpectedInput as exc:
        span, message, hint = _describe_syntax_error(exc, source)
        reporter.error(span, message, hint)
        error_line = _error_line(exc, source)
    lines = source.splitlines(keepends=True)
    # Chunks: each layer declaration starts at a line beginning with `layer` (or its decorators); the
    # text before the first one is a chunk of its own.
    starts = [0]
    for i, line in enumerate(lines):
        if _LAYER_LINE.match(line):
            first = i
            while first > 0 and lines[first - 1].startswith("@"):
                first -= 1
            if first > starts[-1]:
                starts.append(first)
    bounds = list(zip(starts, starts[1:] + [len(lines)]))
    blanked: set[int] = set()
    broken: set[str] = set()
    for _ in range(len(bounds)):
        line_index = min(max(error_line - 1, 0), max(len(lines) - 1, 0))
        chunk = max(i for i, (lo, _hi) in enumerate(bounds) if lo <= line_index or i == 0)
        while chunk in blanked and chunk > 0:
            chunk -= 1
        if chunk in blanked:
            break
        blanked.add(chunk)
        lo, hi = bounds[chunk]
        for i in range(lo, hi):
            m = _LAYER_LINE.match(lines[i].lstrip())
            if m:
                broken.add(m.group(1))
            lines[i] = "\n" if lines[i].endswith("\n") else ""
        try:
            return lark_parser().parse("".join(lines)), broken
        except UnexpectedInput as exc:
            error_line = _error_line(exc, "".join(lines))
    broken.update(m.group(1) for m in re.finditer(r"^[ \t]*layer\s+([A-Za-z_][A-Za-z0-9_]*)", source, re.M))
    return None, broken


MAX_DEPTH = 100  # levels of nesting in the tree: the passes after parsing recurse over it


def _too_deep(tree: Tree) -> Span | None:
    """The expression in which the tree is nested more than MAX_DEPTH levels, found without recursion."""
    stack = [(tree, 0, tree)]
    while stack:
        node, depth, root = stack.pop()
        if depth > MAX_DEPTH:
            return Span(root.meta.line, root.meta.column, root.meta.end_line, root.meta.end_column)
        for child in node.children:
            if isinstance(child, Tree):
                stack.append((child, depth + 1, child if node.data in _STRUCTURE else root))
    return None


# Rules that are not expressions: an expression starts below one of them.
_STRUCTURE = frozenset(
    "start layer decorator argdef param buffer sub let example forward backward input outputs shape block "
    "assign update if_stmt return_stmt grad docstring".split()
)


def _error_line(exc: UnexpectedInput, source: str) -> int:
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        return source.count("\n") + 1
    return getattr(exc, "line", 1) or 1


# ---------------------------------------------------------------- syntax errors

_DISPLAY = {
    "_NL": "a newline",
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "$END": "end of file",
    "ADD_OP": "an operator",
    "MUL_OP": "an operator",
    "COMP_OP": "a comparison",
}
# Sets of terminals shown as one word: whatever can start an expression, a member or a statement.
_EXPR_START = {"NAME", "NUMBER", "STRING", "LPAR", "LSQB", "ADD_OP", "NOT", "TRUE", "FALSE", "NONE"}
_MEMBER_START = {"PARAM", "BUFFER", "TRANSIENT", "SUB", "LET", "EXAMPLE", "FORWARD", "BACKWARD"}
_STMT_START = {"IF", "RETURN", "UPDATE", "GRAD"}
_MEMBER_HINT = "a layer's body holds param, buffer, transient buffer, sub, let, example, forward and backward"
_STMT_HINT = "a statement is `NAME = ...`, `update NAME = ...`, `if ... { }`, `return ...` or `grad NAME = ...`"
_RESERVED = (
    "layer param buffer transient sub let example forward backward update grad return if else and or not "
    "true false none".split()
)
_CHAR_HINTS = {
    "'": 'strings use double quotes: "..."',
    "^": "write powers as `x ** 2`",
    "&": "there are no bitwise operators: use `and` on arguments, where() or * on tensors",
    "|": "there are no bitwise operators: use `or` on arguments, where() or maximum() on tensors",
    "!": "write `not x`, or `a != b`",
    ";": "statements end at a newline; drop the ';'",
    "~": "there are no bitwise operators: write `not x` for arguments",
    "`": "names are written without quotes",
    "\\": "a backslash continues a line only at its very end",
    "?": "there is no conditional expression: write an `if` statement or where(cond, a, b)",
}


def _display(term: str) -> str:
    if term in _DISPLAY:
        return _DISPLAY[term]
    literal = _literals().get(term)
    if literal is not None:
        return f"'{literal}'"
    return f"'{term.lower()}'" if term.isalpha() else term


@functools.cache
def _literals() -> dict[str, str]:
    """The text of every terminal that is a fixed string (`LPAR` → `(`, `__ANON_0` → `->`)."""
    return {t.name: t.pattern.value for t in lark_parser().terminals if t.pattern.type == "str"}


def _expected(terms) -> list[str]:
    terms = set(terms) - {"_BEFORE_ELSE"}
    words = []
    if {"PARAM", "FORWARD"} <= terms:
        terms -= _MEMBER_START | {"STRING"}
        words.append("a member")
    if {"NAME", "NUMBER", "LPAR"} <= terms:
        terms -= _EXPR_START
        if {"RETURN", "IF"} <= terms:
            terms -= _STMT_START
            words.append("a statement")
        else:
            words.append("an expression")
    words += sorted(_display(t) for t in terms)
    return words


def _brackets(source: str, upto: int | None = None) -> tuple[list[tuple[str, int]], tuple[str, int] | None]:
    """Scans brackets outside strings and comments, up to offset `upto`: returns the openers left unclosed
    (outermost first) and the first closer that has no opener, each with its offset."""
    stack: list[tuple[str, int]] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for m in _BRACKET_SCAN.finditer(source, 0, len(source) if upto is None else upto):
        ch = m.group()
        if ch in "([{":
            stack.append((ch, m.start()))
        elif ch in pairs:
            if not stack:
                return stack, (ch, m.start())
            stack.pop()
    return stack, None


_BRACKET_SCAN = re.compile(r'"""(?:[^"\\]|\\[\s\S]|"(?!""))*(?:"""|$)|"(?:[^"\\\n]|\\.)*"?|#[^\n]*|[()\[\]{}]')


def _position(source: str, offset: int) -> tuple[int, int]:
    """1-based line and column of an offset."""
    line = source.count("\n", 0, offset) + 1
    col = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return line, col


def _word_before(source: str, offset: int) -> str:
    m = re.search(r"([A-Za-z_][A-Za-z0-9_]*)[ \t]*$", source[max(0, offset - 80) : offset])
    return m.group(1) if m else ""


def _describe_syntax_error(exc: UnexpectedInput, source: str) -> tuple[Span, str, str | None]:
    if isinstance(exc, UnexpectedCharacters):
        span = Span.point(exc.line, exc.column)
        char = source[exc.pos_in_stream] if exc.pos_in_stream < len(source) else ""
        if char == '"':
            return span, "unterminated string", "close it with a matching '\"' (or '\"\"\"' for a multi-line string)"
        if char == "'":
            return span, "strings use double quotes", "write \"...\" instead of '...'"
        if char == "." and source.startswith("..", exc.pos_in_stream):
            return span, "unexpected '..'", "write '...' for any number of leading dims"
        hint = _CHAR_HINTS.get(char)
        if hint is None and char.isalpha():
            hint = "names use ASCII letters, digits and '_'"
        return span, f"unexpected character {char!r}", hint
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        return _describe_eof(exc, source, len(source))
    assert isinstance(exc, UnexpectedToken)
    tok = exc.token
    if tok.type == "_NL" and tok.value == "":  # the newline the post-lexer adds at the end of the file
        return _describe_eof(exc, source, tok.start_pos or len(source))
    accepts = getattr(exc, "accepts", None) or exc.expected
    expected = _expected(accepts)
    offset = tok.start_pos or 0
    if tok.type == "_NL":
        span = Span.point(tok.line, tok.column)
        what = "unexpected end of line"
    else:
        span = Span(tok.line, tok.column, tok.end_line or tok.line, tok.end_column or tok.column + 1)
        what = f"unexpected {tok.value!r}"
    line_text = source[source.rfind("\n", 0, offset) + 1 : offset]
    before = _word_before(source, offset)
    hint = None
    opened, stray = _brackets(source, offset + 1)
    if stray is not None and stray[1] == offset:
        return span, f"unmatched {tok.value!r}", "there is no bracket for it to close"
    unclosed, _ = _brackets(source, offset)
    if unclosed and unclosed[-1][0] in "([" and (tok.value in _NEVER_IN_BRACKETS or tok.type == "RBRACE"):
        ch, at = unclosed[-1]
        if "\n" in source[at:offset]:  # the bracket runs on into the next declaration or statement
            line, col = _position(source, at)
            close = ")" if ch == "(" else "]"
            return Span.point(line, col), f"'{ch}' was never closed", f"a '{close}' is missing before line {tok.line}"
    next_text = source[offset:].lstrip(" \t\f\r\n")
    if tok.type == "NAME" and tok.value in ("True", "False", "None"):
        hint = f"did you mean '{tok.value.lower()}'?"
    elif tok.type == "_NL" and "LBRACE" in accepts and next_text.startswith("{"):
        hint = "the '{' goes on the same line"
    elif tok.type == "_NL" and "an expression" in expected:
        hint = "to continue an expression on the next line, wrap it in ( )"
    elif tok.type == "LBRACE" and "LPAR" in accepts and re.search(r"\blayer\s+\w+\s*$", line_text):
        hint = f"a layer without arguments is written `layer {before}() {{`"
    elif tok.value == "layer" and opened:
        hint = "is a '}' missing above?"
    elif tok.type == "IF" and "IF" not in accepts:
        if re.search(r"\bif\b.*\belse\b", source[offset : source.find("\n", offset) % (len(source) + 1)]):
            hint = "there is no conditional expression: write an `if` statement or where(cond, a, b)"
        elif re.match(r"\s*(sub|let)\b", line_text):
            hint = "only params and buffers can have a condition"
    elif before == "elif" or tok.value == "elif":
        hint = "write `else if`"
    elif set(accepts) == {"DOT", "EQUAL", "LPAR", "LSQB"}:
        hint = "an expression cannot stand alone: assign it (`y = ...`) or return it"
    elif before in _RESERVED and tok.type in ("EQUAL", "COLON", "LPAR"):
        hint = f"'{before}' is a reserved word and cannot be a name"
    elif tok.value in _RESERVED and "NAME" in accepts:
        hint = f"'{tok.value}' is a reserved word and cannot be a name"
    elif tok.type == "COLON" and "LBRACE" in accepts:
        hint = "blocks are written in braces: `{ ... }`"
    elif tok.type in ("NAME", "NUMBER", "STRING") and "COMMA" in accepts:
        hint = "is a ',' missing before it?"
    elif tok.type == "NAME" and "PARAM" in accepts:
        close = difflib.get_close_matches(tok.value.lower(), [*_MEMBER_START_WORDS, "transient"], n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else _MEMBER_HINT
    elif tok.type == "NAME" and "RETURN" in accepts:
        close = difflib.get_close_matches(tok.value.lower(), ["return", "update", "grad", "if"], n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else _STMT_HINT
    if len(expected) <= 6:
        return span, f"{what}; expected {' or '.join(expected)}", hint
    return span, what, hint


_MEMBER_START_WORDS = ["param", "buffer", "sub", "let", "example", "forward", "backward"]
# Words that start a declaration or a statement: never inside ( ) or [ ].
_NEVER_IN_BRACKETS = frozenset(_MEMBER_START_WORDS + ["transient", "update", "return", "grad", "layer", "if"])


def _describe_eof(exc: UnexpectedInput, source: str, end: int) -> tuple[Span, str, str | None]:
    opened, _ = _brackets(source)
    if opened:
        ch, offset = opened[-1]
        line, col = _position(source, offset)
        close = {"(": ")", "[": "]", "{": "}"}[ch]
        return Span.point(line, col), f"'{ch}' was never closed", f"the file ends before its '{close}'"
    body = source[:end].rstrip()
    line, col = _position(source, len(body))
    expected = _expected(getattr(exc, "accepts", None) or getattr(exc, "expected", None) or ())
    message = "unexpected end of file"
    if expected and len(expected) <= 6:
        message += f"; expected {' or '.join(expected)}"
    return Span.point(line, col), message, None


# ---------------------------------------------------------------- tree → IR


def _span(meta) -> Span:
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


def _tspan(tok: Token) -> Span:
    return Span(tok.line, tok.column, tok.end_line, tok.end_column)


def _keyword(span: Span, word: str) -> Span:
    """The span of the keyword that starts a construct."""
    return Span(span.line, span.col, span.line, span.col + len(word))


def _espan(node) -> Span:
    if isinstance(node, Token):
        return _tspan(node)
    return node.span


@v_args(meta=True)
class _Builder(Transformer):
    """Builds IR nodes bottom-up; reports misplaced constructs instead of failing."""

    def __init__(self, reporter: Reporter):
        super().__init__()
        self.r = reporter

    def _call_userfunc(self, tree, new_children=None):
        # A dotted name is only valid as what is called (`nn.Conv2d(...)`): anywhere else, report it here
        # and go on with a placeholder.
        children = list(tree.children if new_children is None else new_children)
        for i, child in enumerate(children):
            if isinstance(child, AttrChain) and not (tree.data in ("call", "attr") and i == 0):
                if tree.data == "sub":
                    self.r.error(child.span, "a sub is a call to a layer", f"write `{child.dotted}(...)`")
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
                "write transpose(x, -2, -1)"
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
            case N.Sub():
                layer.subs.append(member)
            case N.Let():
                layer.lets.append(member)
            case list():  # example(...)
                layer.examples.extend(member)
            case N.Forward():
                if layer.forward is not None:
                    first = layer.forward.span
                    self.r.error(
                        _keyword(member.span, "forward"),
                        f"layer '{layer.name}' has a second forward",
                        f"a layer has exactly one; the first is at line {first.line}",
                    )
                else:
                    layer.forward = member
            case N.Backward():
                if layer.backward is not None:
                    first = layer.backward.span
                    self.r.error(
                        _keyword(member.span, "backward"),
                        f"layer '{layer.name}' has a second backward",
                        f"a layer has at most one; the first is at line {first.line}",
                    )
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
        if not isinstance(expr, N.Call):
            if not isinstance(expr, Invalid):
                self.r.error(
                    expr.span,
                    "a sub is a call to a layer",
                    "e.g. `sub fc = Linear(in_features, 10)` or `sub act = nn.ReLU()`",
                )
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
        return N.Input(str(name), _tspan(name), self._dtype(dtype), shape)

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
        return N.Subscript(_span(meta), value, subs)

    def subscripts(self, meta, items):
        return [self._ellipsis(i) for i in items if i is not None]

    def slice(self, meta, items):
        # The grammar keeps the colons (`!slice`), so that even `:` alone has a position.
        lower, _colon, upper, _colon2, step = items
        return N.Slice(_span(meta), lower, upper, step)

    def attr(self, meta, items):
        value, name = items
        match value:
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

    def number(self, meta, items):
        (tok,) = items
        text = str(tok)
        is_float = any(c in text for c in ".eE")
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


class Invalid(N.Expr):
    """Stands in for an expression the parser already reported, so that checking can go on; it has no
    kind, so it never causes a follow-on error."""


class AttrChain(N.Expr):
    """A dotted name while it is being built (`nn.Conv2d`); only valid as the callee of a call."""

    def __init__(self, span: Span, dotted: str):
        super().__init__(span)
        self.dotted = dotted

    __match_args__ = ("span", "dotted")
