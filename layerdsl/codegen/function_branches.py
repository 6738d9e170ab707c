"""The sides of a branching Function's method, written once where they agree.

A forward with `if`s on configuration values is planned per combination of branches (`BranchPlan`), and
each side's method body is written as a straight-line one. Where two sides choose by the same condition,
what both compute first is written before the `if` (a condition on configuration values reads none of it),
and what both compute last after it, the two `if` branches holding only what differs. A sequence of
independent `if`s so reads as it does in the spec: the backward of the last `if` (a `reduction` at the end)
branches first, then the shared part runs once, then the backward of the earlier `if`.
"""

from __future__ import annotations

# Lines that continue the compound statement or expression above them, at its indentation
CONTINUING = ("else", "elif", "except", "finally", ")", "]", "}")


def starts_statement(lines: list[str], at: int) -> bool:
    """Whether a whole statement of `lines` (a comment goes with the statement after it) starts at `at`."""
    if at == len(lines):
        return True
    line = lines[at]
    if line[:1].isspace() or line.startswith(CONTINUING):
        return False
    return at == 0 or not lines[at - 1].startswith("#")


def shared_prefix(a: list[str], b: list[str]) -> int:
    """How many leading lines `a` and `b` share as whole statements before any `return` (computed once,
    before the condition: a condition on configuration values does not depend on them)."""
    shared = 0
    for k, (x, y) in enumerate(zip(a, b)):
        if x != y or x.startswith("return"):
            break
        if starts_statement(a, k + 1) and starts_statement(b, k + 1):
            shared = k + 1
    return shared


def shared_suffix(a: list[str], b: list[str]) -> int:
    """How many trailing lines `a` and `b` share as whole statements (run once, after both branches: each
    reads the names its own branch bound, by the same names)."""
    shared = 0
    for k in range(1, min(len(a), len(b)) + 1):
        if a[-k] != b[-k]:
            break
        if starts_statement(a, len(a) - k) and starts_statement(b, len(b) - k):
            shared = k
    return shared


def chosen_lines(test: str, then: list[str], orelse: list[str], ends_in_return: bool) -> list[str]:
    """`then` under `if test`, else `orelse`, with what both begin and end with written once. Sides that
    return (`ends_in_return`) without a shared end are written `if test: <then>` followed by `<orelse>`."""
    start = shared_prefix(then, orelse)
    prefix, then, orelse = then[:start], then[start:], orelse[start:]
    end = shared_suffix(then, orelse)
    suffix = then[len(then) - end :] if end else []
    then, orelse = then[: len(then) - end], orelse[: len(orelse) - end]
    if not then and not orelse:
        return prefix + suffix
    if not then:
        return [*prefix, f"if not ({test}):", *_indented(orelse), *suffix]
    lines = [*prefix, f"if {test}:", *_indented(then)]
    if ends_in_return and not end:
        return lines + orelse
    if _one_if(orelse):  # `else: if c: ...` as `elif c: ...`
        lines += ["el" + orelse[0], *orelse[1:]]
    elif orelse:
        lines += ["else:", *_indented(orelse)]
    return lines + suffix


def _one_if(lines: list[str]) -> bool:
    """Whether `lines` are one `if` statement (with its `elif`s and `else`)."""
    return (
        bool(lines)
        and lines[0].startswith("if ")
        and all(line[:1].isspace() or line.startswith(("elif ", "else:")) for line in lines[1:])
    )


def _indented(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]
