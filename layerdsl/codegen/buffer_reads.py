"""Buffer reads that go through a clone: a read autograd may keep for backward (`x * b`), in a forward that
also updates that buffer on the same path (`update b = ...`, written in place with `copy_`).

Without the clone, the in-place update (in this call, or in a later call before backward runs: two forwards,
one backward) bumps the version of the tensor autograd kept, and backward fails with torch's "modified by an
inplace operation". torch's `spectral_norm` reads its updated buffers through a clone for the same reason.
A read as an operand of `+`/`-`, of a comparison, or in an `if`'s condition is not kept by autograd and is
not cloned; nor is a read that no call runs with an update (BatchNorm's running statistics: read under
`if track_running_stats and not training`, updated under `if track_running_stats and training`).

A buffer that only training updates (every `update` of it inside an `if` that requires `training`) is cloned
only in training (`self.c.clone() if self.training else self.c`): an eval call pays no copy. Two training
forwards before one backward still read their own clones; an eval call whose backward runs after a later
training call's update fails, as torch's BatchNorm does.
"""

from __future__ import annotations

from layerdsl.diagnostics import Span
from layerdsl.ir import nodes as N
from layerdsl.ir.conditions import atoms, holds
from layerdsl.ir.visit import children

Path = tuple[tuple[N.Expr, bool], ...]  # the conditions of the `if`s a statement is inside, and which side

MAX_ATOMS = 12  # conditions over more distinct tests are taken as satisfiable together (a clone too many)

TRAINING = "training"  # the atom of `if training` (ir.conditions keys atoms by their spec text)

_NOT_KEPT = {"+", "-"}  # autograd keeps neither operand of these (their gradients do not read them)


def cloned_buffer_reads(forward: N.Forward | None) -> frozenset[Span]:
    """The spans of the buffer reads of `forward` that go through a clone."""
    return frozenset(name.span for name in _cloned(forward))


def cloned_buffers(forward: N.Forward | None) -> frozenset[str]:
    """The buffers some read of which goes through a clone."""
    return frozenset(name.id for name in _cloned(forward))


def cloned_in_training_only(forward: N.Forward | None, also: frozenset[str] = frozenset()) -> frozenset[str]:
    """The cloned buffers (those `also` names too) whose every update runs only in training: their clones
    are taken only then."""
    if forward is None:
        return frozenset()
    updates: dict[str, list[Path]] = {}
    _collect(forward.body, (), updates, [])
    cloned = cloned_buffers(forward) | also
    return frozenset(b for b, paths in updates.items() if b in cloned and all(map(_requires_training, paths)))


def saved_with_the_inputs(layer: N.Layer) -> frozenset[str]:
    """Under `@function(save = "inputs")`, the buffers the forward updates: the Function saves every input it
    is passed for the forward it runs again in backward, so each of them goes through a clone (as a read
    autograd keeps does), or the update written in place would change what backward reads."""
    dec = layer.decorator("function")
    if layer.forward is None or dec is None:
        return frozenset()
    if not any(k.name == "save" and isinstance(k.value, N.Str) and k.value.value == "inputs" for k in dec.kwargs):
        return frozenset()
    updates: dict[str, list[Path]] = {}
    _collect(layer.forward.body, (), updates, [])
    return frozenset(updates)


def _requires_training(path: Path) -> bool:
    """Whether a statement at `path` runs only when `training` is true (False when no condition reads it)."""
    found = _satisfying(path)
    return found is not None and all(truth.get(TRAINING, False) for truth in found)


def _cloned(forward: N.Forward | None) -> list[N.Name]:
    if forward is None:
        return []
    updates: dict[str, list[Path]] = {}
    reads: list[tuple[N.Name, Path]] = []
    _collect(forward.body, (), updates, reads)
    return [name for name, path in reads if any(_together(path, other) for other in updates.get(name.id, ()))]


def _together(a: Path, b: Path) -> bool:
    """Whether statements at paths `a` and `b` can both run in one call."""
    found = _satisfying((*a, *b))
    return found is None or bool(found)


def _satisfying(conditions: Path) -> list[dict[str, bool]] | None:
    """The truth values of the tests the `if`s read (`training`, `track_running_stats`, `B > 0`, each taken
    as free) that make every condition hold as `conditions` say; None past MAX_ATOMS tests."""
    found: dict[str, N.Expr] = {}
    for cond, _ in conditions:
        atoms(cond, found)
    if len(found) > MAX_ATOMS:
        return None
    names = list(found)
    every = ({n: bool(bits >> k & 1) for k, n in enumerate(names)} for bits in range(2 ** len(names)))
    return [truth for truth in every if all(holds(cond, truth) == side for cond, side in conditions)]


def _collect(body: list[N.Stmt], path: Path, updates: dict[str, list[Path]], reads: list) -> None:
    for st in body:
        match st:
            case N.Update(target=target, value=_):
                updates.setdefault(target, []).append(path)  # its value is computed under no_grad
            case N.If(cond=cond, body=then, orelse=orelse):
                _collect(then, (*path, (cond, True)), updates, reads)
                _collect(orelse, (*path, (cond, False)), updates, reads)
            case N.For(body=inner):
                _collect(inner, path, updates, reads)
            case N.Require():
                pass
            case _:
                reads += [(n, path) for n in _kept_buffer_reads(st)]


def _kept_buffer_reads(node) -> list[N.Name]:
    """The buffer names read under `node` where autograd may keep them."""
    found: list[N.Name] = []

    def visit(e, kept: bool) -> None:
        if isinstance(e, N.Name):
            if kept and e.ref == N.Ref.BUFFER:
                found.append(e)
            return
        if isinstance(e, N.Compare):
            return
        children_kept = not (isinstance(e, N.BinOp) and e.op in _NOT_KEPT) and not (
            isinstance(e, N.UnaryOp) and e.op == "-"
        )
        for child in children(e):
            visit(child, children_kept)

    visit(node, True)
    return found
