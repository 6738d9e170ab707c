"""`layerdsl fmt`: one canonical layout for `.layer` specs.

The formatter works on the full Lark tree (every token kept) rather than on the IR, so nothing is lost:
numbers, strings and names are printed exactly as written, and every comment is recovered from the
newline tokens the lexer produced (the grammar's `_NL` and `_BEFORE_ELSE` swallow them) and put back
next to the token it belonged to.

The layout:
- 4-space indentation; one statement or member per line;
- one space around binary operators, `=` (keyword arguments too: `dim = -1`), `->`, after `:` and commas;
  none inside brackets; slices as black writes them (`x[1:n]`, `x[..., : n // 2]`);
- a blank line between layers and between member groups (params/buffers, subs/lets, example,
  forward, backward); elsewhere a blank line is kept where the source has one (several become one);
- a line longer than 100 columns is wrapped inside its largest bracket pair, one item per line with a
  trailing comma (none after a lone item, as black does); a comment inside brackets wraps them too;
- docstrings and other strings are kept exactly as written;
- whole-line comments stay on their own line before what follows them, end-of-line comments stay at
  the end of the line of the token they follow.

Formatting is checked as it goes: the output must parse to the same tree (commas aside) with the same
comments in the same order, or the formatter refuses rather than writes.
"""

from __future__ import annotations

import bisect
import difflib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lark import Token, Tree
from lark.exceptions import UnexpectedInput

from layerdsl.diagnostics import Diagnostic, Span, SpecError
from layerdsl.driver.output import Unreadable, read_spec, write_atomic
from layerdsl.syntax import normalize_source
from layerdsl.syntax.errors import syntax_diagnostic
from layerdsl.syntax.grammar import TooManyTokens, parse_keeping_tokens
from layerdsl.syntax.parser import MAX_SOURCE_CHARS, bound_problems, size_problem, too_many_tokens

LIMIT = 100  # columns
STEP = 4  # spaces per indentation level

__all__ = ["format_source", "run_cli", "FormatError", "LIMIT"]


class FormatError(Exception):
    """The formatter could not produce an equivalent layout (a formatter bug, never a spec problem)."""


# ---------------------------------------------------------------- parsing with every token and comment


@dataclass(eq=False)
class Comment:
    text: str
    start: int  # offset in the source
    end: int
    blank_before: bool = False  # a blank line separates it from what precedes it


_COMMENT = re.compile(r"#[^\n]*")


def parse_with_comments(text: str) -> tuple[Tree, list[Comment]]:
    """The full tree and every comment, in source order. Raises lark's UnexpectedInput."""
    tree, whitespace = parse_keeping_tokens(text)
    comments: dict[int, Comment] = {}
    for tok in whitespace:
        offset = token_offsets(tok)[0]
        for m in _COMMENT.finditer(tok.value):
            start = offset + m.start()
            comments.setdefault(start, Comment(m.group().rstrip(), start, offset + m.end()))
    return tree, [comments[k] for k in sorted(comments)]


def token_offsets(tok: Token) -> tuple[int, int]:
    """Where a token the parser read starts and ends in the source (the lexer always sets both)."""
    if tok.start_pos is None or tok.end_pos is None:
        raise FormatError(f"the token {tok.type} has no position")
    return tok.start_pos, tok.end_pos


def _token(child: Tree | Token, type_: str) -> Token:
    """`child`, which the grammar makes a token of type `type_`."""
    if not isinstance(child, Token) or child.type != type_:
        raise FormatError(f"expected a {type_} token, found {child!r}")
    return child


def source_tokens(tree: Tree) -> list[Token]:
    """Every token of the full tree but the newlines, in source order."""
    return [t for t in tree.scan_values(lambda v: isinstance(v, Token)) if t.type != "_NL"]


# ---------------------------------------------------------------- the document model


@dataclass(eq=False)
class Atom:
    """One source token as printed, with the comments that belong to it."""

    tok: Token
    text: str
    space: bool = True  # a space before it, unless it starts a line
    lead: list[Comment] = field(default_factory=list)  # whole-line comments just before it
    trail: Comment | None = None  # the comment ending its line
    blank_before: bool = False

    @property
    def type(self) -> str:
        return self.tok.type


