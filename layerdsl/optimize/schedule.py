"""The order of a backward's statements and where its temporaries are freed.

Two orders compete: the derivation's, and one with reductions moved early (`reductions_early`); the
optimisation keeps the one that allocates the fewest fresh full-size buffers (`fresh_buffers`).
`place_deletions` then frees full-size temporaries after their last read, so their memory is reused.
"""

from __future__ import annotations

from layerdsl.ir import nodes as N
from layerdsl.ir.visit import children, walk
from layerdsl.optimize.operations import fresh_node
from layerdsl.optimize.statements import Facts, Shapes, Stmt, last_reads, reads
from layerdsl.semantics.shapes import Shape


def reductions_early(stmts: list[Stmt]) -> list[Stmt]:
    """Each statement that sums a gradient down (a small result) moves up to just after what it reads,
    so that a later full-size reader of the same temporary is its last one and may update it in place
    (MyLayer: `grad_bias = 0.5 * grad_add.sum(0)` before `grad_x = grad_add.mul_(x)`)."""
    out: list[Stmt] = []
    for s in stmts:
        at = len(out)
        if is_reduction(s.expr) and not s.guard:
            needs = set(reads(s)) | {s.target}
            while (
                at > 0
                and out[at - 1].target not in needs
                and not out[at - 1].guard
                and s.target not in reads(out[at - 1])
            ):
                at -= 1
        out.insert(at, s)
    return out


def is_reduction(e: N.Expr) -> bool:
    """A sum, perhaps scaled by a number (`0.5 * sum(...)`, `-sum(...)`, `sum(...) / n`)."""
    while isinstance(e, (N.BinOp, N.UnaryOp)):
        tensors = [c for c in children(e) if isinstance(c, N.Expr) and c.kind == "tensor"]
        if len(tensors) != 1 or isinstance(e, N.BinOp) and e.op not in ("*", "/"):
            return False
        e = tensors[0]
    return isinstance(e, N.Call) and e.func in ("sum", "sum_to")


def fresh_buffers(stmts: list[Stmt], facts: Facts) -> int:
    """How many buffers of unknown or full size the statements allocate."""
    shapes = Shapes(facts)
    count = 0
    for s in stmts:
        for node in [*walk(s.expr), *(walk(s.otherwise) if s.otherwise else [])]:
            if isinstance(node, N.Expr) and fresh_node(node) and not isinstance(node, N.InPlace):
                shape = shapes.of(node)
                count += shape is None or shape in facts.full
        shapes.learn(s)
    return count


def place_deletions(stmts: list[Stmt], facts: Facts, shapes: dict[str, Shape], updated: set[str]) -> None:
    """`del t` after the last read of a full-size temporary, when more statements follow (`updated`: names
    whose storage lives on under another name).

    The statement that last reads a temporary serves a subset of the gradients its producer serves, so
    the `del` sits in a block that runs only where the name was bound."""
    bound = {s.target for s in stmts}
    for name, k in sorted(last_reads(stmts).items(), key=lambda kv: kv[1]):
        if name in bound and name not in facts.kept | updated and k < len(stmts) - 1 and shapes.get(name) in facts.full:
            stmts[k].dels.append(name)
