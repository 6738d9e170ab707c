"""One generic traversal of the IR, found from the nodes' dataclass fields.

A node's children are the nodes in its fields, in field order: expressions, statements (an `if`'s
condition, then its branches) and layer parts, single or in lists and tuples. A `Keyword` stands for its
value and a `Slice` for its bounds; an `EllipsisItem`, spans, strings and the checker's annotations
are not children.
"""

from __future__ import annotations

import copy
import enum
import re
from collections.abc import Callable, Iterator
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

from layerdsl.diagnostics import Span
from layerdsl.ir import nodes
from layerdsl.ir.nodes import Expr, Keyword, Name, Node, Slice, Stmt

Fn = Callable[[Any], Any]  # a node -> its replacement
T = TypeVar("T", bound=Node)


def children(node: Node) -> list[Node]:
    """The direct child nodes of `node`, in field order."""
    out: list[Node] = []
    for name in _node_fields(node):
        value = getattr(node, name)
        if isinstance(value, Node):
            out.append(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, Node):
                    out.append(item)
                else:
                    out.extend(_parts(item))
        elif value is not None:
            out.extend(_parts(value))
    return out


def sub_expressions(expr: Expr) -> list[Expr]:
    """The direct sub-expressions of `expr` (every child of an expression is one), in field order."""
    return [c for c in children(expr) if isinstance(c, Expr)]


def walk(node: Node) -> Iterator[Node]:
    """`node` and every node below it, in pre-order (a node before its children, children in order)."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(children(n)))


def map_children(node: T, fn: Fn) -> T:
    """A shallow copy of `node` with each child replaced by `fn(child)` (keywords and slices are
    copied too; `node` itself is left as it was)."""
    return replace_children(_shallow_copy(node), fn, fresh_parts=True)


def _shallow_copy(node: T) -> T:
    """`copy.copy(node)` for a node (a plain dataclass instance), without its generic protocol: this runs
    for every node each pass rewrites, so it is a good part of derivation's and fusion's time."""
    new = object.__new__(type(node))
    new.__dict__.update(node.__dict__)
    return new


def replace_children(node: T, fn: Fn, fresh_parts: bool = False) -> T:
    """`node` itself with each child replaced by `fn(child)`; returns `node`."""
    for name in _node_fields(node):
        value = getattr(node, name)
        if isinstance(value, list):
            setattr(node, name, [_map_item(v, fn, fresh_parts) for v in value])
        elif isinstance(value, tuple):
            setattr(node, name, tuple(_map_item(v, fn, fresh_parts) for v in value))
        else:
            setattr(node, name, _map_item(value, fn, fresh_parts))
    return node


def _node_fields(node: Any) -> list[str]:
    """The fields of `node`'s class whose declared type can hold a node (computed once per class)."""
    names = _FIELDS.get(type(node))
    if names is None:
        names = _FIELDS[type(node)] = [f.name for f in fields(node) if _may_hold_nodes(str(f.type))]
    return names


_FIELDS: dict[type, list[str]] = {}


def _may_hold_nodes(annotation: str) -> bool:
    return (
        any(
            isinstance(t := getattr(nodes, word, None), type) and issubclass(t, (Node, Keyword, Slice))
            for word in re.findall(r"\w+", annotation)
        )
        or "SubscriptItem" in annotation
    )


def _parts(item: Any) -> list[Node]:
    """The nodes of a keyword (its value) or a slice (its bounds); nothing for anything else."""
    if isinstance(item, Keyword):
        return [item.value]
    if isinstance(item, Slice):
        return [e for e in (item.lower, item.upper, item.step) if e is not None]
    return []


def _map_item(item: Any, fn: Fn, fresh: bool) -> Any:
    if isinstance(item, Node):
        return fn(item)
    if isinstance(item, Keyword):
        if fresh:
            return Keyword(item.name, fn(item.value), item.span)
        item.value = fn(item.value)
        return item
    if isinstance(item, Slice):
        bounds = [None if e is None else fn(e) for e in (item.lower, item.upper, item.step)]
        if fresh:
            return Slice(item.span, *bounds)
        item.lower, item.upper, item.step = bounds
        return item
    return item


def statements(body: list[Stmt]) -> Iterator[Stmt]:
    """Every statement of `body`, those in nested blocks too, in order."""
    for stmt in body:
        yield from (n for n in walk(stmt) if isinstance(n, Stmt))


def names_bound(body: list[Stmt]) -> set[str]:
    """The names the statements of `body` (nested ones too) bind: assigned, unpacked, appended to, updated,
    and loop variables."""
    names: set[str] = set()
    for s in statements(body):
        if isinstance(s, nodes.Assign | nodes.IndexAssign | nodes.Update | nodes.Append):
            names.add(s.target)
        elif isinstance(s, nodes.Unpack):
            names |= {t for t, _ in s.targets}
        elif isinstance(s, nodes.For):
            names.add(s.var)
    return names


def names_read(node: Node) -> set[str]:
    """The identifiers of every `Name` in or below `node`."""
    return {n.id for n in walk(node) if isinstance(n, Name)}


def reads_only_arguments(node: Node) -> bool:
    """Whether `node` reads only the layer's arguments, lets and constants: a value fixed once the module is
    built."""
    refs = (nodes.Ref.ARG, nodes.Ref.LET, nodes.Ref.CONST)
    return all(n.ref in refs for n in walk(node) if isinstance(n, Name))


def clone(value: Any) -> Any:
    """A deep copy of IR (nodes, statements, the optimiser's statement lists), as `copy.deepcopy` makes
    it but several times faster: lists, tuples, sets, dicts and dataclass instances are copied, an object
    reached twice is copied once; strings, numbers, enums and spans (immutable) are shared."""
    return _clone(value, {})


_SHARED = (str, int, float, bool, type(None), enum.Enum, Span)


def _clone(value: Any, memo: dict[int, Any]) -> Any:
    if isinstance(value, _SHARED):
        return value
    seen = memo.get(id(value))
    if seen is not None:
        return seen
    cls = type(value)
    if cls is list:
        copied: Any = []
        memo[id(value)] = copied
        copied.extend(_clone(item, memo) for item in value)
    elif cls is dict:
        copied = {}
        memo[id(value)] = copied
        copied.update((_clone(k, memo), _clone(v, memo)) for k, v in value.items())
    elif cls in (tuple, set, frozenset):
        copied = cls(_clone(item, memo) for item in value)
        memo[id(value)] = copied
    elif hasattr(value, "__dict__") and is_dataclass(value):
        copied = object.__new__(cls)
        memo[id(value)] = copied
        copied.__dict__.update((k, _clone(v, memo)) for k, v in value.__dict__.items())
    else:
        copied = copy.deepcopy(value)
        memo[id(value)] = copied
    return copied
