"""The `# file.layer:LINE` comment that names the spec statement a generated statement comes from.

A traceback shows the generated line that raised, and with it this comment: where to look in the spec.
A comment costs nothing at run time (the generated functions compile to the same bytecode without it).
It names the spec by its file name, which keeps it short; the module's header names the full path.
The comment goes at the end of the statement; where that makes the line too long, the layout
(driver/layout.py) splits the statement with the comment after the bracket that ends its first line, the
line a traceback shows.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from layerdsl.diagnostics import printable


def with_spec_line(lines: list[str], at: int, path: str | None, line: int) -> list[str]:
    """`lines` with `lines[at]` ending in `# file.layer:line`; no comment without a path or line."""
    if path is None or line < 1:
        return lines
    where = f"# {printable(PurePosixPath(path).name)}:{line}"  # a file name is no code: escaped
    return [*lines[:at], f"{lines[at]}  {where}", *lines[at + 1 :]]


def without_spec_lines(text: str) -> str:
    """`text` (generated lines) without their `# file.layer:LINE` comments: what reads the code for the names
    it spells reads no file name (`x.layer` spells no `x`). A comment starts at the line's first `  # `:
    generated code writes none before it (`with_spec_line`)."""
    return "\n".join(line.split("  # ", 1)[0] for line in text.split("\n"))
