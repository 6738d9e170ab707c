"""The whole pipeline for one run: find specs, parse, check, plan the backwards, emit, format with black.

Nothing here touches the output folder; `writer` decides what to write.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from layerdsl.autodiff.plan import BackwardPlan, plan_backwards
from layerdsl.codegen.module import emit_file, emit_package_init
from layerdsl.diagnostics import Diagnostic, Span, SpecError
from layerdsl.driver.output import Unreadable, read_spec, stamp
from layerdsl.ir import nodes as N
from layerdsl.semantics.checker import Program, check_program
from layerdsl.syntax.parser import MAX_SOURCE_CHARS, parse_file


@dataclass
class Source:
    file: Path  # on disk
    shown: str  # in diagnostics and headers: the root folder's name and the path below it
    out: Path  # the generated module, relative to the output folder


def find_sources(paths: list[str]) -> list[Source]:
    sources = []
    for p in paths:
        root = Path(p)
        if root.is_dir():
            for f in sorted(root.rglob("*.layer")):
                rel = f.relative_to(root)
                sources.append(Source(f, (Path(root.resolve().name) / rel).as_posix(), rel.with_suffix(".py")))
        elif root.exists():  # a device or FIFO too: reading it is refused with a located error
            sources.append(Source(root, root.name, Path(root.name).with_suffix(".py")))
        else:
            raise FileNotFoundError(p)
    return sources


def load(sources: list[Source]) -> tuple[list[N.SpecFile], list[Diagnostic]]:
    """Parse every source, collecting the diagnostics of all of them."""
    files: list[N.SpecFile] = []
    problems: list[Diagnostic] = []
    for src in sources:
        try:
            text = read_spec(src.file, MAX_SOURCE_CHARS)
        except UnicodeDecodeError as exc:
            problems.append(Diagnostic(src.shown, Span.point(1, 1), f"not UTF-8 text: {exc.reason}"))
            continue
        except Unreadable as exc:
            problems.append(Diagnostic(src.shown, Span.point(1, 1), str(exc)))
            continue
        except OSError as exc:  # unreadable (permissions, a dangling link): reported with the rest
            problems.append(Diagnostic(src.shown, Span.point(1, 1), f"cannot read this file: {exc.strerror or exc}"))
            continue
        for part in src.out.with_suffix("").parts:
            if not part.isidentifier():
                problems.append(
                    Diagnostic(
                        src.shown,
                        Span.point(1, 1),
                        f"'{part}' cannot be a Python module name",
                        "name spec files and folders like Python modules: letters, digits, '_'",
                        source=None,
                    )
                )
        try:
            parsed = parse_file(src.shown, text)
        except SpecError as exc:
            problems.extend(exc.diagnostics)
            continue
        if not parsed.layers and not parsed.problems:
            problems.append(
                Diagnostic(
                    src.shown,
                    Span.point(1, 1),
                    "this file defines no layer",
                    "add `layer Name(...) { ... }`, or remove the file",
                    source=text,
                )
            )
        files.append(parsed)
    return files, problems


def check(paths: list[str]) -> tuple[list[Source], list[N.SpecFile], Program]:
    """Parse and check every spec and plan every `@function` layer's backward, without emitting; raises
    SpecError with every problem found."""
    sources, files, program, _ = _checked(paths)
    return sources, files, program


def _checked(paths: list[str]) -> tuple[list[Source], list[N.SpecFile], Program, dict[str, BackwardPlan]]:
    sources = find_sources(paths)
    files, problems = load(sources)
    try:
        program = check_program(files)
    except SpecError as exc:
        raise SpecError(problems + exc.diagnostics) from None
    if problems:
        raise SpecError(problems)
    plans, problems = plan_backwards(files)
    if problems:
        raise SpecError(problems)
    return sources, files, program, plans


def generate(paths: list[str]) -> dict[Path, str]:
    """Every generated file (relative to the output folder) and its black-formatted content."""
    sources, files, program, plans = _checked(paths)
    outputs = emit_modules(sources, files, program, plans)
    outputs.update(_package_inits(sources, files, paths))
    return {path: stamp(format_python(text)) for path, text in sorted(outputs.items())}


def emit_modules(
    sources: list[Source],
    files: list[N.SpecFile],
    program: Program,
    plans: dict[str, BackwardPlan],
) -> dict[Path, str]:
    """Each spec's module source (before black)."""
    module_of: dict[str, tuple[str, ...]] = {}  # layer name -> module path parts
    for src, f in zip(sources, files):
        for layer in f.layers:
            module_of[layer.name] = src.out.with_suffix("").parts
    outputs: dict[Path, str] = {}
    for src, f in zip(sources, files):
        here = src.out.with_suffix("").parts
        imports = {name: relative_import(here, parts) for name, parts in module_of.items() if parts != here}
        outputs[src.out] = emit_file(f, program, src.shown, imports, plans)
    return outputs


def relative_import(here: tuple[str, ...], target: tuple[str, ...]) -> str:
    """The relative module path from the module `here` to the module `target` (path parts, no suffix):
    `("a", "b")` → `("a", "c")` is `.c`."""
    package = here[:-1]
    common = 0
    while common < len(package) and common < len(target) - 1 and package[common] == target[common]:
        common += 1
    return "." * (len(package) - common + 1) + ".".join(target[common:])


def _package_inits(sources: list[Source], files: list[N.SpecFile], paths: list[str]) -> dict[Path, str]:
    packages: dict[Path, list[tuple[str, list[str]]]] = {}
    for src, f in zip(sources, files):
        names = [layer.name for layer in f.layers]
        module = src.out.with_suffix("")
        for depth in range(len(module.parts)):
            pkg = Path(*module.parts[:depth])
            packages.setdefault(pkg, []).append((".".join(module.parts[depth:]), names))
    shown = Path(paths[0]).resolve().name + "/" if len(paths) == 1 and Path(paths[0]).is_dir() else "the specs"
    return {pkg / "__init__.py": emit_package_init(sorted(mods), shown) for pkg, mods in packages.items()}


def format_python(text: str) -> str:
    """black's formatting of `text`, remembered by content hash (black dominates `gen`'s run time)."""
    key = hashlib.sha256(text.encode()).hexdigest()
    cached = _cache_dir() / key[:2] / key
    try:
        return cached.read_text(encoding="utf-8")
    except OSError:
        pass
    import black  # imported here: `layerdsl check` and a warm `gen` never need it

    formatted = black.format_str(text, mode=black.Mode())
    try:
        from layerdsl.driver.output import write_atomic

        write_atomic(cached, formatted)
    except OSError:
        pass  # a read-only or missing cache only costs time
    return formatted


@functools.cache
def _cache_dir() -> Path:
    from importlib.metadata import version

    base = os.environ.get("LAYERDSL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "layerdsl"
    )
    return Path(base) / f"black-{version('black')}"
