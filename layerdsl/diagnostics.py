"""Spec diagnostics: source spans, the SpecError type, and rendering in `path:line:col: error:` form."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    """A range in a spec file; lines and columns are 1-based, the end column is exclusive."""

    line: int
    col: int
    end_line: int
    end_col: int

    @staticmethod
    def point(line: int, col: int) -> Span:
        return Span(line, col, line, col + 1)

    def to(self, other: Span) -> Span:
        return Span(self.line, self.col, other.end_line, other.end_col)


@dataclass
class Diagnostic:
    """One problem in a spec: where, what, and optionally a hint."""

    path: str
    span: Span
    message: str
    hint: str | None = None
    severity: str = "error"
    source: str | None = field(default=None, repr=False)

    def render(self) -> str:
        """The diagnostic as terminal text: control characters from the spec or its path (a terminal's
        escape sequences, line breaks) are shown escaped, never sent to the terminal."""
        head = f"{printable(self.path)}:{self.span.line}:{self.span.col}: {self.severity}: {printable(self.message)}"
        lines = [head]
        text = _source_line(self.source if self.source is not None else _SOURCES.get(self.path), self.span.line)
        if text is not None:
            start = self.span.col - 1
            end = self.span.end_col - 1 if self.span.end_line == self.span.line else len(text)
            if len(text) > _EXCERPT_WIDTH:  # a long line is shown around the error, not whole
                lo = max(0, min(start - _EXCERPT_WIDTH // 4, len(text) - _EXCERPT_WIDTH))
                hi = lo + _EXCERPT_WIDTH
                cut = ("..." if lo else "") + text[lo:hi] + ("..." if hi < len(text) else "")
                shift = 3 * (lo > 0) - lo
                text, start, end = cut, start + shift, min(max(end, start + 1), hi) + shift
            prefix = "".join(ch if ch == "\t" else " " for ch in printable(text[:start]))
            lines.append(f"    {printable(text)}")
            lines.append(f"    {prefix}{'^' * max(1, len(printable(text[start:end])))}")
        if self.hint:
            lines.append(f"  hint: {printable(self.hint)}")
        return "\n".join(lines)


_EXCERPT_WIDTH = 500  # the characters of a source line shown under a diagnostic (a longer one: those around it)


def printable(text: str) -> str:
    """`text` with every character a terminal or a Python comment would act on (control characters and
    escape sequences, line breaks, lone surrogates from undecodable file names) written as a Python
    escape (`\\x1b`, `\\u2028`, `\\udcff`); tabs and printable text are kept."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == "\t" else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _source_line(source: str | None, line: int) -> str | None:
    if source is None:
        return None
    lines = source.split("\n")  # as the lexer counts lines: only "\n" ends one
    if 1 <= line <= len(lines):
        return lines[line - 1].rstrip("\r")
    return None


class SpecError(Exception):
    """Raised when one or more specs have errors; carries every diagnostic found."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = sorted(diagnostics, key=lambda d: (d.path, d.span.line, d.span.col))
        super().__init__("\n".join(d.render() for d in self.diagnostics))


# The text of every spec file read in this process, by the path diagnostics show: a diagnostic made
# without its source (by a later pass) still renders the offending line and a caret.
_SOURCES: dict[str, str] = {}


class Reporter:
    """Collects diagnostics for one spec file so that every independent error is reported in one run."""

    def __init__(self, path: str, source: str):
        self.path = path
        self.source = source
        self.diagnostics: list[Diagnostic] = []
        _SOURCES[path] = source

    def error(self, span: Span, message: str, hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(self.path, span, message, hint, source=self.source))

    def raise_if_any(self) -> None:
        if self.diagnostics:
            raise SpecError(self.diagnostics)


def did_you_mean(name: str, candidates: Iterable[str], prefix: str = "") -> str | None:
    """A `did you mean` hint naming the closest candidates (shown with `prefix`, as in `nn.`), or None
    when nothing is close."""
    pool = sorted(set(candidates))
    lowered = {c.lower(): c for c in pool}
    if name.lower() in lowered and lowered[name.lower()] != name:
        close = [lowered[name.lower()]]
    else:
        close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
    if not close:
        return None
    quoted = [f"'{prefix}{c}'" for c in close]
    if len(quoted) == 1:
        return f"did you mean {quoted[0]}?"
    return "did you mean " + ", ".join(quoted[:-1]) + f" or {quoted[-1]}?"
