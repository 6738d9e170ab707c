"""Subs inlined once per run: `plan_backwards` inlines a `@function` layer's subs to derive its backward,
and the emitter inlines them again to write the Function's forward (20-30 ms a layer with subs). Within
`reused_inlining()` (the driver's `gen`), the second inlining is a copy of the first.

An inlining depends on the layer and on the layers its subs are built from, looked up by name in the
mapping it is given (a file's folder sees its own). The cache records each lookup and its answer, and
reuses an inlining only where the new mapping answers every one alike; a mapping iterated over is not
cached. What it returns is a copy (`clone`): a caller may rewrite the IR it is given.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from layerdsl.ir import nodes as N
from layerdsl.ir.visit import clone

T = TypeVar("T")

# a layer -> (each name looked up -> the layer found or None, the result), by its inlining; None: off
_cache: dict[N.Layer, list[tuple[dict[str, N.Layer | None], object]]] | None = None


@contextlib.contextmanager
def reused_inlining() -> Iterator[None]:
    """Within it, an inlining of the same layer against the same sub layers is computed once."""
    global _cache
    outer = _cache
    _cache = {} if outer is None else outer
    try:
        yield
    finally:
        _cache = outer


def cached(layer: N.Layer, layers: Mapping[str, N.Layer], inline: Callable[[Mapping[str, N.Layer]], T]) -> T:
    """`inline(layers)`, or a copy of what it gave for `layer` against the same layers."""
    if _cache is None:
        return inline(layers)
    entries = _cache.setdefault(layer, [])  # a layer is hashed by identity (`N.Layer` has eq=False)
    for looked_up, result in entries:
        if all(layers.get(name) is found for name, found in looked_up.items()):
            return clone(result)
    recorded = _Recorded(layers)
    result = inline(recorded)
    if not recorded.iterated:
        entries.append((recorded.looked_up, clone(result)))
    return result


class _Recorded(Mapping[str, N.Layer]):
    """`layers`, recording every name looked up and what it found."""

    def __init__(self, layers: Mapping[str, N.Layer]):
        self.layers = layers
        self.looked_up: dict[str, N.Layer | None] = {}
        self.iterated = False

    def __getitem__(self, name: str) -> N.Layer:
        found = self.layers.get(name)
        self.looked_up[name] = found
        if found is None:
            raise KeyError(name)
        return found

    def __iter__(self) -> Iterator[str]:
        self.iterated = True
        return iter(self.layers)

    def __len__(self) -> int:
        self.iterated = True
        return len(self.layers)
