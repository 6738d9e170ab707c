"""Scanning a half-typed spec's text: the characters that are code (outside strings and comments), and the
brackets left open. Completion, signature help, folding and the repaired parse all read the text this way,
so an unclosed string or a `#` inside one means the same to each of them."""

from __future__ import annotations

import re
from collections.abc import Iterator

# A docstring (to its end or the end of the text), a one-line string (to its quote or the end of the line),
# a comment.
STRINGS_AND_COMMENTS = re.compile(r'"""[\s\S]*?(?:"""|\Z)|"(?:\\.|[^"\\\n])*"?|#[^\n]*')


def code_characters(text: str) -> Iterator[tuple[int, str]]:
    """Each character of `text` outside strings and comments, with its offset."""
    at = 0
    for m in STRINGS_AND_COMMENTS.finditer(text):
        for i in range(at, m.start()):
            yield i, text[i]
        at = m.end()
    for i in range(at, len(text)):
        yield i, text[i]


def depths(text: str) -> tuple[int, int]:
    """Brace depth and bracket (`(`/`[`) depth at the end of `text`."""
    braces = brackets = 0
    for _, c in code_characters(text):
        if c == "{":
            braces += 1
        elif c == "}":
            braces = max(0, braces - 1)
        elif c in "([":
            brackets += 1
        elif c in ")]":
            brackets = max(0, brackets - 1)
    return braces, brackets


def open_bracket(text: str) -> tuple[str, int] | None:
    """The innermost `(` or `[` left open at the end of `text` (a brace closes every one), with its offset;
    None when every bracket is closed."""
    stack: list[tuple[str, int]] = []
    for i, c in code_characters(text):
        if c in "([":
            stack.append((c, i))
        elif c in ")]" and stack:
            stack.pop()
        elif c in "{}":
            stack.clear()
    return stack[-1] if stack else None
