"""The generated code laid out as black lays it out, without running black on most of it.

black took about 45 ms per generated module, most of `gen`'s time. The emitter writes black's spacing,
quotes and parentheses itself, so a line within black's 88 columns is already black's; what is left is
blank lines and long lines:

- blank lines: at most two in a row before top-level code, one inside a block, none at the end;
- long lines of the forms the emitter writes are split here exactly as black splits them: `raise E("...")`
  (the string on a line of its own), `def` signatures (black's left-hand split), calls and names assigned
  a call (the arguments on one line, or one per line with a trailing comma), lists, returned strings,
  and the values black puts in invisible parentheses after `=`, `return`, `if`, `elif` and `while`:
  the parentheses kept (the value on a line of its own, or cut before its top-level delimiters of the
  highest priority) or omitted for a value that ends in a call (split inside that call);
- a statement that its `# file.layer:LINE` comment (codegen/spec_lines.py) makes too long is split with the
  comment after the call's bracket that ends its first line (a traceback shows that line only; black keeps
  a comment there): the split black makes of the statement alone, or, for a statement that fits alone, the
  right-hand split in the last call with room for the comment. Where the first line has no room for it, or
  is optional parentheses black keeps (the line that raises is then one inside them), the comment goes on a
  line of its own above the statement;
- every other long line goes to black, all of a module's in one call, each statement at its own depth;
  a module with a statement over several lines goes to black whole.

tests/test_layout.py checks that black leaves the result unchanged for every spec the tests know, for
each form and for random derived backwards, so the output stays black's.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

LINE_LENGTH = 88  # black's default, which the generated code is formatted with
INDENT = "    "

_RAISE_STRING = re.compile(r'(?P<head>raise [A-Za-z_][\w.]*\()(?P<arg>[rRbBuUfF]{0,2}"(?:[^"\\]|\\.)*")\)')
_DEF = re.compile(r"(?P<head>def [A-Za-z_]\w*\()(?P<body>.*)(?P<tail>\) -> [^()]*:)")
_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_CALL = re.compile(rf"(?P<head>(?:{_DOTTED} = )?{_DOTTED}\()(?P<body>.*)(?P<tail>\))")
_LIST = re.compile(rf"(?P<head>{_DOTTED} = \[)(?P<body>.*)(?P<tail>\])")
_ASSIGN_OR_RETURN = re.compile(rf"(?P<head>{_DOTTED} =|return) (?P<value>.+)")
_CONDITION = re.compile(r"(?P<keyword>if|elif|while) (?P<condition>.+):")
_RETURN_STRING = re.compile(r'return (?P<arg>[rRbBuUfF]{0,2}"(?:[^"\\]|\\.)*")')
_F_STRING = re.compile(r"(?<![\w\"'])[rR]?[fF][rR]?[\"']")
_SPEC_COMMENT = re.compile(r"(?P<code>.*\S)  (?P<comment># [\w.-]+\.layer:\d+)")
_OPEN = "([{"
_CLOSE = ")]}"


def format_python(text: str) -> str:
    """`text` (generated Python, one statement per line) as black formats it."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out: list[str] = []
    deferred: list[tuple[int, str]] = []  # (index in `out`, long statement) to split
    has_f_strings = False
    in_string = False
    blank = 0
    for line in lines:
        if in_string:  # inside a docstring: black leaves its lines as the emitter wrote them
            out.append(line)
            in_string = line.count('"""') % 2 == 0
            continue
        if not line.strip():
            blank += 1
            continue
        if blank and out:
            depth_zero = not line.startswith(" ")
            out.extend([""] * min(blank, 2 if depth_zero else 1))
        blank = 0
        stripped = line.lstrip()
        if stripped.startswith('"""') or stripped.startswith('r"""'):
            in_string = line.count('"""') % 2 == 1
            out.append(line)
            continue
        if stripped.startswith("#"):
            out.append(line)
            continue
        if _unbalanced(line):  # a statement over several lines: not what this module lays out
            import black

            return black.format_str(text, mode=black.Mode(line_length=LINE_LENGTH))
        has_f_strings = has_f_strings or _F_STRING.search(line) is not None
        if _width(line) <= LINE_LENGTH:
            out.append(line)
            continue
        out.append(line)  # replaced below, once the whole module is known
        deferred.append((len(out) - 1, line))
    to_black = []
    above: dict[int, str] = {}  # index in `out` -> a spec comment that goes on a line of its own above it
    for index, line in deferred:
        commented = _SPEC_COMMENT.fullmatch(line)
        if commented and _display_width(line) <= LINE_LENGTH:
            continue  # a spec file name not in ASCII, on a line that fits
        if commented:
            split = _split_with_spec_comment(commented["code"], commented["comment"], has_f_strings)
            if split is not None:
                out[index] = split
                continue
            line = out[index] = commented["code"]
            above[index] = commented["comment"]
            if _width(line) <= LINE_LENGTH:
                continue
        split = _split(line, has_f_strings)
        if split is None:
            to_black.append((index, line))
        else:
            out[index] = split
    if any(line.lstrip().startswith(_CONTINUATIONS) for _, line in to_black):
        import black  # a clause that cannot stand alone: black formats the module

        return black.format_str(text, mode=black.Mode(line_length=LINE_LENGTH))
    _black_lines(out, to_black, has_f_strings)
    for index, comment in above.items():
        out[index] = _with_comment_first(out[index], comment) or f"{_indent(out[index])}{comment}\n{out[index]}"
    return "\n".join(out) + "\n"