@dataclass(eq=False)
class Group:
    """A bracketed list: flat on one line, or one item per line (with trailing commas where allowed)."""

    open: Atom
    items: list[tuple[list, Atom | None]]  # (pieces, the comma after it)
    close: Atom
    comma_ok: bool = True  # False for a parenthesised expression: `(a + b)` takes no trailing comma

    @property
    def space(self) -> bool:
        return self.open.space

    @space.setter
    def space(self, value: bool) -> None:
        self.open.space = value


def _first_atom(pieces: list) -> Atom:
    p = pieces[0]
    return p if isinstance(p, Atom) else p.open


def _set_space(pieces: list, value: bool) -> list:
    if pieces:
        pieces[0].space = value  # an Atom's own flag, or a Group's opening bracket's
    return pieces


def _atoms(pieces: list):
    for p in pieces:
        if isinstance(p, Atom):
            yield p
        else:
            yield p.open
            for item, comma in p.items:
                yield from _atoms(item)
                if comma is not None:
                    yield comma
            yield p.close


# Tokens after which an opening bracket hugs: calls `f(x)`, subscripts `x[0]`, dtypes `long[]`, headers.
_HUG_AFTER = {"NAME", "NUMBER", "STRING", "TRUE", "FALSE", "NONE", "RPAR", "RSQB", "FORWARD", "BACKWARD", "EXAMPLE"}
_NO_SPACE_BEFORE = {"COLON", "COMMA", "RPAR", "RSQB", "DOT", "MAYBE_NONE"}
_SIMPLE = {"name", "number", "string", "true", "false", "none"}


