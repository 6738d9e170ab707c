"""How the module passes the tensors of a Function whose forward has its subs inlined (autodiff/inline.py):
a sub's member as itself (`self.fc.weight`); the member of every item of a list of subs, and the members of
a family, stacked into one tensor (autograd's `stack` hands each its part of the gradient)."""

from __future__ import annotations

import re

from layerdsl.autodiff.inline import Family, Inlined
from layerdsl.codegen.pyexpr import PyExpr


def member_argument(inlined: Inlined, name: str, module: PyExpr, like: str | None = None) -> str:
    """The module's expression for the tensor `name` of the inlined forward (`module` spells the layer's
    arguments and lets as the module holds them); no items or members are an empty tensor on the device
    and of the dtype of the input `like` (when there is a float one)."""
    empty = f"{like}.new_empty(0)" if like else "torch.empty(0)"
    if name in inlined.families:
        return _family(inlined.families[name], module, empty)
    path = inlined.paths.get(name, name)
    every = re.fullmatch(r"(.+?)\[[A-Za-z_]\w*\]\.(.+)", path)  # `blocks[i].w1`: every item's
    if every is None:  # `fc.weight`, `blocks[0].w1`
        return f"self.{path}"
    items, member = every.groups()
    stacked = f"torch.stack([item.{member} for item in self.{items}])"
    if inlined.optional(name):
        return f"{stacked} if len(self.{items}) and self.{items}[0].{member} is not None else None"
    return f"{stacked} if len(self.{items}) else {empty}"


def _family(family: Family, module: PyExpr, empty: str) -> str:
    count = module(family.count)
    if family.part == "first":  # member 0 alone (`autodiff/peel.py`)
        members, built = f"self.{family.written.replace('{' + family.var + '}', '0')}", f"{count} > 0"
    elif family.part == "rest":  # members from 1 on, stacked
        members = f'torch.stack([getattr(self, f"{family.written}") for {family.var} in range(1, {count})])'
        built = f"{count} > 1"
    else:
        members = f'torch.stack([getattr(self, f"{family.written}") for {family.var} in range({count})])'
        built = count
    if family.cond is None:
        return f"{members} if {built} else {empty}"
    return f"{members} if {built} and {module.wrap(family.cond, 2)} else None"  # built when arguments say