def _width(line: str) -> int:
    """The width black measures: characters, except that a non-ASCII line counts as too long (black weighs
    East Asian characters double), so it goes to black."""
    return len(line) if line.isascii() else LINE_LENGTH + 1


def _display_width(line: str) -> int:
    """At least the width black measures (it weighs East Asian wide characters double)."""
    if line.isascii():
        return len(line)
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)


def _split(line: str, has_f_strings: bool) -> str | None:
    """`line` split as black splits it, when it has one of the forms handled here; None otherwise."""
    indent = line[: len(line) - len(line.lstrip())]
    code = line[len(indent) :]
    inner = indent + INDENT
    if "#" in code and not _RAISE_STRING.fullmatch(code):
        return None  # a trailing comment moves with black's split: left to black
    m = _RAISE_STRING.fullmatch(code)
    if m:
        return f"{indent}{m['head']}\n{inner}{m['arg']}\n{indent})"
    m = _DEF.fullmatch(code)
    if m:
        return _bracket_split(indent, m["head"], m["body"], m["tail"], has_f_strings, is_def=True)
    m = _RETURN_STRING.fullmatch(code)
    if m:  # black wraps a returned string in parentheses only if that makes it fit
        return f"{indent}return (\n{inner}{m['arg']}\n{indent})" if len(inner) + len(m["arg"]) <= LINE_LENGTH else line
    m = _CALL.fullmatch(code)
    if m:  # a call, or a name assigned a call (black omits the optional parentheses around a lone call)
        split = _bracket_split(indent, m["head"], m["body"], m["tail"], has_f_strings, is_def=False)
        if split is not None or _top_level_items(m["body"]) is not None:
            return split  # else the last `)` does not close the first `(`: not one call
    m = _LIST.fullmatch(code)
    if m:
        items = _top_level_items(m["body"])
        if items is not None and len(items) > 1 and all(len(inner) + len(i) + 1 <= LINE_LENGTH for i in items):
            return "\n".join([indent + m["head"], *(f"{inner}{i}," for i in items), indent + m["tail"]])
        return None  # a list of several items explodes, one per line (black's magic for literals)
    m = _CONDITION.fullmatch(code)
    if m:
        split = _condition_split(indent, m["keyword"], m["condition"])
        if split is None:
            split = _optional_parens_split(indent, m["keyword"], m["condition"], ":", has_f_strings)
        return split
    m = _ASSIGN_OR_RETURN.fullmatch(code)
    if m and _is_ternary(m["value"]):
        return _ternary_split(indent, m["head"], m["value"])
    if m:
        return _optional_parens_split(indent, m["head"], m["value"], "", has_f_strings)
    return None


def _split_with_spec_comment(code: str, comment: str, has_f_strings: bool) -> str | None:
    """`code  # spec.layer:N` split over several lines with the comment at the end of the first, after the
    opening bracket where black splits (a traceback shows a statement's first line only); None where the
    split keeps the optional parentheses (the line that raises is then the value's, not the first) or the
    comment does not fit."""
    if _width(code) > LINE_LENGTH:
        split = _split(code, has_f_strings)
    else:  # the comment alone makes the line too long: black splits at a trailer, from the right
        split = _trailer_split(code, LINE_LENGTH - 2 - len(comment), has_f_strings)
    return None if split is None else _with_comment_first(split, comment)


