"""Saved cheap intermediates that double backward differentiates through, recomputed only when it runs.

A cheap intermediate the saving model keeps (`optimize.saving`: RMSNorm's `rsqr`) is returned by forward as an
extra output. Left differentiable, double backward sees it depend on the inputs, but autograd then detaches it
on saving and on unpacking, and the backward needs a section for its gradient. Where everything it is
computed from is saved anyway (RMSNorm saves `x`), it is marked non-differentiable instead, as a hand-written
Function marks its `rstd`, and a recorded backward (`create_graph=True`, grad mode on) computes it again
from what is saved, so that double backward differentiates through it; a plain backward reads it saved.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

from layerdsl.autodiff.tape import Step, Tape
from layerdsl.optimize.saving import walk_reads


def recomputable_when_recorded(
    tape: Tape,
    saved_cheap: Collection[str],
    reads: Mapping[str, set[str]],
    edges: Callable[[str], Sequence[str]],
    never_recomputed: Callable[[str], bool],
) -> frozenset[str]:
    """The saved cheap intermediates whose recomputation reads only tensors the backward reads saved anyway,
    each saved for at least the gradients that read the intermediate (a Function of one output only: with
    several, a non-differentiable one would get a materialised zero gradient)."""
    if len(tape.outputs) != 1:
        return frozenset()
    numbers = {n for n, _ in tape.numbers}
    out = set()
    for v in saved_cheap:
        steps = recomputation(tape, v, saved_cheap, reads, edges, never_recomputed) if v in reads else None
        # (one reading a number local, `x[:, k:k + 1]` of an unrolled loop, is left differentiable: the backward
        # computing it again does not bind the numbers each copy read)
        if steps is not None and not any(s.reads & numbers for s in steps):
            out.add(v)
    # (one only: where several are, one's recomputation inlines another that backward then reads saved, not
    # differentiable, and double backward is wrong; RMSNorm's rsqr is one)
    return frozenset(out) if len(out) == 1 else frozenset()


def recomputation(
    tape: Tape,
    var: str,
    saved_cheap: Collection[str],
    reads: Mapping[str, set[str]],
    edges: Callable[[str], Sequence[str]],
    never_recomputed: Callable[[str], bool],
) -> list[Step] | None:
    """The steps computing `var` again from what is saved, in forward order (`var` last), or None where that
    would read a tensor not saved for the gradients reading `var`."""
    leaves = reads[var]
    found: dict[str, set[str]] = {}
    recompute: dict[str, set[str]] = {}

    def kept(name: str) -> bool:  # another saved cheap value is computed again too: it is non-differentiable
        return (name in reads and name not in saved_cheap) or tape.step(name) is None or never_recomputed(name)

    # a costly value is computed again too: a recorded backward is rare, and exactness is all it needs
    walk_reads(edges(var), leaves, kept, edges, found, recompute)
    if any(name not in reads or not leaves <= reads[name] for name in found):
        return None
    return [s for s in tape.steps if s.var in recompute or s.var == var]
