"""Rendering IR expressions as Python source, with only the parentheses Python needs.

A `Spelling` maps each name to its Python form in one context: `self.weight` in a module, `weight` in a
functional form. Calls to built-in operations use the table's PyTorch spelling; on plain numbers they use
its `math` spelling.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from layerdsl.ir import nodes as N
from layerdsl.ir.printer import PRECEDENCE
from layerdsl.language.ops import CALLABLE, OPS, Op, filled
from layerdsl.language.tables import CONSTANTS
from layerdsl.semantics.evaluate import OPERATOR_ROWS, written_as_math, written_plainly

# Python's binding strengths: the spec language's, plus the bitwise operators only generated code writes.
PREC = {**PRECEDENCE, "|": 5, "&": 7}


@dataclass
class Spelling:
    """How names are written in one generated function."""

    names: dict[str, str] = field(default_factory=dict)  # explicit spellings (self.weight, ...)
    training: str = "self.training"
    cloned: frozenset[N.Span] = frozenset()  # buffer reads written `self.b.clone()` (codegen/buffer_reads.py)
    cloned_in_training: frozenset[str] = frozenset()  # ... of buffers cloned only then (`if self.training`)
    # a floating tensor of the layer (its first floating input or parameter): `where(c, 1.0, 0.0)` of two
    # numbers takes its dtype, where torch.where gives the default dtype
    float_like: str | None = None

    def name(self, node: N.Name) -> str:
        if node.id in self.names:
            spelt = self.names[node.id]
            if node.ref != N.Ref.BUFFER or node.span not in self.cloned:
                return spelt
            if node.id in self.cloned_in_training:
                return f"({spelt}.clone() if {self.training} else {spelt})"
            return f"{spelt}.clone()"
        if node.ref == N.Ref.SUB_MEMBER:  # `linear.weight` -> `self.linear.weight`
            base, member = node.id.split(".", 1)
            return f"{self.names.get(base, base)}.{member}"
        if node.ref == "training" or node.id == "training":
            return self.training
        if node.ref == "const" or (node.id in CONSTANTS and not node.ref):
            return CONSTANTS[node.id]
        return node.id


# The operands black writes `**` between without spaces, and slice bounds it writes `:` beside without spaces
# (emitting black's spelling lets `gen` skip black for most lines: driver/layout.py).
_NUMBER = r"(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][-+]?\d+)?[jJ]?"
_SIMPLE_BASE = re.compile(rf"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*|{_NUMBER}")
_SIMPLE_EXPONENT = re.compile(rf"[-+~]?(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*|{_NUMBER})")
_SIMPLE_BOUND = re.compile(rf"[-+~]*(?:[A-Za-z_]\w*|{_NUMBER})")


def _string_literal(value: str) -> str:
    """`value` as a Python literal in black's quotes: double quotes unless that needs more escapes."""
    text = repr(value)
    if not text.startswith("'") or value.count('"') > value.count("'"):
        return text
    return '"' + text[1:-1].replace("\\'", "'").replace('"', '\\"') + '"'


def float_like(layer: N.Layer) -> str | None:
    """The name of the layer's first floating input or parameter (`Spelling.float_like`)."""
    fwd = layer.forward
    declared: list[N.Input | N.Tensor] = [*(fwd.inputs if fwd is not None else []), *layer.params]
    floating = ("float", "double", "half", "bfloat16")
    return next((d.name for d in declared if d.dtype in floating and not getattr(d, "optional", False)), None)


def _numbers(args: list[N.Expr]) -> bool:
    """Whether `where`'s two values are plain numbers, one of them a float."""
    return len(args) == 2 and all(a.kind in ("int", "float") for a in args) and any(a.kind == "float" for a in args)


@functools.cache
def _template_precedence(template: str) -> int:
    """How strongly the Python form `template` ({param} fields) binds: a conditional's 0, or an atom's."""
    form = ast.parse(re.sub(r"\{(\w+)\^?\}", r"\1", template), mode="eval").body
    if isinstance(form, ast.IfExp):
        return 0
    assert isinstance(form, ast.Call | ast.Name | ast.Attribute | ast.Subscript), f"a template's form: {template}"
    return PREC["atom"]


