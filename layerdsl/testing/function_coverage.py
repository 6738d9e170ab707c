"""Every layer of every shipped spec under `@function`: derived and compared with autograd, or refused.

For each layer of specs/ (specs/torch_nn/ included) the layer is compiled with `@function` added (a layer
that has it already, as it is). Then either

- it derives: its generated autograd.Function is compared with the plain functional form (or, for a layer
  without one, the shipped spec's plain module) in float64 over its configuration matrix (configurations.py;
  for a spec of torch_nn/, the configurations at its example's sizes): the outputs, the gradients of the
  inputs and parameters (function_vs_autograd.compare_with_functional), and the second derivatives
  (function_vs_autograd.compare_second_derivatives, a double backward through both); or
- it is refused: the diagnostics the checker or the derivation gives, with their locations in the
  shipped spec, grouped by message on the page.

All layers are compiled in one run (as in `layerdsl gen specs`; a layer is known by its name, or by
`folder/Name` where a shallower folder's layer has the name too, as specs/torch_nn/'s RMSNorm): the
copies of the specs carry `@function` on every layer, a layer the checker refuses loses it again, and the
derivation is tried on each of the others (its first "cannot derive" error is its refusal).
`python -m layerdsl.testing.function_coverage` compares every derived layer and writes
docs/function-coverage.md; `--check` says whether the committed page is current. The page lists what the
comparisons found: nothing, as long as tests/test_function_coverage.py passes.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from layerdsl.diagnostics import Diagnostic, SpecError
from layerdsl.ir import nodes as N
from layerdsl.semantics.scopes import Namespace
from layerdsl.testing.layer_checks import Case
from layerdsl.testing.pages import write_or_check

DOC = Path("docs/function-coverage.md")
PACKAGE = "layerdsl_function_coverage"
TORCH_NN = "torch_nn"


@dataclass(frozen=True)
class Refusal:
    """One diagnostic of a layer that cannot be a `@function`, located in the shipped spec."""

    layer: str
    path: str  # as diagnostics show it: `specs/torch_nn/rnn.layer`
    line: int
    col: int
    message: str
    hint: str | None

    @property
    def location(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


@dataclass
class Coverage:
    """Which layers derive under `@function` and which are refused, and why."""

    layers: dict[str, str] = field(default_factory=dict)  # every layer, by `label`: its spec's path
    written: set[str] = field(default_factory=set)  # the layers that are @function in the shipped specs
    written_backward: set[str] = field(default_factory=set)  # those with a backward block
    refusals: dict[str, list[Refusal]] = field(default_factory=dict)  # by layer

    @property
    def derived(self) -> list[str]:
        return sorted(n for n in self.layers if n not in self.refusals)


# ------------------------------------------------------------------ the specs with @function added

# A layer `X` given @function generates `XFunction`: where the specs have a layer of that name (Sigmoid and
# the tutorial's SigmoidFunction), that layer is renamed in the copies, its name with this added.
RENAMED = "Renamed"


@dataclass
class SpecCopy:
    """A spec's text with `@function` before the layers `functions` names, and the way back to its lines."""

    text: str
    original_line: list[int]  # the copy's line (1-based, index 0 unused) → the shipped spec's line


def with_function(text: str, layers: list[N.Layer], functions: set[str], renames: dict[str, str]) -> SpecCopy:
    """`text` with a `@function` line before the header of each layer of `functions` that lacks one, and
    the names `renames` changes changed."""
    headers = {}
    lines = text.split("\n")
    for layer in layers:
        if layer.name in functions and not layer.is_function:
            header = next(
                k for k in range(layer.span.line - 1, len(lines)) if re.match(rf"\s*layer\s+{layer.name}\b", lines[k])
            )
            headers[header] = re.match(r"\s*", lines[header]).group()  # type: ignore[union-attr]
    out, original = [], [0]
    for k, line in enumerate(lines):
        if k in headers:
            out.append(f"{headers[k]}@function")
            original.append(k + 1)
        for old, new in renames.items():
            line = re.sub(rf"\b{old}\b", new, line)
        out.append(line)
        original.append(k + 1)
    return SpecCopy("\n".join(out), original)


