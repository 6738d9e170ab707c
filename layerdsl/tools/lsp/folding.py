"""Folding ranges: braced blocks (layers, forward, backward, if/else), calls and lists written over
several lines, docstrings and runs of comment lines; found from the text, so a half-typed document
folds too."""

from __future__ import annotations

from lsprotocol import types as T

from layerdsl.tools.lsp.scanning import STRINGS_AND_COMMENTS, code_characters

_OPEN = {"{": "}", "(": ")", "[": "]"}


def folding_ranges(text: str) -> list[T.FoldingRange]:
    out = _bracket_ranges(text) + _docstring_ranges(text) + _comment_runs(text)
    return sorted(out, key=lambda r: (r.start_line, r.end_line))


def _bracket_ranges(text: str) -> list[T.FoldingRange]:
    """Brackets that open and close on different lines (the closing line stays visible)."""
    out = []
    stack: list[tuple[str, int]] = []  # (closing bracket, line it opened on)
    line = seen = 0
    for i, c in code_characters(text):
        line += text.count("\n", seen, i)
        seen = i
        if c in _OPEN:
            stack.append((_OPEN[c], line))
        elif c in "})]":
            while stack and stack[-1][0] != c:
                stack.pop()
            if stack:
                _, start = stack.pop()
                if line - 1 > start:
                    out.append(T.FoldingRange(start_line=start, end_line=line - 1))
    return out


def _docstring_ranges(text: str) -> list[T.FoldingRange]:
    out = []
    for m in STRINGS_AND_COMMENTS.finditer(text):
        lines = m.group().count("\n")
        if m.group().startswith('"""') and lines:
            start = text.count("\n", 0, m.start())
            out.append(T.FoldingRange(start_line=start, end_line=start + lines, kind=T.FoldingRangeKind.Comment))
    return out


def _comment_runs(text: str) -> list[T.FoldingRange]:
    """Two or more consecutive lines that hold only a comment."""
    out = []
    start = None
    lines = text.split("\n")
    for i, line in enumerate([*lines, ""]):
        if line.lstrip(" \t").startswith("#"):
            start = i if start is None else start
            continue
        if start is not None and i - 1 > start:
            out.append(T.FoldingRange(start_line=start, end_line=i - 1, kind=T.FoldingRangeKind.Comment))
        start = None
    return out
