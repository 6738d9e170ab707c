"""The sides of a branching Function's method, written once where they agree.

A forward with `if`s on configuration values is planned per combination of branches (`BranchPlan`), and
each side's method body is written as a straight-line one. Where two sides choose by the same condition,
what both compute first is written before the `if` (a condition on configuration values reads none of it),
and what both compute last after it, the two `if` branches holding only what differs; a statement both
compute moves before plain reads that one side makes first (a size only it needs), where that changes
nothing it reads or binds. A sequence of
independent `if`s so reads as it does in the spec: the backward of the last `if` (a `reduction` at the end)
branches first, then the shared part runs once, then the backward of the earlier `if`.
"""

from __future__ import annotations

import ast
import re

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


def common_start(a: list[str], b: list[str]) -> tuple[list[str], list[str], list[str]]:
    """What `a` and `b` both compute first, and the rest of each: their shared leading statements, and then
    each statement both sides run past only plain reads (`input_size0 = input.shape[0]`, which one side
    needs and the other would fail on), moved before those (`_past_plain_reads`)."""
    prefix: list[str] = []
    while True:
        start = shared_prefix(a, b)
        prefix, a, b = prefix + a[:start], a[start:], b[start:]
        found = _past_plain_reads(a, b)
        if found is None:
            return prefix, a, b
        i, j = found
        prefix, a, b = prefix + [a[i]], a[:i] + a[i + 1 :], b[:j] + b[j + 1 :]


def _past_plain_reads(a: list[str], b: list[str]) -> tuple[int, int] | None:
    """Where a one-line statement both `a` and `b` run stands in each, when only plain reads come before
    it on either side and it neither reads nor binds what they bind, nor binds what they read; None if
    there is none."""
    reads_a, reads_b = _plain_reads(a), _plain_reads(b)
    for i in range(min(reads_a, len(a) - 1) + 1):
        line = a[i]
        if not _single_statement(a, i) or line.startswith(("return", "#")) or i and a[i - 1].startswith("#"):
            continue
        j = next((k for k in range(min(reads_b, len(b) - 1) + 1) if b[k] == line), None)
        if j is None or not _single_statement(b, j) or j and b[j - 1].startswith("#") or i == j == 0:
            continue
        skipped = [_names(x) for x in a[:i] + b[:j]]
        reads, binds = _names(line)
        if not (reads | binds) & {n for _, bound in skipped for n in bound} and not binds & {
            n for read, _ in skipped for n in read
        }:
            return i, j
    return None


def _plain_reads(lines: list[str]) -> int:
    """How many leading lines of `lines` are one-line plain reads (`n = x.shape[0]`, `ctx.d = x.dim()`,
    `a, b = ctx.saved_tensors`): they bind names, and have no other effect."""
    count = 0
    while count < len(lines):
        at = count
        while at < len(lines) and lines[at].startswith("#"):  # a comment goes with the statement after it
            at += 1
        if at == len(lines) or not (_single_statement(lines[at:], 0) and _is_plain_read(lines[at])):
            return count
        count = at + 1
    return count


SIZE_METHODS = ("dim", "size", "numel")


def _is_plain_read(line: str) -> bool:
    """Whether `line` binds names to what it reads of others (attributes, items, sizes), doing nothing else."""
    try:
        [stmt] = ast.parse(line).body
    except (SyntaxError, ValueError):
        return False
    if not isinstance(stmt, ast.Assign):
        return False
    for node in ast.walk(stmt.value):
        if isinstance(node, ast.Call):
            if _restacked(node):  # a held list's members stacked again (`function_members.unpacked_with_held`)
                continue
            if not (isinstance(node.func, ast.Attribute) and node.func.attr in SIZE_METHODS) or node.args:
                return False
        elif not isinstance(
            node, (ast.Name, ast.Attribute, ast.Subscript, ast.Constant, ast.Load, ast.IfExp, ast.Slice)
        ):
            return False
    return True


def _restacked(call: ast.Call) -> bool:
    """`torch.stack(members)`, `torch.stack(members[1::2])`: a list read as one tensor."""
    return ast.unparse(call.func) == "torch.stack" and len(call.args) == 1 and not call.keywords


