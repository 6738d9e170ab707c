"""Recompute or save: which cheap intermediates a derived backward reads saved instead of recomputed.

A cheap intermediate (an elementwise operation, a view) is recomputed in backward by default: it costs
a memory-bound pass per operation, and saving it costs its bytes for as long as the graph lives. Saving
one pays where it also lets the Function drop what it kept only to recompute it: `tanh(x @ w + b)` read
by the backward keeps `x @ w` and `b` to recompute it, where keeping the tanh instead is as many bytes
and two passes fewer. The model prices a choice by the bytes the Function saves and the elements the
backward recomputes, both at the example's sizes (a dim the example leaves open counts `DEFAULT_SIZE`),
and takes a save only when it keeps no more bytes than before (the saved-bytes target: what the
Function saved with every cheap value recomputed) and recomputes fewer elements.

What a backward reads is found by one walk (`walk_reads`): from the names its statements read, a name
kept for backward is read saved, any other is recomputed and what it is computed from read in turn.
`codegen/function.py` walks so for what the Function saves, and prices each choice of saves on a
`ReadGraph` (the same walk, on edges found once): a greedy round prices a candidate by walking again only
the values below it, and takes the price found in an earlier round where nothing it walked has changed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence, Set
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


def chosen_saves(
    candidates: Iterable[str],
    cost: Callable[[frozenset[str]], SavingCost],
    each: Callable[[frozenset[str], list[str]], list[SavingCost]] | None = None,
) -> frozenset[str]:
    """The cheap intermediates to save, added one at a time while one improves on the current choice
    (the one recomputing least, then keeping fewest bytes). `cost` prices a set of saved intermediates;
    `each(chosen, pending)`, where given, prices `chosen` with each pending one added (as `cost` would)."""
    chosen: frozenset[str] = frozenset()
    best = cost(chosen)
    pending = list(dict.fromkeys(candidates))
    while pending:
        prices = each(chosen, pending) if each is not None else [cost(chosen | {v}) for v in pending]
        better = [(c, v) for c, v in zip(prices, pending, strict=True) if c.better_than(best)]
        if not better:
            break
        best, pick = min(better, key=lambda cv: (cv[0].recomputed, cv[0].saved_bytes))
        chosen |= {pick}
        pending.remove(pick)
    return chosen


def walk_reads(
    start: Iterable[str],
    leaves: Set[str],
    kept: Callable[[str], bool],
    edges: Callable[[str], Sequence[str]],
    reads: dict[str, set[str]],
    recompute: dict[str, set[str]],
) -> None:
    """Walk from the names in `start`, read for the gradients of `leaves`: a `kept` name is read saved
    (`reads`), any other is recomputed (`recompute`) and its `edges` (what it is computed from) read in
    turn, where that adds leaves to it. Depth first and in order, as a recursive reader: `kept` may look at
    `reads` as the walk fills it."""
    todo = list(start)[::-1]
    while todo:
        var = todo.pop()
        if kept(var):
            reads.setdefault(var, set()).update(leaves)
            continue
        have = recompute.setdefault(var, set())
        if leaves <= have:
            continue
        have.update(leaves)
        todo.extend(reversed(edges(var)))


_ANY: frozenset[str] = frozenset({""})  # the leaves of every read, where which leaves does not matter


@dataclass
class ReadGraph:
    """What a backward's sections read of the forward, for pricing choices of saved intermediates: for
    sections none of which is rare and whose statements all have leaves, only which names are reached
    matters, not by which leaves."""

    edges: Mapping[str, Sequence[str]]  # what recomputing each step reads
    always: Collection[str]  # read saved whatever is chosen (as is any name without edges)
    starts: Sequence[Sequence[str]]  # each section's statements' reads
    shape_starts: Sequence[Sequence[str]]  # each section's reads of a shape only
    shape_uses: Sequence[str]
    on_ctx_shapes: Collection[str]  # those whose shape goes on ctx where their value is not read

    def reached(self, saved: Collection[str]) -> tuple[set[str], list[set[str]]]:
        """The names read saved, and each section's recomputed names."""
        reads: dict[str, set[str]] = {}
        recomputes: list[dict[str, set[str]]] = [{} for _ in self.starts]
        for start, recompute in zip(self.starts, recomputes, strict=True):
            self.walk(start, saved, reads, recompute)
        every = reads.keys() | {n for recompute in recomputes for n in recompute}
        on_ctx = {n for n in self.shape_uses if n in self.on_ctx_shapes and n not in every}
        for start, recompute in zip(self.shape_starts, recomputes, strict=True):
            self.walk([n for n in start if n not in on_ctx], saved, reads, recompute)
        return set(reads), [set(recompute) for recompute in recomputes]

    def walk(
        self, start: Iterable[str], saved: Collection[str], reads: dict[str, set[str]], recompute: dict[str, set[str]]
    ) -> None:
        """`walk_reads` from `start` with `saved` kept as well."""
        kept = lambda v: v in self.always or v in saved or v not in self.edges  # noqa: E731
        walk_reads(start, _ANY, kept, self.edges.__getitem__, reads, recompute)


