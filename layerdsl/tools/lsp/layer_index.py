"""The layers a document's folder sees, by name, parsed only when a name is looked up.

A folder the server looks at may hold thousands of specs (a document opened from /tmp): parsing them all
would keep the document's diagnostics waiting. Each spec's text is only searched for the names it may define
(`layer Name` anywhere in it: a superset of its layers, so that no layer is missed); looking a name up
parses the files that may define it, the nearest folders first, until a folder is found that does. The
answers are `Namespace`'s (semantics/scopes.py) over the document's layers and every spec found, as the
server computed them when it parsed every spec."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterator, Mapping

from layerdsl.ir import nodes as N
from layerdsl.semantics.scopes import folder_distance, folder_of

_DEFINES = re.compile(r"\blayer\s+([A-Za-z_]\w*)")


def defined_names(text: str) -> set[str]:
    """The names of the layers `text` may define: every `layer Name` in it, in code, strings or comments."""
    return set(_DEFINES.findall(text))


class LayerIndex:
    """The layers named in the document at `path` (`own`) and in the other spec files (`files`: path ->
    text, in the order `Namespace` reads them: of two layers of one name in one folder the first counts);
    `parse` gives a file's pristine parse (None when it has problems), `names_of` the names its text may
    define."""

    def __init__(
        self,
        path: str,
        own: list[N.Layer],
        files: dict[str, str],
        parse: Callable[[str, str], N.SpecFile | None],
        names_of: Callable[[str, str], set[str]],
    ) -> None:
        self.path = path
        self.own = own
        self.files = files
        self._parse = parse
        self.defining: dict[str, list[str]] = {}  # name -> the files that may define it, in order
        for p, text in files.items():
            for name in names_of(p, text):
                self.defining.setdefault(name, []).append(p)
        self._candidates: dict[tuple[str, tuple[str, ...]], list[N.Layer]] = {}

    def reading(self, parse: Callable[[str, str], N.SpecFile | None]) -> LayerIndex:
        """This index over the same files, whose layers are read with `parse` instead (the references read
        a spec with a syntax error by its repaired parse): the files' names are not searched again."""
        view = copy.copy(self)
        view._parse, view._candidates = parse, {}
        return view

    def names(self) -> set[str]:
        """Every name a layer may have here (without parsing: some may be no layer's)."""
        return {layer.name for layer in self.own} | set(self.defining)

    def candidates(self, name: str, path: str) -> list[N.Layer]:
        """`Namespace.candidates`: the layers `name` may mean in the folder of `path` (the nearest one, or the
        several at the same nearest distance); none for an unknown name. Parses only the files of the
        nearest folders that may define it."""
        here = folder_of(path)
        key = (name, here)
        hit = self._candidates.get(key)
        if hit is not None:
            return hit
        found: dict[tuple[str, ...], N.Layer] = {}
        mine = next((layer for layer in self.own if layer.name == name), None)
        if mine is not None:
            found[folder_of(self.path)] = mine
        files = self.defining.get(name, [])
        by_distance = sorted(
            {folder_of(p) for p in files} | set(found), key=lambda folder: (folder_distance(here, folder), folder)
        )
        result: list[N.Layer] = []
        for k, folder in enumerate(by_distance):
            distance = folder_distance(here, folder)
            if result and distance != folder_distance(here, by_distance[k - 1]):
                break  # the nearest folders defining it are all read
            if folder not in found:
                for p in files:
                    if folder_of(p) == folder and (layer := self._first(p, name)) is not None:
                        found[folder] = layer
                        break
            if folder in found:
                result.append(found[folder])
        self._candidates[key] = result
        return result

    def _first(self, path: str, name: str) -> N.Layer | None:
        spec = self._parse(path, self.files[path])
        return next((layer for layer in spec.layers if layer.name == name), None) if spec is not None else None

    def ambiguous(self, name: str) -> list[N.Layer]:
        """The layers of other folders as near as each other that `name` may mean in the document's folder
        (the checker reports the use); empty when it has one meaning or none."""
        found = self.candidates(name, self.path)
        return found if len(found) > 1 else []

    def near_defining(self, names: set[str]) -> list[N.SpecFile]:
        """The pristine specs of the document's own folder that define a layer named one of `names`."""
        here = os.path.dirname(self.path)
        maybe = {p for name in names for p in self.defining.get(name, [])}
        out = []
        for p, text in self.files.items():
            if p in maybe and os.path.dirname(p) == here:
                spec = self._parse(p, text)
                if spec is not None and any(layer.name in names for layer in spec.layers):
                    out.append(spec)
        return out


class VisibleLayers(Mapping[str, N.Layer]):
    """Every layer name that has one meaning in the document's folder, and its layer: the document's own
    layers first (`own`, which the analysis may replace), then the other files' (looked up in `index`,
    parsing on demand). With `seen_from`, another spec's path, the names mean what they mean in that spec's
    folder (`Namespace.visible(seen_from)`, the document's layers among the others'). Iterating looks every
    name up (completion reads `names` instead)."""

    def __init__(self, index: LayerIndex | None, own: list[N.Layer], seen_from: str | None = None) -> None:
        self.index = index
        self.own = {layer.name: layer for layer in own}
        self.seen_from = seen_from

    def __getitem__(self, name: str) -> N.Layer:
        if name in self.own:
            return self.own[name]
        if self.index is not None:
            found = self.index.candidates(name, self.seen_from or self.index.path)
            if len(found) == 1 and (self.seen_from is not None or found[0].path != self.index.path):
                return found[0]
        raise KeyError(name)

    def names(self) -> list[str]:
        """The names a layer may have here, sorted, without parsing another file (some may be no layer's,
        or be ambiguous)."""
        return sorted(set(self.own) | (self.index.names() if self.index is not None else set()))

    def __iter__(self) -> Iterator[str]:
        return (name for name in self.names() if name in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)
