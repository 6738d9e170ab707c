"""Positions: LSP positions and ranges (in the client's units) to and from spans (1-based lines and
columns in code points), and the text a span covers."""

from __future__ import annotations

from lsprotocol import types as T

from layerdsl.diagnostics import Span


def text_lines(text: str) -> list[str]:
    return text.split("\n")


def to_position(lines: list[str], line: int, col: int, codec) -> T.Position:
    """A 1-based line and column in code points (Span's convention) as an LSP position."""
    line0 = max(line - 1, 0)
    col0 = max(col - 1, 0)
    text = lines[line0].rstrip("\r") if line0 < len(lines) else ""
    units = codec.client_num_units(text[:col0]) + max(0, col0 - len(text))
    return T.Position(line=line0, character=units)


def to_range(span: Span, text: str, codec) -> T.Range:
    lines = text_lines(text)
    start = to_position(lines, span.line, span.col, codec)
    end = to_position(lines, max(span.end_line, span.line), span.end_col, codec)
    if (end.line, end.character) < (start.line, start.character):
        end = start
    return T.Range(start=start, end=end)


def from_position(text: str, pos: T.Position, codec) -> tuple[int, int]:
    """An LSP position as a 1-based line and column in code points."""
    lines = text_lines(text)
    if pos.line >= len(lines):
        return len(lines), len(lines[-1]) + 1 if lines else 1
    line = lines[pos.line]
    units = 0
    col = 0
    for ch in line:
        if units >= pos.character:
            break
        units += codec.client_num_units(ch)
        col += 1
    return pos.line + 1, col + 1


def contains(span: Span, line: int, col: int) -> bool:
    return (span.line, span.col) <= (line, col) <= (span.end_line, span.end_col)


def span_size(span: Span) -> tuple[int, int]:
    return (span.end_line - span.line, span.end_col - span.col if span.end_line == span.line else 10**6)


def span_text(source: str, span: Span) -> str:
    lines = source.split("\n")
    if span.line == span.end_line:
        return lines[span.line - 1][span.col - 1 : span.end_col - 1] if span.line <= len(lines) else ""
    parts = (
        [lines[span.line - 1][span.col - 1 :]]
        + lines[span.line : span.end_line - 1]
        + [lines[span.end_line - 1][: span.end_col - 1]]
    )
    return "\n".join(parts)


def within(inner: Span, outer: Span) -> bool:
    return (outer.line, outer.col) <= (inner.line, inner.col) and (inner.end_line, inner.end_col) <= (
        outer.end_line,
        outer.end_col,
    )