class _Builder:
    """Tree → pieces. Every token of the tree has exactly one Atom, made up front so that comments can be
    attached before anything is laid out."""

    def __init__(self, tree: Tree, comments: list[Comment], source: str):
        self.source = source
        tokens = source_tokens(tree)
        self.by_id: dict[int, Atom] = {id(t): Atom(t, str(t)) for t in tokens}
        self.eof: list[Comment] = []
        self._attach(tokens, comments)

    def _attach(self, tokens: list[Token], comments: list[Comment]) -> None:
        offsets = [token_offsets(t) for t in tokens]
        starts = [start for start, _ in offsets]
        # blank lines: between each thing (token or comment) and the one before it
        things: list[tuple[int, int, Atom | Comment]] = [
            (start, end, self.by_id[id(t)]) for t, (start, end) in zip(tokens, offsets)
        ]
        things += [(c.start, c.end, c) for c in comments]
        things.sort(key=lambda x: x[0])
        prev_end = None
        for start, end, obj in things:
            if prev_end is not None:
                obj.blank_before = self.source.count("\n", prev_end, start) >= 2
            prev_end = end
        for c in comments:
            i = bisect.bisect_left(starts, c.start)  # tokens[i] is the first token after the comment
            if i > 0 and "\n" not in self.source[offsets[i - 1][1] : c.start]:
                atom = self.by_id[id(tokens[i - 1])]
                if atom.trail is None:
                    atom.trail = c
                    continue
            if i < len(tokens):
                self.by_id[id(tokens[i])].lead.append(c)
            else:
                self.eof.append(c)

    def atom(self, tok: Token, space: bool = True) -> Atom:
        a = self.by_id[id(tok)]
        a.space = space
        return a

    # -- expressions and lists

    def seq(self, children) -> list:
        """A run of tokens and subtrees on one line, bracket pairs among them as groups."""
        children = [c for c in children if not (isinstance(c, Token) and c.type == "_NL")]
        out: list = []
        i = 0
        while i < len(children):
            c = children[i]
            prev = out[-1] if out else None
            hug = prev is not None and (isinstance(prev, Group) or prev.type in _HUG_AFTER)
            if isinstance(c, Token) and c.type in ("LPAR", "LSQB"):
                j = self._matching(children, i)
                g = self.group(c, children[i + 1 : j], children[j])
                g.space = not hug
                out.append(g)
                i = j + 1
                continue
            if isinstance(c, Token):
                space = c.type not in _NO_SPACE_BEFORE and not (
                    prev is not None and isinstance(prev, Atom) and prev.type == "AT"
                )
                out.append(self.atom(c, space))
            else:
                pieces = self.ex(c)
                if pieces and isinstance(pieces[0], Group) and hug:
                    pieces[0].space = False
                out += pieces
            i += 1
        return out

    @staticmethod
    def _matching(children, i: int) -> int:
        close = {"LPAR": "RPAR", "LSQB": "RSQB"}[children[i].type]
        depth = 0
        for j in range(i, len(children)):
            c = children[j]
            if isinstance(c, Token) and c.type == children[i].type:
                depth += 1
            elif isinstance(c, Token) and c.type == close:
                depth -= 1
                if depth == 0:
                    return j
        raise FormatError("unbalanced brackets in the tree")

    def group(self, open_tok: Token, inner, close_tok: Token, comma_ok: bool = True) -> Group:
        inner = [c for c in inner if not (isinstance(c, Token) and c.type == "_NL")]
        if len(inner) == 1 and isinstance(inner[0], Tree) and inner[0].data in ("callargs", "subscripts"):
            inner = [c for c in inner[0].children if not (isinstance(c, Token) and c.type == "_NL")]
        items: list[tuple[list, Atom | None]] = []
        current: list | None = None
        for c in inner:
            if isinstance(c, Token) and c.type == "COMMA":
                items.append((current or [], self.atom(c, False)))
                current = None
            else:
                current = self.seq([c]) if isinstance(c, Token) else self.ex(c)
        if current is not None:
            items.append((current, None))
        return Group(self.atom(open_tok, True), items, self.atom(close_tok, False), comma_ok)

    def ex(self, node) -> list:
        if isinstance(node, Token):
            return [self.atom(node)]
        data = node.data
        ch = [c for c in node.children if not (isinstance(c, Token) and c.type == "_NL")]
        if data in _SIMPLE:
            return [self.atom(ch[0])]
        if data in ("unary", "starred"):
            return [self.atom(ch[0])] + _set_space(self.ex(ch[1]), False)
        if data in ("attr", "member_ref"):  # `x.ndim`, `init out_proj.bias = ...`
            return self.ex(ch[0]) + [self.atom(ch[1], False), self.atom(ch[2], False)]
        if data == "atom":  # ( expr )
            return [Group(self.atom(ch[0]), [(self.ex(ch[1]), None)], self.atom(ch[2], False), comma_ok=False)]
        if data == "slice":
            return self.slice(ch)
        if data == "none_entries":  # the argument type `[int?]`
            open_, entry, maybe_none, close = ch
            inner = [self.atom(entry, False), self.atom(maybe_none, False)]
            return [Group(self.atom(open_), [(inner, None)], self.atom(close, False), comma_ok=False)]
        if data == "list_comp":  # [item for i in range(n)]: one item, never split at its words
            open_, item, for_, var, in_, iterable, close = ch
            words = [self.atom(for_), self.atom(var), self.atom(in_)]
            inner = _set_space(self.ex(item), False) + words + self.ex(iterable)
            return [Group(self.atom(open_), [(inner, None)], self.atom(close, False), comma_ok=False)]
        return self.seq(ch)

    def slice(self, ch) -> list:
        segments: list[list] = [[]]
        colons: list[Token] = []
        for c in ch:
            if isinstance(c, Token) and c.type == "COLON":
                colons.append(c)
                segments.append([])
            else:
                segments[-1].append(c)
        complex_ = any(seg and not _simple(seg[0]) for seg in segments)
        out: list = []
        for i, seg in enumerate(segments):
            if i > 0:
                out.append(self.atom(colons[i - 1], complex_ and bool(segments[i - 1])))
            if seg:
                pieces = self.ex(seg[0])
                if i > 0:
                    _set_space(pieces, complex_)
                out += pieces
        return out


def _simple(node) -> bool:
    """A slice bound that black would not space around: a name, a literal, or a negated one."""
    if isinstance(node, Token) or node.data in _SIMPLE:
        return True
    return node.data == "unary" and _simple(node.children[-1])


# ---------------------------------------------------------------- laying out one logical line


def _pad(indent: int) -> str:
    return " " * indent


