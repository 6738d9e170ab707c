"""The parameter a `@function` module's input checks compare an input's device and dtype with when the layer
has none of its own (only subs, a list of subs or a family): a sub's (`self.fc.weight`), the first item's of
a list of subs or the first member of a family, under the test that the list or family is not empty, or,
failing those, a member of a sub holding an optional layer argument (`pre: Scale? = none`, `sub pre = pre`)
under the test that it was given. The Function would otherwise meet the mismatch inside `@` and give
torch's error instead of the layer's."""

from __future__ import annotations

import re
from dataclasses import dataclass

from layerdsl.autodiff.inline import Family, Inlined
from layerdsl.codegen.pyexpr import PREC, PyExpr
from layerdsl.ir import nodes as N


@dataclass(frozen=True)
class Reference:
    """`tensor` (the module's expression of a parameter), readable when `guard` is true (always if None)."""

    tensor: str
    guard: str | None = None


def inlined_parameter(inlined: Inlined, module: PyExpr) -> Reference | None:
    """The first parameter the inlined forward takes that every built module has, as the module reads it
    (`module` spells the layer's arguments as the module holds them); else the first member of a held
    optional sub; None when there is neither."""
    for t in inlined.layer.tensors:
        if t.kind != N.Ref.PARAM or t.cond is not None:
            continue
        if t.name in inlined.families:
            reference = _first_member(inlined.families[t.name], module)
        else:
            reference = _sub_member(inlined.paths.get(t.name, t.name))
        if reference is not None:
            return reference
    return next(filter(None, (_held_member(inlined, t) for t in inlined.layer.tensors if t.kind == N.Ref.PARAM)), None)


def _held_member(inlined: Inlined, tensor: N.Tensor) -> Reference | None:
    """`self.pre.g` under `self.pre is not None`: a member of a sub holding an optional layer argument, which
    the held layer always builds (its `pre_g_given` flag reads the sub's presence only)."""
    flag = tensor.cond
    held = inlined.arguments.get(flag.id) if isinstance(flag, N.Name) else None
    if held is None or not (held.member and held.optional) or held.first or held.cond is not None:
        return None
    return Reference(f"self.{inlined.paths.get(tensor.name, tensor.name)}", f"self.{held.holder} is not None")


def _sub_member(path: str) -> Reference:
    every = re.fullmatch(r"(.+?)\[[A-Za-z_]\w*\]\.(.+)", path)  # `blocks[i].w1`: the first item's
    if every is None:  # `fc.weight`, `blocks[0].w1`
        return Reference(f"self.{path}")
    items, member = every.groups()
    return Reference(f"self.{items}[0].{member}", f"len(self.{items})")


def _first_member(family: Family, module: PyExpr) -> Reference | None:
    placeholder = "{" + family.var + "}"
    if family.written.count("{") != 1 or placeholder not in family.written:
        return None  # a member named by an expression of its index: not written out here
    return Reference(f"self.{family.written.replace(placeholder, '0')}", module.wrap(family.count, PREC["not"]))
