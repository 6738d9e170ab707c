"""How the module passes the tensors of a Function whose forward has its subs inlined (autodiff/inline.py):
a sub's member as itself (`self.fc.weight`); the member of every item of a list of subs, and the members of
a family, stacked into one tensor (autograd's `stack` hands each its part of the gradient)."""

from __future__ import annotations

import re

from layerdsl.autodiff.copied_layers import HeldArgument
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
        holder = re.match(r"\w+", path)
        if holder is not None and holder.group() in inlined.optional_holders:  # `norm: LayerNorm? = none`
            return f"self.{path} if self.{holder.group()} is not None else None"
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


def held_argument_value(held: HeldArgument) -> str:
    """The module's expression for a value read from a sub holding a layer argument (autodiff/copied_layers.py):
    `self.layers[0].d if len(self.layers) else None` (every copy has the first's arguments; an empty list
    runs none), `self.norm.eps if self.norm is not None else None`, `self.layers[0].b1 is not None`."""
    holder = f"self.{held.holder}"
    if held.attribute is None:
        return f"{holder} is not None"
    instance = f"{holder}[0]" if held.first else holder
    value = f"{instance}.{held.attribute}" + (" is not None" if held.member else "")
    guard = f"len({holder})" if held.first else f"{holder} is not None" if held.optional else None
    if guard is None:
        return value
    return f"{guard} and {value}" if held.member else f"{value} if {guard} else None"