def _flat(pieces: list) -> list[tuple[Atom, bool]]:
    out: list[tuple[Atom, bool]] = []
    for p in pieces:
        if isinstance(p, Atom):
            out.append((p, p.space))
            continue
        out.append((p.open, p.open.space))
        n = len(p.items)
        for j, (item, comma) in enumerate(p.items):
            sub = _flat(item)
            if sub:
                sub[0] = (sub[0][0], j > 0)
            out += sub
            if comma is not None and j < n - 1:
                out.append((comma, False))
        out.append((p.close, False))
    return out


def _join(flat: list[tuple[Atom, bool]]) -> str:
    text = ""
    for atom, space in flat:
        if text and space:
            text += " "
        text += atom.text
    return text


def _trail_text(trails: list[Comment]) -> str:
    return "".join("  " + c.text for c in trails)


def _comment_lines(comments: list[Comment], indent: int) -> list[str]:
    return [_pad(indent) + c.text for c in comments]


def _forced(g: Group) -> bool:
    """A group holding a comment must be laid out one item per line."""
    if g.open.trail or g.close.lead:
        return True
    for item, comma in g.items:
        if any(a.lead or a.trail for a in _atoms(item)):
            return True
        if comma is not None and (comma.lead or comma.trail):
            return True
    return False


def render(
    pieces: list, indent: int, suffix: str = "", lead: bool = False, trails: list[Comment] | None = None
) -> list[str]:
    """Lay out one logical line at `indent`; `suffix` (a trailing comma) goes before its end-of-line comments."""
    out: list[str] = []
    if lead:
        out += _comment_lines(_first_atom(pieces).lead, indent)
    trails = list(trails or [])
    flat = _flat(pieces)
    mid = any(a.lead for a, _ in flat[1:]) or any(a.trail for a, _ in flat[:-1])
    groups = [i for i, p in enumerate(pieces) if isinstance(p, Group)]
    forced = [i for i in groups if _forced(pieces[i])]
    splittable = [i for i in groups if pieces[i].items]
    text = _join(flat) + suffix
    too_long = indent + len(text) > LIMIT
    if not mid and not forced and (not too_long or not splittable):
        last = flat[-1][0]
        return out + [_pad(indent) + text + _trail_text(([last.trail] if last.trail else []) + trails)]
    if forced:
        chosen = forced[0]
    elif too_long and splittable:
        chosen = _choose(pieces, splittable, indent)
    else:
        return out + _flat_lines(pieces, indent, suffix, trails)
    return out + _explode(pieces, chosen, indent, suffix, trails)


def _choose(pieces: list, candidates: list[int], indent: int) -> int:
    """The largest bracket pair whose opening line fits (the rightmost of equals); else the first."""
    fitting = [i for i in candidates if indent + len(_join(_flat(pieces[:i] + [pieces[i].open]))) <= LIMIT]
    if not fitting:
        return candidates[0]
    return max(fitting, key=lambda i: (len(_join(_flat([pieces[i]]))), i))


def _explode(pieces: list, i: int, indent: int, suffix: str, trails: list[Comment]) -> list[str]:
    g: Group = pieces[i]
    out = _flat_lines(pieces[:i] + [g.open], indent, "", [])
    inner = indent + STEP
    # a trailing comma after every item of a list, as black writes them; none after a lone item
    separator = "," if g.comma_ok and len(g.items) > 1 else ""
    for item, comma in g.items:
        # Comments around a comma: after it on the item's line; if some stood before it, they all
        # follow the item on their own lines, in order.
        # A line ends in at most one comment, so one after the item's own goes on the next line.
        before = comma.lead if comma is not None else []
        after = [comma.trail] if comma is not None and comma.trail else []
        inline = not before and not _flat(item)[-1][0].trail
        out += render(item, inner, separator, lead=True, trails=after if inline else [])
        if not inline:
            out += _comment_lines(before + after, inner)
    out += _comment_lines(g.close.lead, inner)
    out += render([g.close] + pieces[i + 1 :], indent, suffix, trails=trails)
    return out


