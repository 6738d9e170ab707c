"""IR expressions as spec-language text: `sqrt(x ** 2 + bias)`, `sum(x, dim = -1)`, `x[:, none]`.

The text is canonical (one spelling per structure, only the parentheses precedence needs), so passes use it
to compare, key and sort expressions, and diagnostics can quote an expression the compiler made. It is not
Python: names are written as in the spec (`pi`, not `math.pi`), literals as the spec writes them (`true`,
`none`, `"text"`). Nodes only the compiler makes are written in the same style (`t.mul_(x)` for an
in-place update; an `align` view as the subscript it stands for).
"""

from __future__ import annotations

import json

from layerdsl.ir import nodes as N

# Binding strength, as in the grammar (Python's precedence); an atom binds tightest.
PRECEDENCE = {
    "or": 1,
    "and": 2,
    "not": 3,
    "compare": 4,
    "+": 10,
    "-": 10,
    "*": 11,
    "/": 11,
    "//": 11,
    "%": 11,
    "@": 11,
    "unary": 12,
    "**": 13,
    "atom": 14,
}
ATOM = PRECEDENCE["atom"]


def spec_text(e: N.Expr) -> str:
    """The spec-language text of expression `e`."""
    return _render(e)[0]


def _render(e: N.Expr) -> tuple[str, int]:
    """The text of `e` and how tightly it binds."""
    match e:
        case N.Num(text=text):
            return text, PRECEDENCE["unary"] if text.startswith("-") else ATOM
        case N.Str(value=v):
            return json.dumps(v, ensure_ascii=False), ATOM
        case N.Bool(value=v):
            return ("true" if v else "false"), ATOM
        case N.NoneLit():
            return "none", ATOM
        case N.FamilyName():
            return e.written, ATOM
        case N.IfExp(cond=cond, then=then, orelse=orelse):  # below `or`, as in Python
            return f"{_wrap(then, 1)} if {_wrap(cond, 1)} else {_wrap(orelse, 0)}", 0
        case N.Name(id=name):
            return name, ATOM
        case N.BinOp(op=op, left=left, right=right) | N.BoolOp(op=op, left=left, right=right):
            p = PRECEDENCE[op]
            if op == "**":  # right-associative, and `2 ** -x` needs no parentheses
                return f"{_wrap(left, p + 1)} ** {_wrap(right, p - 1)}", p
            return f"{_wrap(left, p)} {op} {_wrap(right, p + 1)}", p
        case N.UnaryOp(op=op, operand=operand):
            return f"{op}{_wrap(operand, PRECEDENCE['unary'])}", PRECEDENCE["unary"]
        case N.Not(operand=operand):
            return f"not {_wrap(operand, PRECEDENCE['not'])}", PRECEDENCE["not"]
        case N.Compare(ops=ops, operands=operands):
            p = PRECEDENCE["compare"]
            parts = [_wrap(operands[0], p + 1)]
            parts += [f"{op} {_wrap(o, p + 1)}" for op, o in zip(ops, operands[1:])]
            return " ".join(parts), p
        case N.Call(func="align", args=[operand]) if e.items is not None:
            return f"{_wrap(operand, ATOM)}[{_items(e.items)}]", ATOM  # a broadcasting view: x[:, none]
        case N.Call(func=func, args=args, kwargs=kwargs):
            parts = [spec_text(a) for a in args] + [f"{k.name} = {spec_text(k.value)}" for k in kwargs]
            return f"{func}({', '.join(parts)})", ATOM
        case N.InPlace(method=method, target=target, args=args):
            return f"{_wrap(target, ATOM)}.{method}({', '.join(spec_text(a) for a in args)})", ATOM
        case N.Subscript(value=value, items=items):
            return f"{_wrap(value, ATOM)}[{_items(items)}]", ATOM
        case N.ListExpr(items=items):
            # `[..., h, d]`: reshape's shape may start with `...`
            return f"[{', '.join(_item(i) for i in items)}]", ATOM
        case N.Spread(value=value):
            return f"*{spec_text(value)}", ATOM
        case N.TupleExpr(items=items):
            return f"({', '.join(spec_text(i) for i in items)}{',' if len(items) == 1 else ''})", ATOM
        case N.Rank(value=value):
            return f"{value.id}.ndim", ATOM
        case N.Indexed(name=name, indices=indices):
            return f"{name.id}[{', '.join(i.id for i in indices)}]", ATOM
        case N.Reduce(op=op, indices=indices, body=body):
            return f"{op}[{', '.join(i.id for i in indices)}]({spec_text(body)})", ATOM
    raise TypeError(f"cannot write {type(e).__name__} as spec text")


def _wrap(e: N.Expr, tightest: int) -> str:
    text, p = _render(e)
    return f"({text})" if p < tightest else text


def _items(items: list[N.SubscriptItem]) -> str:
    return ", ".join(_item(i) for i in items)


def _item(item: N.SubscriptItem) -> str:
    match item:
        case N.EllipsisItem():
            return "..."
        case N.Slice(lower=lower, upper=upper, step=step):
            text = f"{spec_text(lower) if lower else ''}:{spec_text(upper) if upper else ''}"
            return text + (f":{spec_text(step)}" if step else "")
    return spec_text(item)


def and_terms(cond: N.Expr) -> list[N.Expr]:
    """`a and b and c`: [a, b, c]; anything else is its own one term."""
    if isinstance(cond, N.BoolOp) and cond.op == "and":
        return and_terms(cond.left) + and_terms(cond.right)
    return [cond]


def members_present(cond: N.Expr, tensors: list[N.Tensor]) -> set[str]:
    """The optional members an `if` condition proves present: those whose condition's `and` terms are all
    terms of it (`if track_running_stats and training` for a buffer `if track_running_stats`)."""
    terms = {spec_text(t) for t in and_terms(cond)}
    return {t.name for t in tensors if t.cond is not None and {spec_text(c) for c in and_terms(t.cond)} <= terms}


def members_present_otherwise(cond: N.Expr, tensors: list[N.Tensor]) -> set[str]:
    """The optional members the `else` of an `if` proves present: those whose condition is `not` the `if`'s
    (`if not (kdim == embed_dim) ... else`), and, for `if not X`, those that X proves."""
    text = spec_text(cond)
    negated = {t.name for t in tensors if isinstance(t.cond, N.Not) and spec_text(t.cond.operand) == text}
    return negated | (members_present(cond.operand, tensors) if isinstance(cond, N.Not) else set())
