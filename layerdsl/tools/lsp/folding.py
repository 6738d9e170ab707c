"""Folding ranges: braced blocks (layers, forward, backward, if/else), calls and lists written over
several lines, docstrings and runs of comment lines; found from the text, so a half-typed document
folds too."""

from __future__ import annotations

from lsprotocol import types as T

_OPEN = {"{": "}", "(": ")", "[": "]"}


def string_end(text: str, i: int) -> int:
    """Where the string literal that starts at `i` ends (after its closing quotes; the end of the text
    when it is not closed)."""
    quote = '"""' if text.startswith('"""', i) else '"'
    j = text.find(quote, i + len(quote))
    return len(text) if j < 0 else j + len(quote)


def folding_ranges(text: str) -> list[T.FoldingRange]:
    out: list[T.FoldingRange] = []
    stack: list[tuple[str, int]] = []  # (closing bracket, line it opened on)
    line = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        elif c == '"':
            triple = text.startswith('"""', i)
            end = string_end(text, i)
            lines = text.count("\n", i, end)
            if triple and lines:
                out.append(T.FoldingRange(start_line=line, end_line=line + lines, kind=T.FoldingRangeKind.Comment))
            line += lines
            i = end
            continue
        elif c in _OPEN:
            stack.append((_OPEN[c], line))
        elif c in "})]":
            while stack and stack[-1][0] != c:
                stack.pop()
            if stack:
                _, start = stack.pop()
                if line - 1 > start:
                    out.append(T.FoldingRange(start_line=start, end_line=line - 1))
        i += 1
    out += _comment_runs(text)
    return sorted(out, key=lambda r: (r.start_line, r.end_line))


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