def _flat_lines(pieces: list, indent: int, suffix: str, trails: list[Comment]) -> list[str]:
    """One line, broken after end-of-line comments and before whole-line comments (inside brackets only)."""
    flat = _flat(pieces)
    lines: list[str] = []
    current = ""
    at = indent
    for k, (atom, space) in enumerate(flat):
        if k > 0 and atom.lead:
            if current:
                lines.append(_pad(at) + current)
                current = ""
            at = indent + STEP
            lines += _comment_lines(atom.lead, at)
        if current and space:
            current += " "
        current += atom.text
        if atom.trail and k < len(flat) - 1:
            lines.append(_pad(at) + current + _trail_text([atom.trail]))
            current = ""
            at = indent + STEP
    last = flat[-1][0]
    lines.append(_pad(at) + current + suffix + _trail_text(([last.trail] if last.trail else []) + trails))
    return lines


# ---------------------------------------------------------------- laying out the file

_MEMBER_GROUP = {
    "docstring": 0,
    "param": 1,
    "buffer": 1,
    "member_loop": 1,
    "sub": 2,
    "reinit": 2,
    "let": 2,
    "redraw": 2,
    "example": 3,
    "forward": 4,
    "backward": 5,
}


class _Printer:
    def __init__(self, builder: _Builder):
        self.b = builder
        self.lines: list[str] = []

    def blank(self) -> None:
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    def leading(self, atom: Atom, indent: int, blank: str) -> None:
        """The comments before an item and the blank lines around them. blank: none | force | keep."""
        first_blank = atom.lead[0].blank_before if atom.lead else atom.blank_before
        if blank == "force" or (blank == "keep" and first_blank):
            self.blank()
        for i, c in enumerate(atom.lead):
            if i > 0 and c.blank_before:
                self.blank()
            self.lines.append(_pad(indent) + c.text)
        if atom.lead and atom.blank_before:
            self.blank()

    def item(self, pieces: list, level: int, blank: str) -> None:
        self.leading(_first_atom(pieces), level * STEP, blank)
        self.lines += render(pieces, level * STEP)

    def closing(self, close: Atom, level: int, nonempty: bool, more: list | None = None) -> None:
        """Comments before a `}` (at the inner level), then the `}` line itself (with `more` after it)."""
        for i, c in enumerate(close.lead):
            if c.blank_before and (i > 0 or nonempty):
                self.blank()
            self.lines.append(_pad((level + 1) * STEP) + c.text)
        self.lines += render([close] + (more or []), level * STEP)

    # -- file, layers, members

    def file(self, tree: Tree) -> None:
        layers = [c for c in tree.children if isinstance(c, Tree)]
        for i, layer in enumerate(layers):
            self.layer(layer, "none" if i == 0 else "force")
        for c in self.b.eof:
            if c.blank_before:
                self.blank()
            self.lines.append(c.text)

    def layer(self, tree: Tree, blank: str) -> None:
        ch = [c for c in tree.children if not (isinstance(c, Token) and c.type == "_NL")]
        decorators = [c for c in ch if isinstance(c, Tree) and c.data == "decorator"]
        for i, d in enumerate(decorators):
            self.item(self.b.seq(d.children), 0, blank if i == 0 else "none")
        start = len(decorators)
        lbrace = next(i for i, c in enumerate(ch) if isinstance(c, Token) and c.type == "LBRACE")
        rbrace = len(ch) - 1
        closing = _token(ch[rbrace], "RBRACE")
        header = self.b.seq(ch[start:lbrace]) + [self.b.atom(_token(ch[lbrace], "LBRACE"))]
        self.item(header, 0, blank if not decorators else "none")
        members = [c for c in ch[lbrace + 1 : rbrace] if isinstance(c, Tree)]
        for i, m in enumerate(members):
            if i == 0:
                mode = "none"
            else:
                prev = members[i - 1].data
                mode = (
                    "keep" if prev == "docstring" or _MEMBER_GROUP.get(prev) == _MEMBER_GROUP.get(m.data) else "force"
                )
            self.member(m, 1, mode)
        self.closing(self.b.atom(closing), 0, bool(members))

    def member(self, tree: Tree, level: int, blank: str) -> None:
        ch = [c for c in tree.children if not (isinstance(c, Token) and c.type == "_NL")]
        if tree.data == "member_loop":  # for k in range(n) { param ... }
            lbrace = next(i for i, c in enumerate(ch) if isinstance(c, Token) and c.type == "LBRACE")
            self.item(self.b.seq(ch[: lbrace + 1]), level, blank)
            members = [c for c in ch[lbrace + 1 : -1] if isinstance(c, Tree)]
            for i, m in enumerate(members):
                self.member(m, level + 1, "none" if i == 0 else "keep")
            self.closing(self.b.atom(_token(ch[-1], "RBRACE")), level, bool(members))
            return
        if tree.data in ("forward", "backward"):
            block = ch[-1]
            header = self.b.seq(ch[:-1]) + [self.b.atom(_children(block)[0])]
            self.item(header, level, blank)
            self.block(block, level)
            return
        self.item(self.b.seq(ch), level, blank)

    # -- statements

    def block(self, block: Tree, level: int, more: list | None = None, close_line: bool = True) -> Atom:
        ch = _children(block)
        stmts = [c for c in ch[1:-1] if isinstance(c, Tree)]
        for i, s in enumerate(stmts):
            self.stmt(s, level + 1, "none" if i == 0 else "keep")
        close = self.b.atom(ch[-1])
        if close_line:
            self.closing(close, level, bool(stmts), more)
        return close

    def stmt(self, tree: Tree, level: int, blank: str) -> None:
        if tree.data == "if_stmt":
            self.if_stmt(tree, level, blank)
            return
        if tree.data == "for_stmt":
            for_, var, in_, iterable, body = _children(tree)
            header = [self.b.atom(for_), self.b.atom(var), self.b.atom(in_)] + self.b.ex(iterable)
            self.item(header + [self.b.atom(_children(body)[0])], level, blank)
            self.block(body, level)
            return
        ch = _children(tree)
        if tree.data == "return_stmt" and isinstance(ch[-1], Token) and ch[-1].type == "COMMA":
            comma = self.b.atom(ch[-1])
            if not comma.lead and not comma.trail:
                ch = ch[:-1]
        self.item(self.b.seq(ch), level, blank)

    def if_stmt(self, tree: Tree, level: int, blank: str, prefix: list | None = None) -> None:
        ch = _children(tree)
        if_tok, cond, body = ch[0], ch[1], ch[2]
        header = [self.b.atom(if_tok)] + self.b.ex(cond) + [self.b.atom(_children(body)[0])]
        if prefix is None:
            self.item(header, level, blank)
        else:
            self.lines += render(prefix + _set_space(header, True), level * STEP)
        close = self.block(body, level, close_line=False)
        stmts = [c for c in _children(body)[1:-1] if isinstance(c, Tree)]
        if len(ch) == 3:
            self.closing(close, level, bool(stmts))
            return
        else_atom = self.b.atom(ch[3])
        orelse = ch[4]
        if close.trail or else_atom.lead:
            self.closing(close, level, bool(stmts))
            self.lines += _comment_lines(else_atom.lead, level * STEP)
            prefix = [else_atom]
        else:
            for i, c in enumerate(close.lead):
                if c.blank_before and (i > 0 or stmts):
                    self.blank()
                self.lines.append(_pad((level + 1) * STEP) + c.text)
            prefix = [close, else_atom]
        if orelse.data == "if_stmt":
            self.if_stmt(orelse, level, "none", prefix)
            return
        self.lines += render(prefix + [self.b.atom(_children(orelse)[0])], level * STEP)
        self.block(orelse, level)


