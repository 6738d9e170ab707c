"""A `scalar_template` specialised on its constant operands: the conditions a constant decides are folded.

`math.isfinite(2)` is True, `2 % 1` is 0, `not 2 < 0` is True: with those folded, `a ** 0.5` is written
`math.nan if a < 0 and math.isfinite(a) else a**0.5`, not the whole template (docs/language.md, "On plain
numbers"). The generated code (`codegen/pyexpr.py`) and the checker's static evaluation
(`semantics/evaluate.py`) both take the specialised text, so that they still compute the same form.

Only what the constants decide is folded, each step keeping the value for every value of the other operands:
a condition whose every operand is a constant becomes its truth; `and`, `or`, `not` and a conditional drop
what a decided part makes dead; inside `A and B`, `B` is folded knowing `A` true (inside `A or B`, false; in
a conditional's branches, its test's truth), where an atom `x == 0` also decides `x != 0`; a conditional with
two identical branches is its branch; and a value of constants that is `±inf` or `nan` is written
`math.inf`, `-math.inf`, `math.nan` (`math.copysign(math.inf, 2.0)` is `math.inf`). Any other value keeps
its text: `math.log(abs(2.0))` stays, a number would be harder to read. The templates are pure (every
operation they guard is guarded), so dropping a decided condition drops no effect.
"""

from __future__ import annotations

import ast
import functools
import math
import re
from collections.abc import Callable, Mapping

# a template's field: `{name}` (an operand of a comparison or a call) or `{name^}` (of an arithmetic operator)
_FIELD = re.compile(r"\{(\w+)\^?\}")
_NAMESPACE = {"math": math, "abs": abs, "max": max, "min": min}
_COMPLEMENT = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}  # the comparisons whose `not` is one (nan included)


def specialised(template: str, constants: Mapping[str, object]) -> str:
    """`template` with the conditions decided by `constants` (operand name -> its value) folded; `template`
    itself where no operand is a constant."""
    key = tuple(sorted((name, type(v).__name__, repr(v)) for name, v in constants.items() if _number(v)))
    return _specialised(template, key) if key else template


def _number(v: object) -> bool:
    return type(v) in (int, float, bool)


_READ: dict[str, Callable[[str], object]] = {"int": int, "float": float, "bool": lambda text: text == "True"}


@functools.cache
def _specialised(template: str, key: tuple[tuple[str, str, str], ...]) -> str:
    # the values back from their reprs: a cache keyed by value would take -0.0 for 0.0 (their signs differ)
    values = {name: _READ[kind](text) for name, kind, text in key}
    fields = set(_FIELD.findall(template))
    tree = ast.parse(_FIELD.sub(r"\1", template), mode="eval").body
    folded = _Folder(values, fields).fold(tree, test=False, facts={})
    return _template_text(folded, fields)


class _Folder:
    def __init__(self, values: dict[str, object], fields: set[str]):
        self.values = values
        self.fields = fields

    def decided(self, node: ast.expr) -> tuple[bool, object]:
        """Whether `node` reads only constants (and `math`), and its value then."""
        names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        if not names <= set(self.values) | set(_NAMESPACE):
            return False, None
        try:
            code = compile(ast.fix_missing_locations(ast.Expression(node)), "<template>", "eval")
            return True, eval(code, {**_NAMESPACE, **self.values})
        except (ArithmeticError, ValueError, TypeError):
            return False, None

    def fold(self, node: ast.expr, test: bool, facts: dict[str, bool]) -> ast.expr:
        """`node` folded; `test`: only its truth is read (a condition); `facts`: conditions known (ast.dump)."""
        if test and ast.dump(node) in facts:
            return ast.Constant(facts[ast.dump(node)])
        known, value = self.decided(node)
        if known and test:
            return ast.Constant(bool(value))
        if known and not isinstance(node, ast.Name) and isinstance(value, float) and not math.isfinite(value):
            return _special(value)
        match node:
            case ast.IfExp(test=cond, body=body, orelse=orelse):
                cond = self.fold(cond, True, facts)
                if isinstance(cond, ast.Constant):
                    return self.fold(body if cond.value else orelse, test, facts)
                then = self.fold(body, test, _assumed(cond, True, facts))
                other = self.fold(orelse, test, _assumed(cond, False, facts))
                if ast.dump(then) == ast.dump(other):
                    return then
                return ast.IfExp(cond, then, other)
            case ast.BoolOp(op=op, values=operands) if test:
                return self.connective(isinstance(op, ast.And), operands, facts)
            case ast.UnaryOp(op=ast.Not(), operand=operand):
                inner = self.fold(operand, True, facts)
                return (
                    ast.Constant(not inner.value) if isinstance(inner, ast.Constant) else ast.UnaryOp(ast.Not(), inner)
                )
        return _with_children(node, lambda child: self.fold(child, False, facts))

    def connective(self, conjunction: bool, operands: list[ast.expr], facts: dict[str, bool]) -> ast.expr:
        """`and` (`conjunction`) or `or` of `operands` as a condition: a decided operand drops out, or decides
        the whole; each later operand is folded knowing the earlier ones true (`and`) or false (`or`)."""
        kept: list[ast.expr] = []
        for operand in operands:
            folded = self.fold(operand, True, facts)
            if isinstance(folded, ast.Constant):
                if bool(folded.value) != conjunction:  # False in an `and`, True in an `or`
                    return ast.Constant(not conjunction)
                continue
            kept.append(folded)
            facts = _assumed(folded, conjunction, facts)
        if not kept:
            return ast.Constant(conjunction)
        return kept[0] if len(kept) == 1 else ast.BoolOp(ast.And() if conjunction else ast.Or(), kept)