def _with_comment_first(split: str, comment: str) -> str | None:
    """`split` (a statement over several lines) with `comment` after the bracket that ends its first line,
    where black keeps it there: a call's or subscript's bracket (not optional parentheses), room left."""
    first, _, rest = split.partition("\n")
    if not rest or _display_width(f"{first}  {comment}") > LINE_LENGTH or not first.endswith(tuple(_OPEN)):
        return None
    if len(first) < 2 or not (first[-2].isalnum() or first[-2] in "_)]"):
        return None  # parentheses around a value: the line that raises is one inside them
    return f"{first}  {comment}\n{rest}"


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _trailer_split(code: str, room: int, has_f_strings: bool) -> str | None:
    """`code` (short enough alone) split in the last bracket pair of its trailing calls whose first line
    leaves `room` for the comment, as black's right-hand split omitting trailers does; None where black
    would keep the optional parentheses around an assigned or returned value."""
    indent = _indent(code)
    statement = code[len(indent) :]
    m = _ASSIGN_OR_RETURN.fullmatch(statement)
    head, value = (f"{m['head']} ", m["value"]) if m else ("", statement)
    flat = _flat(value)
    delimiters = None if flat is None else _delimiters(flat)
    if flat is None or delimiters is None:
        return None
    if m and len(delimiters) == 1 and delimiters[0][0] != _DOT:
        return _last_call_split(indent, head, value, flat, room, has_f_strings)
    if any(p != _DOT for p, _ in delimiters):
        return None
    if m and len(delimiters) > 1 or not delimiters and value.startswith(tuple(_OPEN)):
        return None  # several method calls after brackets: black keeps the optional parentheses
    for opening, closing in reversed(_top_level_pairs(value)):
        if not _TRAILERS.fullmatch(flat[closing + 1 :]) or closing == opening + 1:
            continue
        if len(indent) + len(head) + opening + 1 > room:
            continue
        return _bracket_split(
            indent, head + value[: opening + 1], value[opening + 1 : closing], value[closing:], has_f_strings, False
        )
    return None


def _last_call_split(indent: str, head: str, value: str, flat: str, room: int, has_f_strings: bool) -> str | None:
    """`x = a * f(b)` (one delimiter) split in its last call, where black omits the optional parentheses:
    other brackets before that call, or the call's opening bracket (with the comment on it) within the line
    length; None where black keeps them."""
    if value.startswith(tuple(_OPEN)) or not value.endswith(")") or value.endswith("()"):
        return None
    opening = _last_opening(value)
    if opening is None or opening == 0 or not (value[opening - 1].isalnum() or value[opening - 1] in "_)]"):
        return None
    seen_other_brackets = any(c in _OPEN for c in flat[:opening] if c not in "\x01\x02") or "\x01" in flat[:opening]
    comment_width = LINE_LENGTH - room  # black counts a comment with the bracket it follows
    if not seen_other_brackets and len(indent) + len(INDENT) + opening + 1 + comment_width > LINE_LENGTH:
        return None
    if len(indent) + len(head) + opening + 1 > room:
        return None
    return _bracket_split(indent, head + value[: opening + 1], value[opening + 1 : -1], ")", has_f_strings, False)


_TRAILERS = re.compile(r"(?:\.[A-Za-z_]\w*|\x01)*")


def _top_level_pairs(value: str) -> list[tuple[int, int]]:
    """The positions of the top-level bracket pairs of `value` (outside double-quoted strings), left to right."""
    pairs = []
    depth = 0
    opening = 0
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == '"':
            j = i + 1
            while j < len(value) and value[j] != '"':
                j += 2 if value[j] == "\\" else 1
            i = j + 1
            continue
        if ch in _OPEN:
            if depth == 0:
                opening = i
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth == 0:
                pairs.append((opening, i))
        i += 1
    return pairs


def _ternary_split(indent: str, head: str, value: str) -> str | None:
    """`x = a if b else c`: two delimiters, so black keeps the optional parentheses, with the value on a line
    of its own, or cut before `if` and before `else`."""
    inner = indent + INDENT
    if len(inner) + len(value) <= LINE_LENGTH:
        body = [inner + value]
    else:
        flat = _flat(value) or ""
        cuts = [m.start() for m in re.finditer(r"\b(if|else)\b", flat)]
        if len(cuts) != 2:
            return None
        cut = _cut_lines(inner, value, cuts)
        if cut is None:
            return None
        body = cut
    return "\n".join([f"{indent}{head} (", *body, f"{indent})"])