def _children(tree: Tree) -> list:
    return [c for c in tree.children if not (isinstance(c, Token) and c.type == "_NL")]


# ---------------------------------------------------------------- the entry points


def _shape(tree) -> tuple:
    """The tree with commas left out: equal shapes mean equal specs (the IR never sees a comma)."""
    if isinstance(tree, Token):
        return (tree.type, str(tree))
    return (
        tree.data,
        tuple(_shape(c) for c in tree.children if not (isinstance(c, Token) and c.type in ("_NL", "COMMA"))),
    )


def format_source(text: str, path: str = "<string>") -> str:
    """The canonical layout of a spec. Raises SpecError (located, like every diagnostic) when it does not parse."""
    text = normalize_source(text)
    if len(text) > MAX_SOURCE_CHARS:
        raise SpecError([Diagnostic(path, Span.point(1, 1), *size_problem(len(text)))])
    try:
        tree, comments = parse_with_comments(text)
    except UnexpectedInput as exc:
        raise SpecError([syntax_diagnostic(exc, path, text)]) from None
    except TooManyTokens as exc:
        raise SpecError([too_many_tokens(exc, path, text)]) from None
    problems = bound_problems(tree, path, text)  # the layout recurses over the tree
    if problems:
        raise SpecError(problems)
    builder = _Builder(tree, comments, text)
    printer = _Printer(builder)
    printer.file(tree)
    lines = printer.lines
    while lines and lines[-1] == "":
        lines.pop()
    out = "\n".join(line.rstrip() if "\n" not in line else line for line in lines) + ("\n" if lines else "")
    _verify(text, tree, comments, out)
    return out


