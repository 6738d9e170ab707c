"""The operation table's derivative formulas and parameter defaults, parsed once into IR."""

from __future__ import annotations

import functools

from lark import Lark

from layerdsl.diagnostics import Reporter
from layerdsl.ir import nodes as N
from layerdsl.language.ops import OPS
from layerdsl.resources import resource_dir


@functools.cache
def _formula_parser() -> Lark:
    grammar = (resource_dir("grammars") / "layer.lark").read_text(encoding="utf-8")
    return Lark(
        grammar,
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=True,
        start="expr",
        cache=True,
    )


@functools.cache
def formula(op_name: str, param: str) -> N.Expr:
    """The op table's derivative formula for one operand, as IR (cached; copy before use)."""
    from layerdsl.syntax.parser import _Builder

    text = OPS[op_name].grads[param]
    tree = _formula_parser().parse(text)
    return _Builder(Reporter("<ops.py>", text)).transform(tree)


def parse_default(text: str) -> N.Expr:
    from layerdsl.syntax.parser import _Builder

    return _Builder(Reporter("<ops.py>", text)).transform(_formula_parser().parse(text))
