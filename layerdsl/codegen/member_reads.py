"""A `@function` module's forward reading each of its tensor members once.

The forward checks its inputs against a parameter (`x.device != self.beta.device`) and then passes the
parameter to `Function.apply`: two reads through `nn.Module.__getattr__`, about 0.5 µs each, where the plain
module's forward reads it once (its functional form checks the argument it is given). A member read more than
once is bound to a local first (`beta = self.beta`), and the checks and the call read the local.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from layerdsl.codegen.spec_lines import without_spec_lines
from layerdsl.language.naming import fresh_name

_NAME = re.compile(r"(?<![\w.])[A-Za-z_]\w*")  # a name, not an attribute


def read_once(lines: Sequence[str], members: Sequence[str], around: Collection[str] = ()) -> list[str]:
    """`lines` (a forward's body) with each member `self.NAME` they read more than once bound to a local
    first, named apart from every name `lines` and `around` (the forward's other lines) hold. A member the
    lines assign is read as it is."""
    text = without_spec_lines("\n".join([*lines, *around]))
    taken = set(_NAME.findall(text))
    bindings: list[str] = []
    out = list(lines)
    for name in members:
        read = re.compile(rf"\bself\.{re.escape(name)}\b")
        if re.search(rf"\bself\.{re.escape(name)}\s*(\[[^\]]*\]\s*)?=(?!=)", text):
            continue
        if sum(len(read.findall(without_spec_lines(line))) for line in out) < 2:
            continue
        var = fresh_name(name, taken)
        taken.add(var)
        bindings.append(f"{var} = self.{name}")
        out = [_in_code(read, var, line) for line in out]
    return bindings + out


def _in_code(read: re.Pattern[str], var: str, line: str) -> str:
    """`line` with each member read `read` finds in its code (not its `# file.layer:LINE`) spelt `var`."""
    code = without_spec_lines(line)
    return read.sub(var, code) + line[len(code) :]