def survey(specs: Path, work: Path) -> Coverage:
    """Every layer of `specs` compiled with `@function` (copies under `work`): the refusals, by layer."""
    from layerdsl.autodiff.inline import Inlined, LayerNotGiven, inline_subs
    from layerdsl.autodiff.plan import as_layers_problem, composed_instead, plan_inlined
    from layerdsl.autodiff.tape import NotDerivable

    coverage, shipped = shipped_layers(specs)
    copy_root = work / specs.resolve().name
    while True:
        functions = set(coverage.layers) - coverage.refusals.keys()
        copies, files, found = compile_copies(shipped, functions, copy_root)
        if not found:
            break
        refuse(coverage, files, copies, found)
    namespace = Namespace(layer for f in files for layer in f.layers)
    deriving: dict[int, bool] = {}
    for f in files:
        for layer in f.layers:
            if layer.is_function:
                inlined = Inlined(layer)
                try:  # as `gen` plans it: its subs inlined
                    inlined = inline_subs(layer, namespace.visible(f.path))
                    plan_inlined(inlined)
                except LayerNotGiven:
                    continue
                except NotDerivable as exc:  # worded as `plan_backwards` words it
                    if composed_instead(layer, namespace.visible(f.path), deriving) is not None:
                        continue  # its subs' Functions composed, as `plan_backwards` plans it
                    message, hint = as_layers_problem(exc, layer, inlined, namespace.visible(f.path), deriving)
                    refuse(coverage, files, copies, [Diagnostic(f.path, exc.span, message, hint)])
    write_copies(shipped, set(coverage.derived), copy_root)  # the derived layers alone, for `generate`
    return coverage


def shipped_layers(specs: Path) -> tuple[Coverage, list[tuple[Path, N.SpecFile]]]:
    """The coverage to fill (every layer, none refused) and the parsed specs with their paths below `specs`."""
    from layerdsl.driver.pipeline import find_sources, load

    sources = find_sources([str(specs)])
    files, problems = load(sources)
    if problems:
        raise SpecError(problems)
    coverage = Coverage()
    namespace = Namespace(layer for f in files for layer in f.layers)
    for f in files:
        for layer in f.layers:
            name = label(namespace, layer)
            coverage.layers[name] = f.path
            if layer.is_function:
                coverage.written.add(name)
            if layer.backward is not None:
                coverage.written_backward.add(name)
    return coverage, [(src.file.relative_to(specs), f) for src, f in zip(sources, files)]


def compile_copies(
    shipped: list[tuple[Path, N.SpecFile]], functions: set[str], root: Path
) -> tuple[dict[str, SpecCopy], list[N.SpecFile], list[Diagnostic]]:
    """The copies written, parsed and checked: by shown path, parsed, and the diagnostics (empty if none)."""
    from layerdsl.driver.pipeline import find_sources, load
    from layerdsl.semantics.checker import check_program

    copies = write_copies(shipped, functions, root)
    files, problems = load(find_sources([str(root)]))
    if problems:
        return copies, files, problems
    try:
        check_program(files)
    except SpecError as exc:
        return copies, files, exc.diagnostics
    return copies, files, []


def write_copies(shipped: list[tuple[Path, N.SpecFile]], functions: set[str], root: Path) -> dict[str, SpecCopy]:
    """The specs under `root` with `@function` on the layers `functions` names; each copy by its shown path."""
    names = {layer.name for _, f in shipped for layer in f.layers}
    renames = {f"{n}Function": f"{n}Function{RENAMED}" for n in functions if f"{n}Function" in names}
    copies = {}
    namespace = Namespace(layer for _, f in shipped for layer in f.layers)
    for relative, f in shipped:
        chosen = {layer.name for layer in f.layers if label(namespace, layer) in functions}
        copy = with_function(f.source, f.layers, chosen, renames)
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(copy.text, encoding="utf-8")
        copies[f.path] = copy
    return copies


def shipped_name(name: str) -> str:
    """A layer's name in the shipped specs, from its name in the copies."""
    return name.removesuffix(RENAMED) if name.endswith(f"Function{RENAMED}") else name


def label(namespace: Namespace, layer: N.Layer) -> str:
    """How the coverage knows a layer (of the shipped specs or the copies, `namespace` holding all of them):
    its shipped name, after `folder/` where a shallower folder's layer has that name too."""
    key = namespace.key(layer)
    return key[: len(key) - len(layer.name)] + shipped_name(layer.name)


def refuse(coverage: Coverage, files: list[N.SpecFile], copies: dict[str, SpecCopy], found: list[Diagnostic]) -> None:
    """Each diagnostic as a refusal of the layer it lies in. One outside every layer given `@function` here
    is no refusal: the shipped specs themselves do not compile."""
    by_path = {f.path: f for f in files}
    namespace = Namespace(layer for f in files for layer in f.layers)
    for d in found:
        layer = owner(by_path[d.path], d.span.line) if d.path in by_path else None
        inlined = re.search(r"inlined into '(\w+)'\)$", d.message)  # a sub's statement, shown where it is written
        if inlined is not None and d.path in by_path:
            layer = next((x for x in by_path[d.path].layers if x.name == inlined.group(1)), layer)
        if layer is None or not layer.is_function or label(namespace, layer) in coverage.written:
            raise SpecError([d])
        name = label(namespace, layer)
        line = copies[d.path].original_line[d.span.line]
        refusal = Refusal(name, d.path, line, d.span.col, d.message, d.hint)
        coverage.refusals.setdefault(name, []).append(refusal)


