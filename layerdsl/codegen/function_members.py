"""How the module passes the tensors of a Function whose forward has its subs inlined (autodiff/inline.py):
a sub's member as itself (`self.fc.weight`); the member of every item of a list of subs, and the members of
a family, stacked into one tensor (autograd's `stack` hands each its part of the gradient)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from layerdsl.autodiff.copied_layers import HeldArgument
from layerdsl.autodiff.inline import Family, Inlined
from layerdsl.codegen.pyexpr import PyExpr
from layerdsl.language.naming import fresh_name


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


@dataclass(frozen=True)
class HeldMembers:
    """The members of copies (every item of a list of subs, or a family's members over one range) that the
    module passes stacked, passed also as themselves, in one list (`blocks_members`: each copy's members in
    turn), for the Function to save rather than the stacks: a stack is a new tensor, which saving would
    keep alive until backward, where autograd keeps only the parameters, which the module holds anyway.
    Backward stacks them again (`unpacked_with_held`): from the parameters themselves, so that double backward
    reaches them."""

    name: str  # the Function's argument
    stacked: tuple[str, ...]  # the stacked tensors of the inlined forward, in the order of each copy's members
    module: str  # the module's expression of the list
    annotation: str  # the argument's type (an optional member's copies hold None where it is not built)


def held_members(inlined: Inlined, tensors: list[str], module: PyExpr, taken: set[str]) -> HeldMembers | None:
    """The members held of the stacked tensors among `tensors` (the Function's, in order): those of the
    first list of subs or family range they come from (one list: another's count of copies may differ; a
    member not built is None in it, where the Function does not read it); None when no tensor is stacked.
    `taken`: the names the Function uses."""
    stacked: list[str] = []
    members: list[str] = []
    group: tuple[str, str] | None = None  # the loop over the copies, and the list's name
    for name in tensors:
        family = inlined.families.get(name)
        every = re.fullmatch(r"(.+?)\[[A-Za-z_]\w*\]\.(.+)", inlined.paths.get(name, name))
        if family is not None and family.part != "first":
            start = "1, " if family.part == "rest" else ""
            var = "k"  # every family of the group read with one variable
            loop, hint = f"for {var} in range({start}{module(family.count)})", "family_members"
            written = family.written.replace("{" + family.var + "}", "{" + var + "}")
            member = f'getattr(self, f"{written}")'
        elif family is None and every is not None:
            items, attribute = every.groups()
            loop, member = f"for item in self.{items}", f"item.{attribute}"
            hint = re.sub(r"\W", "_", items) + "_members"
        else:
            continue
        if group is None:
            group = (loop, hint)
        if loop == group[0]:
            stacked.append(name)
            members.append(member)
    if group is None:
        return None
    loop, hint = group
    listed = f"[{members[0]} {loop}]" if len(members) == 1 else f"[member {loop} for member in ({', '.join(members)})]"
    optional = any(inlined.optional(name) for name in stacked)
    annotation = "list[Tensor | None]" if optional else "list[Tensor]"
    return HeldMembers(fresh_name(hint, taken), tuple(stacked), listed, annotation)


def held_params(held: HeldMembers | None) -> list[str]:
    """The loop Function's arguments besides its leaves and numbers: `held`, last (none without)."""
    return [] if held is None else [held.name]


def held_forward_params(held: HeldMembers | None) -> list[str]:
    """`held` as forward's typed parameter, last (none without)."""
    return [] if held is None else [f"{held.name}: {held.annotation}"]


def saved_with_held(tensors: list[str], held: HeldMembers | None) -> list[str]:
    """What setup_context saves of `tensors`: the stacks `held` holds saved as its members (starred, after the
    other tensors: their count is the copies')."""
    if held is None or not set(tensors) & set(held.stacked):
        return tensors
    return [*(t for t in tensors if t not in held.stacked), f"*{held.name}"]


def unpacked_with_held(saved: list[str], held: HeldMembers | None) -> list[str]:
    """Backward's lines unpacking `saved` from `ctx.saved_tensors`: each stack `held` holds unpacked as its
    members and stacked again (None after no copies: no step reads it)."""
    restacked = [n for n in saved if held is not None and n in held.stacked]
    if held is None or not restacked:
        return [f"{', '.join(saved)}{',' if len(saved) == 1 else ''} = ctx.saved_tensors"]
    kept = [n for n in saved if n not in held.stacked]
    lines = [f"{', '.join([*kept, '*' + held.name]) if kept else held.name} = ctx.saved_tensors"]
    lines.append("# each copy's members were saved as themselves (not their stack, a new tensor): stacked again")
    step = len(held.stacked)
    for name in restacked:
        k = held.stacked.index(name)
        part = held.name if step == 1 else f"{held.name}[{k}::{step}]"
        lines.append(f"{name} = torch.stack({part}) if {held.name} else None")
    return lines