class Pricing:
    """Prices of choices of saves on a `ReadGraph`: the bytes read saved (`size` elements, 4 bytes each;
    `masks` are priced by the caller) and the elements recomputed (of those whose recomputing `passes`
    over memory), each section's counted."""

    def __init__(
        self, graph: ReadGraph, size: Callable[[str], int], passes: Callable[[str], bool], masks: Collection[str]
    ) -> None:
        self.graph, self.size, self.passes, self.masks = graph, size, passes, masks
        self.starts = [set(start) for start in graph.starts]

    def cost(self, saved: frozenset[str]) -> SavingCost:
        reads, recomputes = self.graph.reached(saved)
        return SavingCost(self._bytes(reads), sum(self._redone(r) for r in recomputes))

    def each(self, chosen: frozenset[str], pending: list[str]) -> list[SavingCost]:
        """`cost(chosen | {v})` for each pending `v`, from one walk for `chosen`: saving `v` only stops
        what was reached through `v` alone (found by counting, for each name, the recomputed values that
        read it). Where a shape is read, what is reached decides which shapes go on ctx: each is walked."""
        if any(self.graph.shape_starts):
            return [self.cost(chosen | {v}) for v in pending]
        reads, recomputes = self.graph.reached(chosen)
        base = SavingCost(self._bytes(reads), sum(self._redone(r) for r in recomputes))
        readers = [Counter(n for var in recompute for n in self.graph.edges[var]) for recompute in recomputes]
        out = []
        for v in pending:
            more_bytes, more_redone = self._change(v, recomputes, readers)
            out.append(SavingCost(base.saved_bytes + more_bytes, base.recomputed + more_redone))
        return out

    def _change(self, v: str, recomputes: list[set[str]], readers: list[Counter[str]]) -> tuple[int, int]:
        """What saving `v` as well adds to the bytes and to the elements recomputed (fewer: negative)."""
        lost: list[set[str]] = []
        more_redone = 0
        for recompute, read_by, start in zip(recomputes, readers, self.starts, strict=True):
            if v not in recompute:
                lost.append(set())
                continue
            lost.append(self._reached_only_through(v, recompute, read_by, start))
            more_redone -= self._redone([v]) + self._redone(n for n in lost[-1] if n in recompute)
        if not any(v in recompute for recompute in recomputes):
            return 0, 0  # not reached: saving it changes nothing
        # a name reached but not recomputed is read saved: it is no longer where no section reaches it
        dropped = {n for gone, recompute in zip(lost, recomputes, strict=True) for n in gone if n not in recompute}
        unread = [
            n
            for n in dropped
            if all(
                n in gone or n not in start and not read_by[n]
                for gone, read_by, start in zip(lost, readers, self.starts, strict=True)
            )
        ]
        return self._bytes([v]) - self._bytes(unread), more_redone

    def _reached_only_through(self, v: str, recompute: set[str], read_by: Counter[str], start: set[str]) -> set[str]:
        """The names a section no longer reaches once `v` is kept: each whose every recomputed reader is
        `v` or one of them, and that no statement reads."""
        cut: Counter[str] = Counter()
        lost: set[str] = set()
        todo = list(self.graph.edges[v])
        while todo:
            n = todo.pop()
            cut[n] += 1
            if cut[n] == read_by[n] and n not in start:
                lost.add(n)
                if n in recompute:  # recomputed: what it reads loses a reader too
                    todo.extend(self.graph.edges[n])
        return lost

    def _bytes(self, reads: Iterable[str]) -> int:
        return 4 * sum(self.size(v) for v in reads if v not in self.masks)

    def _redone(self, recompute: Iterable[str]) -> int:
        return sum(self.size(v) for v in recompute if self.passes(v))
