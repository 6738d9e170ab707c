"""The `# file.layer:LINE` comment that names the spec statement a generated statement comes from.

A traceback shows the generated line that raised, and with it this comment: where to look in the spec.
A comment costs nothing at run time (the generated functions compile to the same bytecode without it).
It names the spec by its file name, which keeps it short; the module's header names the full path.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from layerdsl.diagnostics import printable

LINE_LENGTH = 88  # black's, which the generated code is formatted with
BODY_INDENT = 8  # a method body's


def with_spec_line(lines: list[str], at: int, path: str | None, line: int, depth: int = 0) -> list[str]:
    """`lines` with `lines[at]` ending in `# file.layer:line`, or with the comment on a line of its own above it
    when the two would not fit in black's line length (black would split the statement to make room).
    `depth`: how many blocks deeper than a method body the lines will be; no comment without a path or line.
    """
    if path is None or line < 1:
        return lines
    where = f"# {printable(PurePosixPath(path).name)}:{line}"  # a file name is no code: escaped
    target = lines[at]
    if len(target) + len(where) + 2 <= LINE_LENGTH - BODY_INDENT - 4 * depth:
        return [*lines[:at], f"{target}  {where}", *lines[at + 1 :]]
    indent = target[: len(target) - len(target.lstrip())]
    return [*lines[:at], indent + where, *lines[at:]]
