"""Syntax errors as located diagnostics: what Lark reports (an unexpected character, token or end of
file) turned into a span, a message in the spec's own words and, where one helps, a hint."""

from __future__ import annotations

import difflib
import re
from typing import cast

from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from layerdsl.diagnostics import Diagnostic, Span
from layerdsl.language.tables import RESERVED
from layerdsl.syntax.grammar import terminal_literals

_DISPLAY = {
    "_NL": "a newline",
    "NAME": "a name",
    "FAMILY": "a family's member (`weight_l{k}`)",
    "FOR": "'for'",
    "IN": "'in'",
    "NUMBER": "a number",
    "STRING": "a string",
    "$END": "end of file",
    "ADD_OP": "an operator",
    "MUL_OP": "an operator",
    "COMP_OP": "a comparison",
}
# Sets of terminals shown as one word: whatever can start an expression, a member or a statement.
_EXPR_START = {"NAME", "NUMBER", "STRING", "LPAR", "LSQB", "ADD_OP", "NOT", "TRUE", "FALSE", "NONE", "FAMILY"}
_MEMBER_START = {"PARAM", "BUFFER", "TRANSIENT", "SUB", "INIT", "LET", "EXAMPLE", "FORWARD", "BACKWARD", "FOR"}
_STMT_START = {"IF", "RETURN", "UPDATE", "GRAD", "FOR"}
_MEMBER_HINT = "a layer's body holds param, buffer, transient buffer, sub, init, let, example, forward and backward"
_STMT_HINT = "a statement is `NAME = ...`, `update NAME = ...`, `if ... { }`, `return ...` or `grad NAME = ...`"
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
    "\r": "a line ends with '\\n' or '\\r\\n', not a lone '\\r' (an old Mac line end): convert the file's line ends",
}


def _display(term: str) -> str:
    if term in _DISPLAY:
        return _DISPLAY[term]
    literal = terminal_literals().get(term)
    if literal is not None:
        return f"'{literal}'"
    return f"'{term.lower()}'" if term.isalpha() else term


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


def syntax_diagnostic(exc: UnexpectedInput, path: str, source: str) -> Diagnostic:
    """The diagnostic for a syntax error Lark raised while parsing `source`."""
    span, message, hint = describe_syntax_error(exc, source)
    return Diagnostic(path, span, message, hint, source=source)


def error_line(exc: UnexpectedInput, source: str) -> int:
    """The line a syntax error is on (the last line for an unexpected end of file)."""
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        return source.count("\n") + 1
    return getattr(exc, "line", 1) or 1


def describe_syntax_error(exc: UnexpectedInput, source: str) -> tuple[Span, str, str | None]:
    """Where a syntax error is, what to say about it, and a hint (or None)."""
    if isinstance(exc, UnexpectedCharacters):
        span = Span.point(exc.line, exc.column)
        # Lark declares `pos_in_stream = None` on the base class; UnexpectedCharacters always sets it.
        pos = cast(int, exc.pos_in_stream)
        char = source[pos] if pos < len(source) else ""
        if char == '"':
            if source.startswith('"""', pos) and '\\"""' in source[pos + 3 :]:
                kept = 'a docstring is its text as written: `\\"""` keeps the three quotes in it and does not end it'
                return span, "unterminated string", kept
            return span, "unterminated string", "close it with a matching '\"' (or '\"\"\"' for a multi-line string)"
        if char == "'":
            return span, "strings use double quotes", "write \"...\" instead of '...'"
        if char == "." and source.startswith("..", pos):
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
            closer = ")" if ch == "(" else "]"
            return Span.point(line, col), f"'{ch}' was never closed", f"a '{closer}' is missing before line {tok.line}"
    next_text = source[offset:].lstrip(" \t\f\r\n")
    if tok.type == "NAME" and tok.value in ("True", "False", "None"):
        hint = f"did you mean '{tok.value.lower()}'?"
    elif tok.value in ("require", "return", "update") and "PARAM" in accepts:  # a statement among members
        hint = f"`{tok.value}` begins a statement: write it inside `forward(...) {{ ... }}`"
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
    elif set(accepts) - {"COMMA"} == {"DOT", "EQUAL", "LPAR", "LSQB"}:  # a comma: `h, c = hx`
        hint = "an expression cannot stand alone: assign it (`y = ...`) or return it"
    elif before in RESERVED and tok.type in ("EQUAL", "COLON", "LPAR"):
        hint = f"'{before}' is a reserved word and cannot be a name"
    elif tok.value in RESERVED and "NAME" in accepts:
        hint = f"'{tok.value}' is a reserved word and cannot be a name"
    elif tok.type == "COMMA" and "RPAR" in accepts and "COMMA" not in accepts and unclosed and unclosed[-1][0] == "(":
        hint = "there are no tuples: write a list, `[1, 2]` (a tuple in Python)"
    elif tok.type == "COMMA" and "LBRACE" in accepts and "->" in line_text:
        hint = "several outputs are written in parentheses: `-> ([B, n], [B, n])`"
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