# black's delimiter priorities (black/brackets.py) for what can stand at the top level of an expression
_LOGIC, _COMPARATOR, _POWER, _DOT = 14, 10, 2, 1
_MATH = {"|": 9, "^": 8, "&": 7, "<<": 6, ">>": 6, "+": 5, "-": 5, "*": 4, "/": 4, "//": 4, "%": 4, "@": 4, "**": 2}
_COMPARISONS = {"<", ">", "==", "!=", "<=", ">="}
_TOKEN = re.compile(
    r"(?P<space>\s+)|(?P<word>[A-Za-z_]\w*)|(?P<number>(?:\d[\w]*(?:\.\w*)?|\.\d\w*)(?:[eE][-+]?\d+)?)"
    r"|(?P<group>[\x01\x02]+)|(?P<op>\*\*|//|<<|>>|<=|>=|==|!=|[-+*/%@|&^~<>.])"
)


def _delimiters(flat: str) -> list[tuple[int, int]] | None:
    """The top-level delimiters of an expression (`flat`: its bracket and string contents blanked), as
    (black's priority, position); None for anything this module does not judge (commas, keywords other
    than and/or/not/in/is, a lambda, implicitly joined strings, `*` unpacking)."""
    found: list[tuple[int, int]] = []
    operand = False  # whether the previous token ends an operand (so an operator after it is binary)
    previous_group = ""  # the blanked text of the previous token, if it was a bracket or string
    skip_next = ""
    pos = 0
    for m in _TOKEN.finditer(flat):
        if m.start() != pos:
            return None
        pos = m.end()
        kind, text = m.lastgroup, m.group()
        if kind == "space":
            continue
        if skip_next:
            if text != skip_next:
                return None
            skip_next = ""
            continue
        if kind == "word":
            if text in ("and", "or"):
                found.append((_LOGIC, m.start()))
                operand = False
            elif text in ("is", "in") or text == "not" and operand:
                if not operand:
                    return None
                found.append((_COMPARATOR, m.start()))
                skip_next = "in" if text == "not" else ""
                operand = False
            elif text == "not":
                operand = False  # unary
            elif text in ("if", "else", "lambda", "for", "async", "await", "yield"):
                return None
            else:
                operand = True
            previous_group = ""
        elif kind == "number":
            operand, previous_group = True, ""
        elif kind == "group":
            if previous_group and not operand:
                return None
            if previous_group.endswith("\x02") and text.startswith("\x02"):
                return None  # implicitly joined strings
            operand, previous_group = True, text
        elif text == ".":
            if previous_group.endswith("\x01"):
                found.append((_DOT, m.start()))  # a method called on a bracketed expression's result
            operand, previous_group = False, ""
        elif text in _COMPARISONS:
            found.append((_COMPARATOR, m.start()))
            operand, previous_group = False, ""
        else:
            if not operand:
                if text not in ("-", "+", "~"):
                    return None  # `*args`, `**kwargs`
            else:
                found.append((_MATH[text], m.start()))
            operand, previous_group = False, ""
    if pos != len(flat) or skip_next:
        return None
    return found


def _optional_parens_split(indent: str, head: str, value: str, tail: str, has_f_strings: bool) -> str | None:
    """`head value tail` where black puts invisible parentheses around `value` (after `=`, `return`, `if`):
    kept (the value on a line of its own, or cut before each top-level delimiter of its highest priority) or
    omitted (split at the call that ends the value), as black's right-hand split decides; None where that
    decision needs more than this module models."""
    flat = _flat(value)
    delimiters = None if flat is None else _delimiters(flat)
    if flat is None or delimiters is None:
        return None
    inner = indent + INDENT
    top = max((p for p, _ in delimiters), default=0)
    cuts = [at for p, at in delimiters if p == top]
    if not cuts or len(cuts) == 1 and top == _DOT:
        omit = True  # without delimiters, or a single method call, the parentheses are not needed
    elif len(cuts) > 1:
        omit = False
    elif value.startswith(("(", "[", "{")):
        return None  # black then weighs omitting the opening bracket's pair: not modelled here
    elif value.endswith(")") and not value.endswith("()"):
        opening = _last_opening(value)
        if opening is None:
            return None
        seen_other_brackets = any(c in _OPEN for c in flat[:opening] if c not in "\x01\x02") or "\x01" in flat[:opening]
        omit = seen_other_brackets or len(inner) + opening + 1 <= LINE_LENGTH
    elif value.endswith(("]", "}")):
        return None
    else:
        omit = False
    if omit:
        if not value.endswith(")"):
            return None
        opening = _last_opening(value)
        if opening is None or opening == 0 or not (value[opening - 1].isalnum() or value[opening - 1] in "_)]"):
            return None  # not a call: a parenthesised expression or a tuple
        return _bracket_split(
            indent, f"{head} {value[: opening + 1]}", value[opening + 1 : -1], ")" + tail, has_f_strings, False
        )
    if len(inner) + len(value) <= LINE_LENGTH:
        body = [inner + value]
    elif top in (_DOT, _POWER):
        return None
    else:
        cut = _cut_lines(inner, value, cuts)
        if cut is None:
            return None
        body = cut
    return "\n".join([f"{indent}{head} (", *body, f"{indent}){tail}"])


