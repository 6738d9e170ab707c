"""The one place the grammar file (`grammars/layer.lark`) is loaded into Lark: one cached parser per
configuration, and the post-lexer that gives newlines their meaning.

Three configurations, because each user needs the tree built differently:
- `file_parser`: whole spec files → the tree the IR builder reads (positions kept, punctuation dropped);
- `expression_parser`: one expression (the operation table's formulas and defaults): it starts at the
  `expr` rule and has no post-lexer, since the end-of-file newline the post-lexer adds ends a statement,
  which an expression alone must not have;
- `parse_keeping_tokens`: the formatter's parse, which keeps every token (`keep_all_tokens`) and hands
  back the newline tokens, which hold the comments, through a lexer callback.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator

from lark import Lark, Token, Tree

from layerdsl.resources import resource_dir

GRAMMAR_FILE = "layer.lark"


MAX_TOKENS = 10_000  # a spec's tokens: the LALR parser takes about 50 µs each


class TooManyTokens(Exception):
    """Raised by the post-lexer at the first token over MAX_TOKENS, before the parser spends seconds."""

    def __init__(self, token: Token):
        super().__init__(f"more than {MAX_TOKENS} tokens")
        self.token = token


class _Layout:
    """Post-lexer: newlines inside ( ) and [ ] and at the start of the file are dropped, and the file
    always ends with a newline token. It never looks ahead, which the contextual lexer relies on."""

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth = 0
        last = None
        for count, tok in enumerate(stream):
            if count >= MAX_TOKENS:
                raise TooManyTokens(tok)
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
            end_line, end_col = _end_position(last)
            yield Token("_NL", "", last.end_pos, end_line, end_col, end_line, end_col + 1, last.end_pos)


def _end_position(tok: Token) -> tuple[int, int]:
    """Where a lexed token ends. Lark types token positions as optional (a token can be built by hand);
    its lexer always sets them."""
    line = tok.end_line or tok.line
    col = tok.end_column or tok.column
    if line is None or col is None:
        raise ValueError(f"token {tok.type} has no position")
    return line, col


@functools.cache
def grammar_text() -> str:
    return (resource_dir("grammars") / GRAMMAR_FILE).read_text(encoding="utf-8")


@functools.cache
def file_parser(strict: bool = False) -> Lark:
    """The parser of whole spec files. `strict=True` makes any grammar conflict an error (for the
    grammar's own test; it needs the `interegular` package)."""
    return Lark(
        grammar_text(),
        parser="lalr",
        lexer="contextual",
        postlex=_Layout(),
        propagate_positions=True,
        maybe_placeholders=True,
        strict=strict,
        cache=not strict,
    )


@functools.cache
def expression_parser() -> Lark:
    """The parser of one expression of the spec language."""
    return Lark(
        grammar_text(),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=True,
        start="expr",
        cache=True,
    )


# The formatter's lexer callback appends every newline token to this list, under the lock: Lark takes
# its callbacks once, when the parser is built, so the list is shared by every parse.
_whitespace_lock = threading.Lock()
_whitespace: list[Token] = []


def _collect_whitespace(tok: Token) -> Token:
    _whitespace.append(tok)
    return tok


@functools.cache
def _token_keeping_parser() -> Lark:
    return Lark(
        grammar_text(),
        parser="lalr",
        lexer="contextual",
        postlex=_Layout(),
        keep_all_tokens=True,
        maybe_placeholders=False,
        lexer_callbacks={"_NL": _collect_whitespace, "_BEFORE_ELSE": _collect_whitespace},
        cache=True,
    )


def parse_keeping_tokens(text: str) -> tuple[Tree, list[Token]]:
    """The tree with every token kept, and every newline token the lexer produced (including those the
    post-lexer drops and those ignored before `else`), in source order. Raises lark's UnexpectedInput."""
    with _whitespace_lock:
        _whitespace.clear()
        try:
            tree = _token_keeping_parser().parse(text)
            return tree, list(_whitespace)
        finally:
            _whitespace.clear()


@functools.cache
def terminal_literals() -> dict[str, str]:
    """The text of every terminal that is a fixed string (`LPAR` → `(`, `__ANON_0` → `->`)."""
    return {t.name: t.pattern.value for t in file_parser().terminals if t.pattern.type == "str"}
