"""The checks a composed Function's module runs before `apply` (codegen/function_sub_calls.py), as records.

The checks come printed from the modules' emitters (`shape_checks`, `checks_before_apply`); each statement is
read once into a record (`records`): a check that raises (`if cond: raise ...`) with the terms its condition
`and`s, checks under a guard (`if len(self.blocks):`) with the guard's terms, a binding (`d = x.shape[-1]`,
`x = src`) with the names it binds, a comment, or another statement; each with the names it reads. The
filters work on the records (`without_repeated_checks`, `unread_bindings_dropped`), which are printed last
(`printed`).
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Comment:
    text: str


@dataclass(frozen=True)
class Check:
    """`if cond: raise ...`: the terms `cond` `and`s (each as `ast.dump`), the names they read (`tested`) and
    those the whole statement reads (its message's too)."""

    lines: tuple[str, ...]
    terms: frozenset[str]
    tested: frozenset[str]
    reads: frozenset[str]


@dataclass(frozen=True)
class Guarded:
    """`if guard:` and the checks run under it: the terms the guard `and`s and the names they read."""

    header: str
    terms: frozenset[str]
    tested: frozenset[str]
    body: tuple[Record, ...]


@dataclass(frozen=True)
class Binding:
    """`name = value` (or `a, b = value`): the names it binds and those its value reads; `alias`: a name
    bound to a name (a sub's input named as the value it is called on)."""

    lines: tuple[str, ...]
    binds: frozenset[str]
    reads: frozenset[str]
    alias: bool


@dataclass(frozen=True)
class Other:
    """Another statement (an `if` with an `else`): after it no earlier check is known to hold."""

    lines: tuple[str, ...]
    reads: frozenset[str]


Record = Comment | Check | Guarded | Binding | Other


def records(lines: list[str]) -> list[Record]:
    """The printed statements `lines` (indented as one block) as records."""
    out: list[Record] = []
    for stmt in _statements(lines):
        parsed = ast.parse("\n".join(stmt)).body
        if not parsed:
            out.append(Comment(stmt[0]))
            continue
        node = parsed[0]
        if isinstance(node, ast.If) and not node.orelse:
            terms = _terms(node.test)
            keys, tested = frozenset(ast.dump(t) for t in terms), _names(terms)
            if len(node.body) == 1 and isinstance(node.body[0], ast.Raise):
                out.append(Check(tuple(stmt), keys, tested, _names([node])))
            else:
                out.append(Guarded(stmt[0], keys, tested, tuple(records([line[4:] for line in stmt[1:]]))))
        elif isinstance(node, ast.Assign):
            binds = frozenset(n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name))
            alias = (
                len(stmt) == 1 and isinstance(node.value, ast.Name) and [type(t) for t in node.targets] == [ast.Name]
            )
            out.append(Binding(tuple(stmt), binds, _names([node.value]), alias))
        else:
            out.append(Other(tuple(stmt), _names([node])))
    return out


def guarded(guard: str, body: list[Record]) -> Guarded:
    """`body` run under `if guard:`."""
    terms = _terms(ast.parse(guard, mode="eval").body)
    return Guarded(f"if {guard}:", frozenset(ast.dump(t) for t in terms), _names(terms), tuple(body))


def printed(checks: list[Record]) -> list[str]:
    """The records' lines, a guard's checks indented under it."""
    out: list[str] = []
    for r in checks:
        if isinstance(r, Comment):
            out.append(r.text)
        elif isinstance(r, Guarded):
            out += [r.header, *(f"    {line}" if line else "" for line in printed(list(r.body)))]
        else:
            out += r.lines
    return out


def reads(checks: list[Record]) -> set[str]:
    """The names the records read (their guards' and their checks' within)."""
    out: set[str] = set()
    for r in checks:
        if isinstance(r, Guarded):
            out |= r.tested | reads(list(r.body))
        elif not isinstance(r, Comment):
            out |= r.reads
    return out


