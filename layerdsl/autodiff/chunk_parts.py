"""The check that `a, b, c = chunk(x, 3, dim = d)` gives as many parts as names, under `@function`.

torch.chunk cuts parts of ceil(size / chunks), so a size the checker cannot tell (a cat of a run-time loop's
items) may give fewer parts than the spec unpacks: 5 into 4 chunks gives 2, 2 and 1. The plain module then
raises Python's ValueError at the unpacking line; the Function, which takes each part as a slice of x
(`autodiff.tape`), would give an empty last part instead. The tape holds this check (`Tape.checks`), on the
sliced value: the last part is not empty, where the size is not 0 (torch cuts 0 into `chunks` empty parts). The
plan drops it where the static shapes tell the size cuts into equal parts (`undecided`), and the Function's
forward raises the plain module's ValueError at the same spec line (`check_lines`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from layerdsl.diagnostics import Span
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.language.ops import OPS
from layerdsl.semantics.shapes import Shape, parts


@dataclass(eq=False)
class PartsCheck(N.Require):
    """The check a `chunk` unpacked into names needs: its chunk count and dim besides the test."""

    count: int
    dim: N.Expr


def parts_check(span: Span, call: N.Call, source: N.Expr) -> N.Require | None:
    """For `chunk(x, count, dim = d)` unpacked at `span`, with x sliced as `source`: `require (count - 1) *
    each < size if size > 0`, `size` being source's size at d and `each` the parts' size, ceil(size / count);
    None for a count or a dim not written as an int (and for split)."""
    words = {k.name: k.value for k in call.kwargs}
    cut = call.args[1] if len(call.args) > 1 else words.get("chunks")
    dim = call.args[2] if len(call.args) > 2 else words.get("dim", B.num(0))
    if call.func != "chunk" or not isinstance(cut, N.Num) or not isinstance(cut.value, int) or cut.value < 2:
        return None
    count = cut.value
    size = N.Call(N.NOWHERE, "size_at", N.NOWHERE, [source, dim], [])
    size.kind = N.Kind.INT
    each = _int(B.binop("//", _int(B.binop("+", size, B.num(count - 1))), B.num(count)))
    before_last = _int(B.binop("*", B.num(count - 1), each))
    return PartsCheck(span, _compare("<", before_last, size), _compare(">", size, B.num(0)), None, count, dim)


def is_parts_check(check: N.Require) -> bool:
    return isinstance(check, PartsCheck)


def undecided(checks: list[N.Require], shapes: Mapping[str, Shape]) -> list[N.Require]:
    """`checks` without the parts checks whose sliced value's static shape tells its size (`[B, 4 * H]` into
    4: the checker tells it cuts equally, and refuses a size it does not)."""
    return [c for c in checks if not (is_parts_check(c) and _size_told(c, shapes))]


def _size_told(check: N.Require, shapes: Mapping[str, Shape]) -> bool:
    assert isinstance(check, PartsCheck)
    source = _sliced(check)
    if source is None:
        return False
    args = {"input": source, "chunks": B.num(check.count), "dim": check.dim}
    found, problem = parts(OPS["chunk"], args, shapes.get(source.id))
    return found is not None or problem is not None


def _sliced(check: N.Require) -> N.Name | None:
    size = check.cond.operands[1] if isinstance(check.cond, N.Compare) else None
    if isinstance(size, N.Call) and size.func == "size_at" and isinstance(size.args[0], N.Name):
        return size.args[0]
    return None


def check_lines(check: N.Require, ex) -> list[str]:
    """The test and the ValueError the plain module's unpacking raises (Python's own message)."""
    assert isinstance(check, PartsCheck)
    count, dim = check.count, check.dim
    source = _sliced(check)
    assert source is not None, "a parts check reads the sliced value's size"
    got = f"len(torch.chunk({ex(source)}, {count}, dim={ex(dim)}))"
    message = f"not enough values to unpack (expected {count}, got {{{got}}})"
    return [f"if {got} != {count}:", f'    raise ValueError(f"{message}")']


def _int(e: N.Expr) -> N.Expr:
    e.kind = N.Kind.INT
    return e


def _compare(op: str, left: N.Expr, right: N.Expr) -> N.Compare:
    e = N.Compare(N.NOWHERE, [op], [left, right])
    e.kind = N.Kind.BOOL
    return e