def _cut_lines(inner: str, text: str, cuts: list[int]) -> list[str] | None:
    """`text` cut before each position in `cuts`, one piece per line at indent `inner`; None when a piece
    is still too long."""
    bounds = [0, *cuts, len(text)]
    lines = [inner + text[a:b].strip() for a, b in zip(bounds, bounds[1:])]
    return None if any(len(line) > LINE_LENGTH for line in lines) else lines


def _last_opening(value: str) -> int | None:
    """The position of the bracket that the last character of `value` closes."""
    depth = 0
    opening = None
    quote = False
    for i, ch in enumerate(value):
        if ch == '"':
            quote = not quote
        elif quote:
            if ch == "\\":
                return None  # an escape inside a string: not scanned here
        elif ch in _OPEN:
            if depth == 0:
                opening = i
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
    return opening if depth == 0 and not quote else None


def _is_ternary(value: str) -> bool:
    flat = _flat(value)
    return (
        flat is not None
        and re.search(r"\bif\b", flat) is not None
        and re.search(r"\belse\b", flat) is not None
        and not re.search(r",| = |:=|\b(lambda|for|async|await|yield)\b", flat)
    )


def _condition_split(indent: str, keyword: str, condition: str) -> str | None:
    """`if a and b or c:` with two or more `and`/`or` outside brackets: black keeps the optional parentheses
    around the condition (several delimiters of one priority), on one line or one operand per line."""
    flat = _flat(condition)
    if flat is None or re.search(r",| = |:=|\b(if|else|lambda|for|async|await|yield)\b", flat):
        return None
    cuts = [m.start() for m in re.finditer(r"\b(and|or)\b", flat)]
    if len(cuts) < 2:
        return None
    inner = indent + INDENT
    if len(inner) + len(condition) <= LINE_LENGTH:
        body = [inner + condition]
    else:
        cut = _cut_lines(inner, condition, cuts)
        if cut is None:
            return None
        body = cut
    return "\n".join([f"{indent}{keyword} (", *body, f"{indent}):"])


def _flat(code: str) -> str | None:
    """`code` with what is inside brackets and strings blanked out (same length), so that what is left is
    its top level; None if it has a single-quoted string or unbalanced brackets."""
    out = []
    depth = 0
    i = 0
    while i < len(code):
        ch = code[i]
        if ch == "'":
            return None
        if ch == '"':
            j = i + 1
            while j < len(code) and code[j] != '"':
                j += 2 if code[j] == "\\" else 1
            if j >= len(code):
                return None
            out.append("\x02" * (j + 1 - i))
            i = j + 1
            continue
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth < 0:
                return None
        out.append(ch if depth == 0 and ch not in _CLOSE else "\x01")
        i += 1
    return "".join(out) if depth == 0 else None


def _bracket_split(indent: str, head: str, body: str, tail: str, has_f_strings: bool, is_def: bool) -> str | None:
    """`head(` / `body` / `)tail`, the body on one line when it fits, else one item per line with a trailing
    comma (black's bracket split followed by its split at commas); None when a piece would still be too
    long or the body holds something black treats specially."""
    items = _top_level_items(body)
    if items is None or not items or any(not item for item in items):
        return None
    inner = indent + INDENT
    if len(indent) + len(head) > LINE_LENGTH or len(indent) + len(tail) > LINE_LENGTH:
        return None
    if any(item.startswith("*") for item in items) and not has_f_strings:
        return None  # whether black adds a comma after `*args` depends on the Python versions it infers
    if is_def and len(items) == 1:
        lines = [inner + items[0] + ","]  # black adds a comma to a lone parameter, which then explodes
    elif len(inner) + len(body) <= LINE_LENGTH:
        lines = [inner + body]
    elif len(items) == 1:
        return None  # one long argument: black splits inside it
    else:
        lines = [inner + item + "," for item in items]
    if any(len(x) > LINE_LENGTH for x in lines):
        return None
    return "\n".join([indent + head, *lines, indent + tail])


