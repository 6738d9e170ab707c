"""What a generated backward reads, recorded as it is written: a `Spelling` that notes each name it writes.

A `@function` layer's backward binds in its prelude only the dims and number locals its other lines read
(`n = ctx.n`, `h = n // 2`), and its setup_context keeps on `ctx` only what backward reads there
(`ctx.eps`). Both are known from the IR expressions the backward writes: every name of them goes through
`Spelling.name`, which `Recording` overrides to note the name, as written bare (a local backward binds) or
spelt another way (`ctx.eps`: a field setup_context keeps).
"""

from __future__ import annotations

import dataclasses

from layerdsl.codegen.pyexpr import Spelling
from layerdsl.ir import nodes as N


@dataclasses.dataclass
class Read:
    """The names one writing of a backward reads, by how its spellings write them."""

    bare: set[str] = dataclasses.field(default_factory=set)  # written as themselves: bound in backward
    spelt: set[str] = dataclasses.field(default_factory=set)  # written another way (`ctx.B`): kept on ctx


@dataclasses.dataclass
class Recording(Spelling):
    """A backward's spelling that records in `read` each name it writes, by how it writes it
    (`dataclasses.replace` keeps the class and the record: a spelling derived from it records too)."""

    read: Read = dataclasses.field(default_factory=Read)

    def name(self, node: N.Name) -> str:
        spelt = super().name(node)
        (self.read.bare if spelt == node.id else self.read.spelt).add(node.id)
        return spelt