def _assumed(cond: ast.expr, truth: bool, facts: dict[str, bool]) -> dict[str, bool]:
    """`facts` with condition `cond` known to be `truth`: each operand of an `and` known true, of an `or`
    known false; `x == y` deciding `x != y` too."""
    facts = dict(facts)
    match cond:
        case ast.BoolOp(op=ast.And(), values=operands) if truth:
            for operand in operands:
                facts = _assumed(operand, True, facts)
        case ast.BoolOp(op=ast.Or(), values=operands) if not truth:
            for operand in operands:
                facts = _assumed(operand, False, facts)
        case ast.UnaryOp(op=ast.Not(), operand=operand):
            facts = _assumed(operand, not truth, facts)
        case ast.Compare(left=left, ops=[op], comparators=[right]) if type(op) in _COMPLEMENT:
            facts[ast.dump(cond)] = truth
            facts[ast.dump(ast.Compare(left, [_COMPLEMENT[type(op)]()], [right]))] = not truth
        case _:
            facts[ast.dump(cond)] = truth
    return facts


def _special(value: float) -> ast.expr:
    """`math.inf`, `-math.inf` or `math.nan`."""
    name = ast.Attribute(ast.Name("math", ast.Load()), "nan" if value != value else "inf", ast.Load())
    return ast.UnaryOp(ast.USub(), name) if value < 0 else name


def _with_children(node: ast.expr, fold) -> ast.expr:
    """A copy of `node` with each of its expression children folded by `fold`."""
    node = type(node)(**{f: getattr(node, f) for f in node._fields})
    for name, value in ast.iter_fields(node):
        if isinstance(value, ast.expr):
            setattr(node, name, fold(value))
        elif isinstance(value, list):
            setattr(node, name, [fold(v) if isinstance(v, ast.expr) else v for v in value])
    return node


def _template_text(node: ast.expr, fields: set[str]) -> str:
    """The folded form as template text, with only the parentheses Python needs: each field `{name^}` where
    an arithmetic operator holds it, else `{name}` (a comparison's, a call's, a condition's)."""
    return _text(node, fields, tight=False)[0]


# Python's binding strengths (as codegen's PREC): a conditional 0, `or` 1, `and` 2, `not` 3, comparisons 4, ...
_BINARY = {ast.Add: ("+", 10), ast.Sub: ("-", 10), ast.Mult: ("*", 11), ast.Div: ("/", 11)}
_BINARY |= {ast.FloorDiv: ("//", 11), ast.Mod: ("%", 11), ast.Pow: ("**", 13)}
_COMPARE = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_UNARY, _ATOM = 12, 14


def _text(node: ast.expr, fields: set[str], tight: bool) -> tuple[str, int]:
    """`node`'s text and binding strength; `tight`: an arithmetic operator holds it."""

    def wrap(child: ast.expr, strength: int, held: bool = False) -> str:
        text, own = _text(child, fields, held)
        return f"({text})" if own < strength else text

    match node:
        case ast.Name(id=name) if name in fields:
            return "{" + name + ("^" if tight else "") + "}", _ATOM
        case ast.IfExp(test=test, body=body, orelse=orelse):
            return f"{wrap(body, 1)} if {wrap(test, 1)} else {wrap(orelse, 0)}", 0
        case ast.BoolOp(op=op, values=values):
            word, strength = ("and", 2) if isinstance(op, ast.And) else ("or", 1)
            return f" {word} ".join(wrap(v, strength + 1) for v in values), strength
        case ast.UnaryOp(op=ast.Not(), operand=operand):
            return f"not {wrap(operand, 3)}", 3
        case ast.UnaryOp(op=ast.USub(), operand=operand):
            return f"-{wrap(operand, _UNARY, True)}", _UNARY
        case ast.Compare(left=left, ops=ops, comparators=rest):
            parts = [wrap(left, 5)] + [f"{_COMPARE[type(op)]} {wrap(r, 5)}" for op, r in zip(ops, rest)]
            return " ".join(parts), 4
        case ast.BinOp(left=left, op=op, right=right):
            symbol, strength = _BINARY[type(op)]
            if symbol == "**":  # `(-2) ** x`, `2 ** -x`
                return f"{wrap(left, _ATOM, True)} ** {wrap(right, _UNARY, True)}", strength
            return f"{wrap(left, strength, True)} {symbol} {wrap(right, strength + 1, True)}", strength
        case ast.Call(func=func, args=args):
            return f"{wrap(func, _ATOM)}({', '.join(wrap(a, 0) for a in args)})", _ATOM
        case ast.Attribute(value=value, attr=attr):
            return f"{wrap(value, _ATOM)}.{attr}", _ATOM
        case ast.Name(id=name):
            return name, _ATOM
        case ast.Constant(value=value):
            return repr(value), _ATOM
    raise TypeError(f"a template's form: {ast.dump(node)}")
