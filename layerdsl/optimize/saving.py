"""Recompute or save: which cheap intermediates a derived backward reads saved instead of recomputed.

A cheap intermediate (an elementwise operation, a view) is recomputed in backward by default: it costs
a memory-bound pass per operation, and saving it costs its bytes for as long as the graph lives. Saving
one pays where it also lets the Function drop what it kept only to recompute it: `tanh(x @ w + b)` read
by the backward keeps `x @ w` and `b` to recompute it, where keeping the tanh instead is as many bytes
and two passes fewer. The model prices a choice by the bytes the Function saves and the elements the
backward recomputes, both at the example's sizes (a dim the example leaves open counts `DEFAULT_SIZE`),
and takes a save only when it keeps no more bytes than before (the saved-bytes target: what the
Function saved with every cheap value recomputed) and recomputes fewer elements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from layerdsl.semantics.shapes import Shape, text_poly

DEFAULT_SIZE = 64  # a dim the example leaves open (a batch, a `...`)


@dataclass(frozen=True)
class SavingCost:
    """What one choice of saved intermediates costs."""

    saved_bytes: int  # what the Function keeps for backward
    recomputed: int  # elements the backward recomputes (each a pass over memory)

    def better_than(self, other: SavingCost) -> bool:
        """Within the other's bytes, and less recomputation."""
        return self.saved_bytes <= other.saved_bytes and self.recomputed < other.recomputed


def elements(shape: Shape, sizes: Mapping[str, int]) -> int:
    """The number of elements of a static shape at the given sizes (an unknown shape: one open dim)."""
    if shape is None:
        return DEFAULT_SIZE
    total = 1
    for dim in shape:
        total *= _dim_size(dim, sizes)
    return total


def _dim_size(dim: str, sizes: Mapping[str, int]) -> int:
    if dim == "...":
        return DEFAULT_SIZE
    value = 0
    for monomial, coeff in text_poly(dim):
        term = coeff
        for factor, power in monomial:
            term *= sizes.get(factor, DEFAULT_SIZE) ** power
        value += term
    return max(value, 1)


def chosen_saves(candidates: Iterable[str], cost: Callable[[frozenset[str]], SavingCost]) -> frozenset[str]:
    """The cheap intermediates to save, added one at a time while one improves on the current choice
    (the one recomputing least, then keeping fewest bytes). `cost` prices a set of saved intermediates."""
    chosen: frozenset[str] = frozenset()
    best = cost(chosen)
    pending = list(dict.fromkeys(candidates))
    while pending:
        priced = [(cost(chosen | {v}), v) for v in pending]
        better = [(c, v) for c, v in priced if c.better_than(best)]
        if not better:
            break
        best, pick = min(better, key=lambda cv: (cv[0].recomputed, cv[0].saved_bytes))
        chosen |= {pick}
        pending.remove(pick)
    return chosen