def _names(line: str) -> tuple[set[str], set[str]]:
    """The names a one-line statement reads and binds (`ctx.x` as one name), or every name it mentions
    as both when it does not parse alone."""
    try:
        tree = ast.parse(line)
    except SyntaxError:
        words = set(re.findall(r"[A-Za-z_][\w.]*", line))
        return words, words
    reads: set[str] = set()
    binds: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (binds if isinstance(node.ctx, ast.Store) else reads).add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            (binds if isinstance(node.ctx, ast.Store) else reads).add(f"{node.value.id}.{node.attr}")
    return reads, binds


def _single_statement(lines: list[str], at: int) -> bool:
    """Whether `lines[at]` is a whole one-line statement (no block, no comment, nothing continuing it)."""
    line = lines[at]
    return (
        starts_statement(lines, at)
        and not line.startswith("#")
        and not line.rstrip().endswith(":")
        and starts_statement(lines, at + 1)
    )


def chosen_lines(test: str, then: list[str], orelse: list[str], ends_in_return: bool) -> list[str]:
    """`then` under `if test`, else `orelse`, with what both begin and end with written once. Sides that
    return (`ends_in_return`) without a shared end are written `if test: <then>` followed by `<orelse>`."""
    prefix, then, orelse = common_start(then, orelse)
    end = shared_suffix(then, orelse)
    suffix = then[len(then) - end :] if end else []
    then, orelse = then[: len(then) - end], orelse[: len(orelse) - end]
    if not then and not orelse:
        return prefix + suffix
    if not then:
        if _one_if(orelse) and _excluded_by(test, orelse):  # `if not (r == "sum"): if r == "mean"` as `if r == "mean"`
            return [*prefix, *orelse, *suffix]
        return [*prefix, f"if {_negated(test)}:", *_indented(orelse), *suffix]
    lines = [*prefix, f"if {test}:", *_indented(then)]
    if ends_in_return and not end:
        return lines + orelse
    if _one_if(orelse) and _continues_chain(test, orelse):  # `else: if c: ...` as `elif c: ...`
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


def _continues_chain(test: str, lines: list[str]) -> bool:
    """Whether the `if` of `lines` goes on choosing as `if test` does: it chooses among more sides itself
    (has an `elif` or `else`), or tests the same value (`ctx.reduction`); not a test that a gradient is
    given, which reads as a step of the last side."""
    inner = lines[0].removeprefix("if ")
    return any(line.startswith(("elif ", "else:")) for line in lines[1:]) or _subject(inner) == _subject(test)


def _negated(test: str) -> str:
    """`a != b` for `a == b` (one comparison of names, attributes, calls and literals); `not (test)` else."""
    found = re.fullmatch(r"([\w.()\[\]\"]+) == ([\w.()\[\]\"-]+)", test)
    return f"{found.group(1)} != {found.group(2)}" if found else f"not ({test})"


def _excluded_by(test: str, lines: list[str]) -> bool:
    """Whether every side of the `if` of `lines` tests the value `test` tests against another string
    (`r == "mean"`, `elif r == "batchmean"` after `r == "sum"`), with no `else`: none runs where `test` holds."""
    value = _string_test(test)
    if value is None:
        return False
    tests = [lines[0].removeprefix("if ")] + [l.removeprefix("elif ") for l in lines[1:] if l.startswith("elif ")]
    if any(line.startswith("else:") for line in lines[1:]):
        return False
    return all(
        (t := _string_test(c.removesuffix(":"))) is not None and t[0] == value[0] and t[1] != value[1] for c in tests
    )


def _string_test(test: str) -> tuple[str, str] | None:
    """(`ctx.reduction`, `"sum"`) of `ctx.reduction == "sum"`; None for another condition."""
    found = re.fullmatch(r'([\w.]+) == ("[^"\\]*")', test)
    return (found.group(1), found.group(2)) if found else None


def _subject(test: str) -> str:
    """The value a condition tests first: `ctx.reduction` of `ctx.reduction == "sum"`."""
    found = re.match(r"(?:not \(?)?([\w.]+)", test)
    return found.group(1) if found else test


def _indented(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]
