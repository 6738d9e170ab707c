"""Parsing: spec text → Lark tree → IR, with syntax errors as located diagnostics.

Three entries: `parse_file` (the CLI's: salvages the layers a syntax error does not touch),
`parse_partial` (the language server's: keeps the Lark tree, and gives no IR on a syntax error) and
`parse_expr` (one expression, for the operation table's formulas and defaults). All three read the text
through `normalize_source`, so that they agree on what a file says.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from lark import Token, Tree
from lark.exceptions import UnexpectedInput, VisitError

from layerdsl.diagnostics import Diagnostic, Reporter, Span, SpecError
from layerdsl.ir import nodes as N
from layerdsl.syntax.builder import IRBuilder
from layerdsl.syntax.errors import error_line, syntax_diagnostic
from layerdsl.syntax.grammar import MAX_TOKENS, TooManyTokens, expression_parser, file_parser

BYTE_ORDER_MARK = "\ufeff"


def normalize_source(text: str) -> str:
    """The text as the parser reads it: a leading byte-order mark reads as a space, so that every column
    stays that of the text (in code points and in UTF-16 units alike)."""
    if text.startswith(BYTE_ORDER_MARK):
        return " " + text[1:]
    return text


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
    `strict=False` (what the pipeline uses) all of them are kept in `ParsedFile.problems` and raised by
    `check_program` along with the semantic errors; with `strict=True` they are raised here as a SpecError.
    """
    source = normalize_source(source)
    reporter = Reporter(path, source)
    try:
        tree, broken = _parse_salvaging(source, reporter) if _size_allowed(source, reporter) else (None, set())
    except TooManyTokens as exc:
        reporter.diagnostics.append(too_many_tokens(exc, path, source))
        tree, broken = None, set()
    if tree is None:
        broken |= _layer_names(source)
    if tree is not None and not _within_bounds(tree, reporter):
        tree = None
        broken |= _layer_names(source)
    layers = _build(tree, reporter) if tree is not None else []
    if strict:
        reporter.raise_if_any()
    return ParsedFile(path, source, layers, list(reporter.diagnostics), broken)


class PartialParse(NamedTuple):
    """What `parse_partial` built: the IR (None on a syntax error; with builder errors it holds every
    layer built), every diagnostic, and the Lark tree (None on a syntax error)."""

    spec: N.SpecFile | None
    diagnostics: list[Diagnostic]
    tree: Tree | None


def parse_partial(path: str, source: str) -> PartialParse:
    """Parse one spec file for the language server: like `parse_file`, but without salvaging layers
    after a syntax error, and keeping the tree (the server reads the layers' extents from it)."""
    source = normalize_source(source)
    reporter = Reporter(path, source)
    if not _size_allowed(source, reporter):
        return PartialParse(None, reporter.diagnostics, None)
    try:
        tree = file_parser().parse(source)
    except UnexpectedInput as exc:
        return PartialParse(None, [syntax_diagnostic(exc, path, source)], None)
    except TooManyTokens as exc:
        return PartialParse(None, [too_many_tokens(exc, path, source)], None)
    if not _within_bounds(tree, reporter):
        return PartialParse(None, reporter.diagnostics, None)
    layers = _build(tree, reporter)
    return PartialParse(N.SpecFile(path, source, layers), reporter.diagnostics, tree)


def parse_expr(text: str, path: str = "<expr>") -> N.Expr:
    """Parse one expression of the spec language into IR. Raises SpecError on any problem."""
    text = normalize_source(text)
    try:
        tree = expression_parser().parse(text)
    except UnexpectedInput as exc:
        raise SpecError([syntax_diagnostic(exc, path, text)]) from None
    reporter = Reporter(path, text)
    try:
        expr = IRBuilder(reporter).build_expression(tree)
    except VisitError as exc:  # a builder bug, not a spec problem: let it surface as one
        raise exc.orig_exc from None
    reporter.raise_if_any()
    return expr