def shorten(torch_name: str) -> str:
    """`torch.nn.functional.gelu` is written `F.gelu` (the generated files import it so)."""
    return torch_name.replace("torch.nn.functional.", "F.")


class PyExpr:
    def __init__(self, spelling: Spelling, call_hook: Callable[[N.Call, PyExpr], str | None] | None = None):
        self.sp = spelling
        self.call_hook = call_hook

    def __call__(self, e) -> str:
        return self.render(e)[0]

    def render(self, e) -> tuple[str, int]:
        match e:
            case N.Num(value=v, text=text):
                return text, PREC["unary"] if text.startswith("-") else PREC["atom"]
            case N.Str(value=v):
                return _string_literal(v), PREC["atom"]
            case N.Bool(value=v):
                return ("True" if v else "False"), PREC["atom"]
            case N.NoneLit():
                return "None", PREC["atom"]
            case N.FamilyName(index=index) if index is not None:  # one member of a family: torch's getattr
                return f'getattr(self, f"{e.prefix}{{{self(index)}}}{e.suffix}")', PREC["atom"]
            case N.IfExp(cond=c, then=a, orelse=b):
                return f"{self.wrap(a, 1)} if {self.wrap(c, 1)} else {self.wrap(b, 0)}", 0
            case N.Name():
                return self.sp.name(e), PREC["atom"]
            case N.BinOp(op=op, left=l, right=r) if not written_plainly(e):  # torch's inf and nan on numbers
                template = OPERATOR_ROWS[op].scalar_template
                assert template is not None
                return self.filled(template, [l, r], OPERATOR_ROWS[op]), _template_precedence(template)
            case N.BinOp(op=op, left=l, right=r):
                p = PREC[op]
                if op == "**":
                    left = self.wrap(l, p + 1)
                    right = self.wrap(r, p - 1)  # `2 ** -x` needs no parentheses
                    if _SIMPLE_BASE.fullmatch(left) and _SIMPLE_EXPONENT.fullmatch(right):
                        return f"{left}**{right}", p  # black hugs `**` between simple operands
                else:
                    # `(g * u) @ w`, not `g * u @ w`: Python binds `*` and `@` alike, a reader may not
                    mixed = isinstance(l, N.BinOp) and l.op != op and "@" in (l.op, op)
                    left = self.wrap(l, p + 1 if mixed else p)
                    right = self.wrap(r, p + 1)
                return f"{left} {op} {right}", p
            case N.UnaryOp(op=op, operand=o):
                return f"{op}{self.wrap(o, PREC['unary'])}", PREC["unary"]
            case N.Compare(ops=ops, operands=operands):
                parts = [self.wrap(operands[0], PREC["compare"] + 1)]
                for op, o, before in zip(ops, operands[1:], operands):
                    none = isinstance(o, N.NoneLit) or isinstance(before, N.NoneLit)  # `x == none`: `x is None`
                    spelled = {"==": "is", "!=": "is not"}.get(op, op) if none else op
                    parts.append(f"{spelled} {self.wrap(o, PREC['compare'] + 1)}")
                return " ".join(parts), PREC["compare"]
            case N.BoolOp(op=op, left=l, right=r):
                p = PREC[op]
                return f"{self.wrap(l, p)} {op} {self.wrap(r, p + 1)}", p
            case N.Not(operand=o):
                return f"not {self.wrap(o, PREC['not'])}", PREC["not"]
            case N.Call():
                templated = self.number_template(e)
                return templated if templated is not None else (self.call(e), PREC["atom"])
            case N.InPlace(method=m, target=t, args=args):
                return f"{self.wrap(t, PREC['atom'])}.{m}({', '.join(self(a) for a in args)})", PREC["atom"]
            case N.Subscript(value=v, items=[N.Slice() as bounds]) if v.kind == N.Kind.INT:
                # a slice of a size: how many of its positions the slice keeps, as Python clamps the bounds
                return f"len(range({self(v)})[{self.item(bounds)}])", PREC["atom"]
            case N.Subscript(value=v, items=items):
                return f"{self.wrap(v, PREC['atom'])}[{', '.join(self.item(i) for i in items)}]", PREC["atom"]
            case N.ListExpr(items=items):
                return f"[{', '.join(self(i) for i in items)}]", PREC["atom"]
            case N.Spread(value=value):
                return f"*{self(value)}", PREC["atom"]
            case N.TupleExpr(items=items):
                return f"({', '.join(self(i) for i in items)}{',' if len(items) == 1 else ''})", PREC["atom"]
            case N.Rank(value=v):
                return f"{self.wrap(v, PREC['atom'])}.dim()", PREC["atom"]
        raise TypeError(f"cannot render {type(e).__name__}")

    def wrap(self, e, min_prec: int) -> str:
        text, p = self.render(e)
        return f"({text})" if p < min_prec else text

    def item(self, it) -> str:
        match it:
            case N.EllipsisItem():
                return "..."
            case N.Slice(lower=lo, upper=hi, step=st):
                bounds = [self(b) if b else "" for b in (lo, hi, st)]
                if st is None:
                    bounds.pop()
                if all(_SIMPLE_BOUND.fullmatch(b) for b in bounds if b):
                    return ":".join(bounds)
                # black spaces the colons of a slice with a complex bound like a binary operator
                text = bounds[0]
                for b in bounds[1:]:
                    text += (" :" if text and not text.endswith(":") else ":") + (f" {b}" if b else "")
                return text
        return self(it)

    def number_template(self, c: N.Call) -> tuple[str, int] | None:
        """A call on numbers that its row writes by a `scalar_template`, with the binding strength of that
        form (a conditional's); None for any other call."""
        op = None if c.sub else CALLABLE.get(c.func) or OPS.get(c.func)
        if op is None or op.scalar_template is None or op.operator or c.kind == "tensor" or c.kwargs:
            return None
        if written_as_math(c):
            return None
        return self.filled(op.scalar_template, c.args, op), _template_precedence(op.scalar_template)

    def filled(self, template: str, args: list[N.Expr], op: Op) -> str:
        """A `scalar_template` with its operands: `{name}` as a comparison's or a call's, `{name^}` as an
        arithmetic operator's (parenthesized unless an atom)."""
        operands = {p.name: a for p, a in zip(op.params, args)}
        return filled(
            template, lambda name, tight: self.wrap(operands[name], PREC["atom"] if tight else PREC["compare"] + 1)
        )

    def call(self, c: N.Call) -> str:
        if self.call_hook is not None:
            hooked = self.call_hook(c, self)
            if hooked is not None:
                return hooked
        if c.func == "align":  # a broadcasting view: x[:, None]
            assert c.items is not None, "index notation lowers to align() calls with their items"
            return f"{self.wrap(c.args[0], PREC['atom'])}[{', '.join(self.item(i) for i in c.items)}]"
        op = None if c.sub else CALLABLE.get(c.func) or OPS.get(c.func)
        if op is None:  # a sub
            return f"{self.sp.name(N.Name(c.func_span, c.func))}({', '.join(self(a) for a in c.args)})"
        if c.func == "where" and self.sp.float_like and _numbers(c.args[1:]):
            like = self.sp.name(N.Name(c.func_span, self.sp.float_like))
            return f"torch.where({', '.join(self(a) for a in c.args)}).to({like}.dtype)"
        if c.kind != "tensor" and op.scalar:
            return f"{op.scalar}({', '.join(self(a) for a in c.args)})"
        if op.template:
            values = dict(zip([p.name for p in op.params], c.args)) | {k.name: k.value for k in c.kwargs}
            fields = {}
            for name, v in values.items():
                fields[name] = self(v)
                if isinstance(v, N.ListExpr):
                    fields[name + "*"] = ", ".join(self(i) for i in v.items)
            return op.template.format(**fields)
        parts = []
        for index, (p, a) in enumerate(zip(op.params, c.args)):
            positional = op.positional is None or index < op.positional
            parts.append(self(a) if positional else f"{op.kwarg_spelling.get(p.name, p.name)}={self(a)}")
        for k in c.kwargs:
            parts.append(f"{op.kwarg_spelling.get(k.name, k.name)}={self(k.value)}")
        if op.takes_training:
            parts.append(f"training={self.sp.training}")
        return f"{shorten(op.torch)}({', '.join(parts)})"
