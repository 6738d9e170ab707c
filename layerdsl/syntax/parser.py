"""Parsing: spec text → Lark tree → IR, with syntax errors as located diagnostics.

Three entries: `parse_file` (the CLI's: salvages the layers a syntax error does not touch),
`parse_partial` (the language server's: keeps the Lark tree, and gives no IR on a syntax error) and
`parse_expr` (one expression, for the operation table's formulas and defaults). All three read the text
through `normalize_source`, so that they agree on what a file says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from lark import Tree
from lark.exceptions import UnexpectedInput, VisitError

from layerdsl.diagnostics import Diagnostic, Reporter, Span, SpecError
from layerdsl.ir import nodes as N
from layerdsl.syntax.builder import IRBuilder
from layerdsl.syntax.errors import error_line, syntax_diagnostic
from layerdsl.syntax.grammar import expression_parser, file_parser

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
    tree, broken = _parse_salvaging(source, reporter)
    if tree is not None and not _depth_allowed(tree, reporter):
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
    try:
        tree = file_parser().parse(source)
    except UnexpectedInput as exc:
        return PartialParse(None, [syntax_diagnostic(exc, path, source)], None)
    if not _depth_allowed(tree, reporter):
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


MAX_DEPTH = 100  # levels of nesting in the tree: the passes after parsing recurse over it


def _depth_allowed(tree: Tree, reporter: Reporter) -> bool:
    """False, with the error reported, when an expression is nested more than MAX_DEPTH levels."""
    deep = _too_deep(tree)
    if deep is None:
        return True
    reporter.error(
        deep,
        "this expression is nested too deeply",
        f"split it into several statements (at most {MAX_DEPTH} levels)",
    )
    return False


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