def owner(f: N.SpecFile, line: int) -> N.Layer | None:
    """The layer of `f` that line `line` lies in (its decorators' lines included)."""
    starts = [min([layer.span.line, *(d.span.line for d in layer.decorators)]) for layer in f.layers]
    inside = [layer for layer, start in zip(f.layers, starts) if start <= line]
    return inside[-1] if inside else None


def reasons(coverage: Coverage) -> dict[str, list[Refusal]]:
    """The refusals grouped by message, the largest group first."""
    groups: dict[str, list[Refusal]] = defaultdict(list)
    for found in coverage.refusals.values():
        for r in found:
            groups[r.message].append(r)
    return dict(sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])))


# ------------------------------------------------------------------ the derived layers against autograd


@dataclass
class Comparison:
    """One derived layer against autograd: the configurations compared, and each that differs."""

    layer: str
    configurations: int
    failures: list[str] = field(default_factory=list)


def derived_cases(coverage: Coverage, specs: Path, work: Path, package: str = PACKAGE) -> list[Case]:
    """The derived layers' cases, generated (as @function layers) into `package` under `work`; `survey`
    left the copies there."""
    from layerdsl.testing.layer_checks import generate_package

    cases = generate_package([str(work / specs.resolve().name)], work / "generated", package)
    derived = set(coverage.derived)
    namespace = Namespace(c.layer for c in cases)
    return [c for c in cases if c.layer.is_function and label(namespace, c.layer) in derived]


def configured(case: Case) -> list[Case]:
    """What a derived layer is compared on, in float64: its configuration matrix (configurations.py); for
    a spec of torch_nn/, whose examples are drawn for their own sizes (an even dim for GLU, layer norm's
    `normalized_shape`) and one leading dim (an input without a declared shape and its target), the
    matrix's configurations with the example's sizes: its `bool` arguments, training and eval."""
    import torch

    from layerdsl.testing.configurations import configured_cases

    cases = [c for c in configured_cases(case) if c.dtype == torch.float64]
    if case.module.split(".")[0] == TORCH_NN:
        cases = [c for c in cases if len(c.lead()) == 1 and c.dims() == case.dims()]
    return cases