def binds(checks: list[Record]) -> set[str]:
    """The names the records bind (their guards' checks' too)."""
    out: set[str] = set()
    for r in checks:
        if isinstance(r, Guarded):
            out |= binds(list(r.body))
        elif isinstance(r, Binding):
            out |= r.binds
    return out


def without_repeated_checks(
    checks: list[Record], around: Guarded | None = None, seen: list[tuple[frozenset[str], frozenset[str]]] | None = None
) -> list[Record]:
    """`checks` without each check proved never to raise: one whose terms (its own and those of the guards
    around it, `around`) include all of an earlier check's (`seen`: each one's terms and the names they read),
    no name they read bound again in between. What the earlier one tests is the same values: it raised first.
    A guard left with no check goes, and a comment left before no statement."""
    seen = [] if seen is None else seen
    guards, guards_read = (around.terms, around.tested) if around is not None else (frozenset(), frozenset())
    out: list[Record] = []
    for r in checks:
        if isinstance(r, Check):
            key = guards | r.terms
            if any(earlier <= key for earlier, _ in seen):
                continue
            seen.append((key, guards_read | r.tested))
            out.append(r)
        elif isinstance(r, Guarded):  # its checks hold where the guards around it and its own do
            within = Guarded(r.header, guards | r.terms, guards_read | r.tested, ())
            body = without_repeated_checks(list(r.body), within, seen)
            out += [Guarded(r.header, r.terms, r.tested, tuple(body))] if _code(body) else []
        elif isinstance(r, Binding):  # a name bound again: the checks reading it hold no more
            seen[:] = [(key, read) for key, read in seen if not read & r.binds]
            out.append(r)
        else:
            if isinstance(r, Other):  # what it does is not known: no check is known to hold after it
                seen.clear()
            out.append(r)
    return _comments_placed(out)


def unread_bindings_dropped(checks: list[Record], read_after: set[str]) -> list[Record]:
    """`checks` without each alias (`a = b`: a sub's input named as the value it is called on) that no later
    record, nor what runs after them (`read_after`: the names it reads), reads; a guard left with no check
    goes, and a comment left before no statement."""
    out: list[Record] = []
    for k, r in enumerate(checks):
        later = reads(checks[k + 1 :]) | read_after
        if isinstance(r, Binding) and r.alias and not r.binds & later:
            continue
        if isinstance(r, Guarded):
            body = unread_bindings_dropped(list(r.body), later)
            out += [Guarded(r.header, r.terms, r.tested, tuple(body))] if _code(body) else []
            continue
        out.append(r)
    return _comments_placed(out)


def _comments_placed(checks: list[Record]) -> list[Record]:
    """`checks` without each comment not followed by a statement (that of a check dropped)."""
    return [
        r
        for k, r in enumerate(checks)
        if not isinstance(r, Comment) or k + 1 < len(checks) and not isinstance(checks[k + 1], Comment)
    ]


def _code(checks: list[Record]) -> bool:
    return any(not isinstance(r, Comment) for r in checks)


def _names(nodes: Sequence[ast.AST]) -> frozenset[str]:
    """The names `nodes` read."""
    return frozenset(
        n.id for node in nodes for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    )


def _terms(e: ast.expr) -> list[ast.expr]:
    """The terms `e` `and`s (itself, where it is no `and`)."""
    if isinstance(e, ast.BoolOp) and isinstance(e.op, ast.And):
        return [t for v in e.values for t in _terms(v)]
    return [e]


def _statements(lines: list[str]) -> list[list[str]]:
    """`lines` (indented as one block) as its statements, each its lines (a comment: one of its own)."""
    out: list[list[str]] = []
    for line in lines:
        opens = line[:1] not in (" ", ")", "]", "}", "") and not line.startswith(("else:", "elif ", "except"))
        if opens and (not out or _comment(out[-1][0]) or _complete(out[-1])):
            out.append([line])
        else:
            out[-1].append(line)
    return out


def _complete(stmt: list[str]) -> bool:
    try:
        ast.parse("\n".join(stmt))
    except SyntaxError:
        return False
    return True


def _comment(line: str) -> bool:
    return line.lstrip().startswith("#")