def _build(tree: Tree, reporter: Reporter) -> list[N.Layer]:
    try:
        return IRBuilder(reporter).transform(tree)
    except VisitError as exc:  # a builder bug, not a spec problem: let it surface as one
        raise exc.orig_exc from None


def _layer_names(source: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^[ \t]*layer\s+([A-Za-z_][A-Za-z0-9_]*)", source, re.M)}


_LAYER_LINE = re.compile(r"layer\s+([A-Za-z_][A-Za-z0-9_]*)")


def _parse_salvaging(source: str, reporter: Reporter) -> tuple[Tree | None, set[str]]:
    """Parse `source`; on a syntax error, report it, then blank out the layer declaration that holds it
    (and any other that still fails, without reporting those: they may only be follow-ons) so that the
    remaining layers are still parsed and checked. Returns the tree (None when nothing is left) and the
    names of the layers that were blanked out."""
    try:
        return file_parser().parse(source), set()
    except UnexpectedInput as exc:
        reporter.diagnostics.append(syntax_diagnostic(exc, reporter.path, source))
        failing_line = error_line(exc, source)
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
        line_index = min(max(failing_line - 1, 0), max(len(lines) - 1, 0))
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
            return file_parser().parse("".join(lines)), broken
        except UnexpectedInput as exc:
            failing_line = error_line(exc, "".join(lines))
    broken |= _layer_names(source)
    return None, broken


MAX_SOURCE_CHARS = 256 * 1024  # the largest spec read: far above any real one, far below what hurts


def _size_allowed(source: str, reporter: Reporter) -> bool:
    if len(source) <= MAX_SOURCE_CHARS:
        return True
    reporter.error(Span.point(1, 1), *size_problem(len(source)))
    return False


def size_problem(size: int) -> tuple[str, str]:
    """The message and hint for a spec of `size` characters (or bytes), over MAX_SOURCE_CHARS."""
    return (
        f"this spec is {size:,} characters long; the limit is {MAX_SOURCE_CHARS:,}",
        "split it into several spec files",
    )


def over_size_limit(d: Diagnostic) -> bool:
    """Whether `d` is this module's refusal of a spec over MAX_SOURCE_CHARS or MAX_TOKENS (no repair of a
    line brings the text under either)."""
    return d.message == f"this spec has more than {MAX_TOKENS:,} tokens" or d.message.endswith(
        f"; the limit is {MAX_SOURCE_CHARS:,}"
    )


def too_many_tokens(exc: TooManyTokens, path: str, source: str) -> Diagnostic:
    tok = exc.token
    return Diagnostic(
        path,
        Span(tok.line or 1, tok.column or 1, tok.end_line or 1, tok.end_column or 1),
        f"this spec has more than {MAX_TOKENS:,} tokens",
        "split it into several spec files, long expressions into several statements",
        source=source,
    )


MAX_DEPTH = 100  # levels of nesting in the tree (parentheses, calls, blocks): the passes after parsing recurse over it
# operators in one flat left-associated chain (`x + x + ... + x`): not nesting, so not counted in MAX_DEPTH, but
# its tree is as deep, and so is the generated Python's, which CPython 3.11 compiles up to about 2,990 operands
MAX_CHAIN = 2_000
# a chain's link: the left operand of a binary operator (or `and`, `or`) that is the same kind of node
_CHAINED = frozenset({"binop", "and_", "or_"})
MAX_NUMBER_CHARS = 100  # a longer number is a mistake (and Python refuses integers of over 4,300 digits)
MAX_STRING_CHARS = 65_536  # docstrings and reasons end up in generated source


def _within_bounds(tree: Tree, reporter: Reporter) -> bool:
    """False, with the errors reported, when an expression is nested more than MAX_DEPTH levels or a
    literal is longer than its bound."""
    problems = bound_problems(tree, reporter.path, reporter.source)
    reporter.diagnostics.extend(problems)
    return not problems


def bound_problems(tree: Tree, path: str, source: str) -> list[Diagnostic]:
    """The located errors of a tree that breaks the bounds on nesting and on literal sizes, found without
    recursion, so that no pass after parsing (the formatter's included) can exceed Python's recursion
    limit or spend its time on one huge literal."""
    problems = []
    deep = _too_deep(tree)
    if deep is not None:
        span, in_blocks, chain = deep
        message, hint = (
            (
                "this chain of operators is too long",
                f"split it into several statements (at most {MAX_CHAIN:,} operators)",
            )
            if chain
            else (
                ("the blocks are nested too deeply here", "move the inner blocks into a layer of their own")
                if in_blocks
                else ("this expression is nested too deeply", "split it into several statements")
            )
        )
        if not chain:
            hint += f" (at most {MAX_DEPTH} levels)"
        problems.append(Diagnostic(path, span, message, hint, source=source))
    for tok in _tokens(tree):
        limit = MAX_NUMBER_CHARS if tok.type == "NUMBER" else MAX_STRING_CHARS if tok.type == "STRING" else None
        if limit is not None and len(tok) > limit:
            kind = "number" if tok.type == "NUMBER" else "string"
            problems.append(
                Diagnostic(
                    path,
                    Span(tok.line or 1, tok.column or 1, tok.end_line or 1, tok.end_column or 1),
                    f"this {kind} is {len(tok):,} characters long; the limit is {limit:,}",
                    "a layer spec holds code and short documentation, not data",
                    source=source,
                )
            )
    return problems


def _tokens(tree: Tree) -> list[Token]:
    """Every token of the tree, without recursion."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        for child in node.children:
            if isinstance(child, Tree):
                stack.append(child)
            elif isinstance(child, Token):
                found.append(child)
    return found


def _too_deep(tree: Tree) -> tuple[Span, bool, bool] | None:
    """Where the tree is nested more than MAX_DEPTH levels, found without recursion: the expression, or the
    statement when the blocks around it (not the expression) make most of the depth (True); or where a chain
    of operators is longer than MAX_CHAIN (True, third). A chain's links (`x + x + x`: the left operand
    of `+`, itself a `+`) are one level: an operator's operands, a call's arguments and a block are one more."""
    stack = [(tree, 0, tree, 0, 0, tree)]
    while stack:
        node, depth, root, root_depth, chain, head = stack.pop()
        if depth > MAX_DEPTH:
            return _span_of(root), root_depth > depth - root_depth, False
        if chain > MAX_CHAIN:
            return _span_of(head), False, True
        for k, child in enumerate(node.children):
            if not isinstance(child, Tree):
                continue
            if k == 0 and node.data in _CHAINED and child.data == node.data:
                stack.append((child, depth, root, root_depth, chain + 1, head))
                continue
            structure = node.data in _STRUCTURE
            start = child.data in _CHAINED
            stack.append(
                (
                    child,
                    depth + 1,
                    child if structure else root,
                    depth + 1 if structure else root_depth,
                    1 if start else 0,
                    child,
                )
            )
    return None


def _span_of(tree: Tree) -> Span:
    """Where `tree` is: its positions, or (in a tree built without them, the formatter's) its first token's."""
    if getattr(tree.meta, "line", None) is not None:
        return Span(tree.meta.line, tree.meta.column, tree.meta.end_line, tree.meta.end_column)
    first = next(iter(_tokens_in_order(tree)), None)
    if first is None or first.line is None or first.column is None:
        return Span.point(1, 1)
    return Span.point(first.line, first.column)


def _tokens_in_order(tree: Tree) -> Iterator[Token]:
    stack: list[Tree | Token] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, Token):
            yield node
        elif isinstance(node, Tree):
            stack.extend(reversed(node.children))


# Rules that are not expressions: an expression starts below one of them.
_STRUCTURE = frozenset(
    "start layer decorator argdef arg_length spread_shape param buffer sub let example forward backward input outputs shape block "
    "assign update if_stmt return_stmt grad docstring".split()
)