def _verify(text: str, tree: Tree, comments: list[Comment], out: str) -> None:
    try:
        tree2, comments2 = parse_with_comments(out)
    except UnexpectedInput as exc:  # pragma: no cover - a formatter bug
        raise FormatError(f"the formatted spec does not parse: {exc}") from None
    if _shape(tree) != _shape(tree2):  # pragma: no cover - a formatter bug
        raise FormatError("the formatted spec would mean something else")
    if [c.text for c in comments] != [c.text for c in comments2]:  # pragma: no cover - a formatter bug
        raise FormatError("the formatted spec would lose or reorder comments")


# ---------------------------------------------------------------- the command


def _spec_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        root = Path(p)
        if root.is_dir():
            files += sorted(root.rglob("*.layer"))
        elif root.exists():  # a device or FIFO too: reading it is refused with a located error
            files.append(root)
        else:
            raise FileNotFoundError(p)
    return files


def run_cli(paths: list[str], check: bool, diff: bool) -> int:
    """`layerdsl fmt PATHS... [--check] [--diff]`: 0 when all is well, 1 when a file would change (with
    --check) or a spec does not parse, 123 when the formatter itself failed; files with errors are reported
    and left alone."""
    files = _spec_files(paths)
    problems: list[Diagnostic] = []
    changed: list[Path] = []
    unchanged = 0
    internal = False
    for path in files:
        shown = str(path)
        try:
            text = read_spec(path, MAX_SOURCE_CHARS)
        except UnicodeDecodeError as exc:
            problems.append(Diagnostic(shown, Span.point(1, 1), f"not UTF-8 text: {exc.reason}"))
            continue
        except Unreadable as exc:
            problems.append(Diagnostic(shown, Span.point(1, 1), str(exc)))
            continue
        except OSError as exc:  # unreadable (permissions, a dangling link): reported with the rest
            problems.append(Diagnostic(shown, Span.point(1, 1), f"cannot read this file: {exc.strerror or exc}"))
            continue
        try:
            formatted = format_source(text, shown)
        except SpecError as exc:
            problems.extend(exc.diagnostics)
            continue
        except FormatError as exc:
            internal = True
            problems.append(
                Diagnostic(shown, Span.point(1, 1), f"cannot format: {exc}", "please report this layerdsl bug")
            )
            continue
        if formatted == text:
            unchanged += 1
            continue
        changed.append(path)
        if diff:
            sys.stdout.writelines(
                difflib.unified_diff(
                    text.splitlines(keepends=True),
                    formatted.splitlines(keepends=True),
                    f"{shown}",
                    f"{shown} (formatted)",
                )
            )
        if check:
            if not diff:
                print(f"would reformat {shown}", file=sys.stderr)
        elif not diff:
            write_atomic(Path(os.path.realpath(path)), formatted)  # through a symlink: the link stays one
    for d in problems:
        print(d.render(), file=sys.stderr)
    verb = "would be reformatted" if check or diff else "reformatted"
    summary = f"layerdsl: {len(changed)} file{'s' if len(changed) != 1 else ''} {verb}, {unchanged} unchanged"
    if problems:
        summary += f", {len(problems)} error{'s' if len(problems) != 1 else ''}"
    print(summary, file=sys.stderr)
    if internal:
        return 123  # black's convention: the tool failed, not the spec
    if problems:
        return 1
    return 1 if check and changed else 0