def compare(case: Case, package: str, plain: Callable[[], str] | None = None, name: str | None = None) -> Comparison:
    """The layer's Function against its plain functional form on every configuration: outputs, first and
    second derivatives. A layer without a functional form (one with subs) is compared with its plain
    module, from the package `plain()` generates from the shipped specs. A layer with a `@surrogate`
    backward differs from autograd by design: not compared. `name`: the layer's `label` (its name by default)."""
    from layerdsl.testing.function_vs_autograd import compare_second_derivatives, compare_with_functional
    from layerdsl.testing.layer_checks import build, functional_form, inputs

    name = name or shipped_name(case.name)
    if case.surrogate:
        return Comparison(name, 0)
    cases = configured(case)
    comparison = Comparison(name, len(cases))
    functional = functional_form(case, package)
    for c in cases:
        try:
            module = build(c, package)
            reference = functional
            if reference is None:
                if plain is None:
                    raise ValueError("no functional form, and no plain module to compare with")
                reference = as_functional(c, module, build(c, plain()))
            compare_with_functional(c, module, reference, inputs)
            compare_second_derivatives(c, module, reference, inputs)
        except Exception as exc:  # a mismatch (CheckFailed) or a crash of the generated code
            label = c.config.label() if c.config else "example"
            comparison.failures.append(f"[{label}] {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    return comparison


def as_functional(case: Case, module, plain) -> Callable:
    """The plain module `plain` (given the state of `module`, the @function one) as a functional form:
    the inputs, then the layer's own tensors."""
    import torch

    from layerdsl.testing.function_vs_autograd import members

    plain.load_state_dict(module.state_dict())
    plain.train(module.training)
    names = [name for name, _ in members(module, case.layer)]

    def functional(*args):
        xs, members = args[: len(args) - len(names)], args[len(args) - len(names) :]
        given = {k: v for k, v in zip(names, members) if v is not None}
        return torch.func.functional_call(plain, given, tuple(xs))

    return functional


@dataclass
class Derivation:
    """The survey of a specs folder (`survey`), and its derived layers generated as `@function` layers
    into `package` under `work` (`derived_cases`): every spec compiled once, for the comparisons and for
    the tests that read the generated code (`sources`)."""

    specs: Path
    work: Path
    package: str
    coverage: Coverage
    cases: list[Case]

    def sources(self) -> dict[Path, str]:
        """The generated package's Python files, relative to it, and their text."""
        root = self.work / "generated" / self.package
        return {p.relative_to(root): p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.py"))}


def derive(specs: Path, work: Path, package: str = PACKAGE) -> Derivation:
    """The survey of `specs`, and its derived layers generated (under `work`)."""
    coverage = survey(specs, work)
    return Derivation(specs, work, package, coverage, derived_cases(coverage, specs, work, package))


def compare_all(derivation: Derivation) -> list[Comparison]:
    """Every derived layer compared with autograd."""
    from layerdsl.testing.layer_checks import generate_package

    specs, work, package = derivation.specs, derivation.work, derivation.package
    plain: list[str] = []

    def plain_package() -> str:  # generated once, where a layer needs it
        if not plain:
            generate_package([str(specs)], work / "plain", f"{package}_plain")
            plain.append(f"{package}_plain")
        return plain[0]

    namespace = Namespace(layer for _, f in shipped_layers(specs)[1] for layer in f.layers)  # the copies' paths
    return [compare(case, package, plain_package, label(namespace, case.layer)) for case in derivation.cases]


def run(specs: Path, work: Path, package: str = PACKAGE) -> tuple[Coverage, list[Comparison]]:
    """The survey of `specs`, and every derived layer compared with autograd (generated under `work`)."""
    derivation = derive(specs, work, package)
    return derivation.coverage, compare_all(derivation)


# ------------------------------------------------------------------ the page


def render(coverage: Coverage, comparisons: list[Comparison]) -> str:
    """docs/function-coverage.md."""
    compared = {c.layer: c for c in comparisons}
    derived = coverage.derived
    groups = reasons(coverage)
    failing = [c for c in comparisons if c.failures]
    lines = [
        "# `@function` coverage",
        "",
        "Every layer of the shipped specs (`specs/`, `specs/torch_nn/` included), compiled with `@function`",
        "added (a layer that has it, as it is): either its backward is derived, and the generated",
        "autograd.Function is compared with the plain functional form in float64 (outputs, input and parameter",
        "gradients, and second derivatives through a double backward; over the layer's configuration matrix,",
        "for a spec of `torch_nn/` at its example's sizes: its `bool` arguments, training and eval), or the",
        "compiler refuses it, and its diagnostics are listed by reason. Written by",
        "`python -m layerdsl.testing.function_coverage` (do not edit); `tests/test_function_coverage.py` runs",
        "the same comparisons and checks that this page is current.",
        "",
        f"- layers: {len(coverage.layers)}",
        f"- derived under `@function`: {len(derived)} ({len(failing)} differ from autograd)",
        f"- refused: {len(coverage.refusals)}, for {len(groups)} reasons",
        "",
        "## Refused, by reason",
        "",
    ]
    for message, found in groups.items():
        layers = sorted({r.layer for r in found})
        lines += [f"### {message}", ""]
        hints = sorted({r.hint for r in found if r.hint})
        lines += [f"Hint: {hint}" for hint in hints] + ([""] if hints else [])
        lines += [f"{len(layers)} {'layer' if len(layers) == 1 else 'layers'}:", ""]
        lines += ["| layer | where |", "| --- | --- |"]
        for layer in layers:
            where = ", ".join(f"`{r.location}`" for r in found if r.layer == layer)
            lines.append(f"| `{layer}` | {where} |")
        lines.append("")
    lines += [
        "## Derived",
        "",
        "| layer | spec | backward | configurations compared |",
        "| --- | --- | --- | ---: |",
    ]
    for name in derived:
        comparison = compared.get(name)
        backward = "written in the spec" if name in coverage.written_backward else "derived"
        if comparison is not None and comparison.configurations == 0:
            backward += " (`@surrogate`: not compared)"
        count = "" if comparison is None else str(comparison.configurations)
        mark = f" ({len(comparison.failures)} DIFFER)" if comparison is not None and comparison.failures else ""
        lines.append(f"| `{name}` | `{coverage.layers[name]}` | {backward} | {count}{mark} |")
    if failing:
        lines += ["", "## Differences from autograd", ""]
        lines += [f"- `{c.layer}` {failure}" for c in failing for failure in c.failures]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m layerdsl.testing.function_coverage", description=__doc__)
    parser.add_argument("--specs", default="specs", help="the specs folder")
    parser.add_argument("--doc", default=str(DOC), help="the page to write")
    parser.add_argument("--check", action="store_true", help="only say whether the page is current")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        coverage, comparisons = run(Path(options.specs), Path(tmp))
    text = render(coverage, comparisons)
    doc = Path(options.doc)
    status = write_or_check(doc, text, options.check, "python -m layerdsl.testing.function_coverage")
    if status is not None:
        return status
    failing = sum(bool(c.failures) for c in comparisons)
    print(
        f"{doc} written: {len(coverage.derived)} of {len(coverage.layers)} layers derived,"
        f" {len(coverage.refusals)} refused; {failing} differ from autograd"
    )
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