def _top_level_items(body: str) -> list[str] | None:
    """`body` cut at its top-level commas (items stripped); None if it holds what a plain scan cannot judge
    (a quote character other than a plain double-quoted string, a lambda, a comprehension, a trailing comma
    or unbalanced brackets)."""
    items: list[str] = []
    depth = 0
    start = 0
    i = 0
    n = len(body)
    while i < n:
        ch = body[i]
        if ch == '"':
            j = i + 1
            while j < n and body[j] != '"':
                j += 2 if body[j] == "\\" else 1
            if j >= n:
                return None
            i = j + 1
            continue
        if ch in "'#":
            return None
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth < 0:
                return None
        elif ch == "," and depth == 0:
            items.append(body[start:i].strip())
            start = i + 1
        i += 1
    if depth != 0:
        return None
    last = body[start:].strip()
    if not last:
        return None  # a trailing comma: black's magic trailing comma
    items.append(last)
    if any(re.search(r"\b(lambda|for|async|await|yield)\b", item) for item in items):
        return None
    return items


def _unbalanced(line: str) -> bool:
    """Whether `line` leaves a bracket open or closes one it did not open (counted outside strings)."""
    if sum(line.count(c) for c in _OPEN) == sum(line.count(c) for c in _CLOSE):
        return False  # the common case, decided without a scan (the emitter's strings hold bracket pairs)
    return _scan_depth(line) != 0


def _code_chars(line: str) -> Iterator[tuple[int, str]]:
    """The characters of `line` outside its strings, with their places, up to its comment."""
    quote = ""
    i = 0
    while i < len(line):
        ch = line[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return
        else:
            yield i, ch
        i += 1


def _scan_depth(line: str) -> int | None:
    """The bracket depth at the end of `line` (None when it closes more than it opened), outside strings."""
    depth = 0
    for _, ch in _code_chars(line):
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth < 0:
                return None
    return depth


def _opens_block(line: str) -> bool:
    """Whether `line` ends in the `:` of a block's header, a trailing comment after it or not
    (`if h is not None:  # None after a loop of no steps`): black needs a body after it."""
    code = [ch for _, ch in _code_chars(line) if not ch.isspace()]
    return bool(code) and code[-1] == ":"


_MARK = "# layerdsl-layout "
_CONTINUATIONS = ("elif ", "else", "except", "finally", "case ")


def _black_lines(out: list[str], todo: list[tuple[int, str]], has_f_strings: bool) -> None:
    """Format the statements `todo` (index in `out`, line) with black, in one call: each is written at its
    own depth (under `if x:` lines), which is all black's split of a statement depends on besides the
    Python versions it infers from the module (an f-string stands in for the module's). Statements seen
    before in this process (modules of one program repeat many) are not formatted again."""
    if len(_FORMATTED) > 20_000:  # a long-lived process (the language server) keeps it bounded
        _FORMATTED.clear()
    fresh = sorted({line for _, line in todo if (line, has_f_strings) not in _FORMATTED})
    if fresh:
        _format_statements(fresh, has_f_strings)
    for index, line in todo:
        out[index] = _FORMATTED[line, has_f_strings]


_FORMATTED: dict[tuple[str, bool], str] = {}  # (statement, module has f-strings) -> black's lines


def _format_statements(lines: list[str], has_f_strings: bool) -> None:
    import black  # imported here: most modules never need it

    parts = ['f"{x}"\n'] if has_f_strings else []
    for number, line in enumerate(lines):
        depth = (len(line) - len(line.lstrip())) // 4
        parts.append(f"{_MARK}{number}\n")
        parts.extend(f"{INDENT * d}if x:\n" for d in range(depth))
        parts.append(line + "\n")
        if _opens_block(line):
            parts.append(f"{INDENT * (depth + 1)}pass\n")
    formatted = black.format_str("".join(parts), mode=black.Mode(line_length=LINE_LENGTH))
    chunks = re.split(rf"^{re.escape(_MARK)}\d+\n", formatted, flags=re.M)[1:]
    for line, chunk in zip(lines, chunks, strict=True):
        depth = (len(line) - len(line.lstrip())) // 4
        body = [x for x in chunk.split("\n") if x.strip()][depth:]
        if _opens_block(line):
            body = body[:-1]  # the `pass`
        _FORMATTED[line, has_f_strings] = "\n".join(body)
