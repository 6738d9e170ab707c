"""Where a layer's backward cannot be derived inside one of its subs: the sub's layer to put `@function` on.

A stack of copied layers whose body the derivation cannot go through as one Function (the `if`s of a
Transformer layer in a loop over its copies) often holds a layer whose own backward derives. With
`@function` on that layer and not on the stack, each call of the sub runs the layer's Function, and
autograd chains them. The hint names the outermost such layer that holds the problem's location.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from layerdsl.diagnostics import Span
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import walk


def deriving_sub(
    layer: N.Layer, span: Span, layers: Mapping[str, N.Layer], derives: Callable[[N.Layer], bool]
) -> N.Layer | None:
    """The outermost layer among `layer`'s subs (and theirs) whose forward, in `layer`'s file, writes
    `span`, and whose own backward `derives`; None when there is none."""
    for sub in _sub_layers(layer, layers):
        if sub.path == layer.path and _writes(sub, span) and derives(sub):
            return sub
    return None


def _sub_layers(layer: N.Layer, layers: Mapping[str, N.Layer]) -> Iterator[N.Layer]:
    """The spec layers `layer`'s subs are built from, breadth first (outer subs before theirs), each once."""
    seen = {layer.name}
    queue = [layer]
    while queue:
        current = queue.pop(0)
        for sub in current.subs:
            found = layers.get(sub.call.func)
            if found is not None and found.name not in seen:
                seen.add(found.name)
                queue.append(found)
                yield found


def _writes(layer: N.Layer, span: Span) -> bool:
    """Whether `span` is that of an expression or statement of `layer`'s forward."""
    if layer.forward is None:
        return False
    return any(getattr(n, "span", None) == span for s in layer.forward.body for n in walk(s))
