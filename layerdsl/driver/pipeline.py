"""The whole pipeline for one run: find specs, parse, check, plan the backwards, emit, lay out as black does.

Nothing here touches the output folder; `writer` decides what to write.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from layerdsl.deep_stack import on_deep_stack
from layerdsl.diagnostics import Diagnostic, Span, SpecError
from layerdsl.driver.cache import OutputCache, key, text_hash, tool_fingerprint
from layerdsl.driver.output import READ_LIMIT, Unreadable, read_spec, stamp

# The stages are imported where they are used: a `gen` whose outputs are all cached loads none of them.
if TYPE_CHECKING:
    from layerdsl.autodiff.plan import Plan
    from layerdsl.ir import nodes as N
    from layerdsl.semantics.checker import Program


@dataclass
class Source:
    file: Path  # on disk
    shown: str  # in diagnostics and headers: the root folder's name and the path below it
    out: Path  # the generated module, relative to the output folder


def find_sources(paths: list[str]) -> list[Source]:
    """The specs of `paths` (files, and folders searched for `*.layer`); a file given twice (`specs
    specs/a.layer`, as a pre-commit hook may pass) is read once, as first given."""
    sources: list[Source] = []
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
    unique: dict[str, Source] = {}
    for src in sources:  # by the path as written, made absolute (a link to a spec is a spec of its own)
        unique.setdefault(os.path.abspath(src.file), src)
    return list(unique.values())


def read_texts(sources: list[Source]) -> tuple[list[str | None], list[Diagnostic]]:
    """Each source's text (None where it cannot be read), and a located problem for each unreadable one."""
    texts: list[str | None] = []
    problems: list[Diagnostic] = []
    for src in sources:
        text = None
        try:
            text = read_spec(src.file, READ_LIMIT)
        except UnicodeDecodeError as exc:
            problems.append(Diagnostic(src.shown, Span.point(1, 1), f"not UTF-8 text: {exc.reason}"))
        except Unreadable as exc:
            problems.append(Diagnostic(src.shown, Span.point(1, 1), str(exc)))
        except OSError as exc:  # unreadable (permissions, a dangling link): reported with the rest
            problems.append(Diagnostic(src.shown, Span.point(1, 1), f"cannot read this file: {exc.strerror or exc}"))
        texts.append(text)
    return texts, problems


def load(sources: list[Source], texts: list[str | None] | None = None) -> tuple[list[N.SpecFile], list[Diagnostic]]:
    """Parse every source (its text read here unless given), collecting the diagnostics of all of them,
    in the sources' order. Many files are parsed in forked worker processes too (`_parse_all`)."""
    files: list[N.SpecFile] = []
    problems: list[Diagnostic] = []
    if texts is None:
        texts, problems = read_texts(sources)
    readable = [(src, text) for src, text in zip(sources, texts) if text is not None]
    for parsed, found in _parse_all(readable):
        problems.extend(found)
        if parsed is not None:
            files.append(parsed)
    return files, problems


def parse_source(src: Source, text: str) -> tuple[N.SpecFile | None, list[Diagnostic]]:
    """One source's IR (None on a syntax error) and its problems."""
    from layerdsl.syntax.parser import parse_file

    problems = []
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
        return None, problems + exc.diagnostics
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
    return parsed, problems


MIN_FILES_PER_PARSER = 48  # below this, a parsing worker's fork and pickled results cost more than it saves
# The main process parses a share of the files while it unpickles what the workers send back (about 0.7 ms
# a file, against 2.4 ms to parse one): this share balances the two on two cores.
MAIN_PARSE_SHARE = 0.9
_PARSE_JOBS: list[tuple[Source, str]] = []  # what forked workers parse (inherited, not pickled)


def _parse_all(jobs: list[tuple[Source, str]]) -> list[tuple[N.SpecFile | None, list[Diagnostic]]]:
    """`parse_source` of each job, in order: the first part of the list in forked worker processes when there
    are enough files and cores (`LAYERDSL_JOBS`, as for emission), the rest here meanwhile. The files are
    independent until `check_program` resolves layer names across them; the IR travels back pickled."""
    processes = min(_cores(), len(jobs) // MIN_FILES_PER_PARSER)
    if processes < 2:
        return [parse_source(src, text) for src, text in jobs]
    import multiprocessing

    global _PARSE_JOBS
    first = [parse_source(*jobs[0])]  # loads the parser before the fork, so that no worker loads it again
    here = int(len(jobs) * MAIN_PARSE_SHARE / processes)
    split = len(jobs) - here
    workers = processes - 1
    _PARSE_JOBS = jobs
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            sent = pool.map_async(_parse_job, range(1, split), chunksize=max(1, split // (workers * 8)))
            mine = [parse_source(src, text) for src, text in jobs[split:]]
            return first + sent.get() + mine
    finally:
        _PARSE_JOBS = []


def _parse_job(index: int) -> tuple[N.SpecFile | None, list[Diagnostic]]:
    return parse_source(*_PARSE_JOBS[index])


def check(paths: list[str]) -> tuple[list[Source], list[N.SpecFile], Program]:
    """Parse and check every spec and plan every `@function` layer's backward, without emitting; raises
    SpecError with every problem found."""
    sources, files, program, _ = _checked(paths)
    return sources, files, program


def _checked(
    paths: list[str],
    sources: list[Source] | None = None,
    texts: list[str | None] | None = None,
    unreadable: list[Diagnostic] | None = None,
) -> tuple[list[Source], list[N.SpecFile], Program, dict[str, Plan]]:
    """`texts` (read by `read_texts`, with its `unreadable` problems) when the caller has them already."""
    from layerdsl.autodiff.plan import plan_backwards
    from layerdsl.semantics.checker import check_program

    if sources is None:
        sources = find_sources(paths)
    files, problems = load(sources, texts)
    problems = (unreadable or []) + problems
    try:
        program = check_program(files)
    except SpecError as exc:
        failed = {d.path for d in problems + exc.diagnostics}  # the other files' derivations are reported too
        _, underivable = plan_backwards([f for f in files if f.path not in failed])
        raise SpecError(problems + exc.diagnostics + underivable) from None
    if problems:
        raise SpecError(problems)
    plans, problems = plan_backwards(files)
    if problems:
        raise SpecError(problems)
    return sources, files, program, plans


def generate(paths: list[str], cache: OutputCache | None = None) -> dict[Path, str]:
    """Every generated file (relative to the output folder) and its formatted content. Whole files come
    from `cache` (the user's, by default) where their inputs are unchanged (driver/cache.py). A layer's
    subs are inlined once, for its plan, and reused by its emitter (`autodiff.inline_cache`). Runs on a
    deep stack (`layerdsl.deep_stack`): the passes recurse as deep as a chain of operators is long."""
    from layerdsl.autodiff.inline_cache import reused_inlining

    def run() -> dict[Path, str]:
        with reused_inlining():
            return _generated(paths, cache)

    return on_deep_stack(run)


def _generated(paths: list[str], cache: OutputCache | None) -> dict[Path, str]:
    if cache is None:
        cache = OutputCache.default()
    sources = find_sources(paths)
    texts, unreadable = read_texts(sources)
    package = _package_name(paths)
    run = None
    if not unreadable:
        run = key(
            "run",
            package,
            tool_fingerprint(),
            [f"{src.shown}\0{src.out.as_posix()}\0{text_hash(text or '')}" for src, text in zip(sources, texts)],
        )
        outputs = cache.load_run(run)
        if outputs is not None:
            return outputs
    sources, files, program, plans = _checked(paths, sources, texts, unreadable)
    definers = _definers(sources, texts, files)
    entries: dict[Path, str] = {}
    outputs = {}
    misses: list[tuple[Path, str, Callable[[], str]]] = []
    for src, text, emit in zip(sources, texts, _lazy_modules(sources, files, program, plans, texts)):
        seen = program.seen_from(src.shown).layers
        entry = key(
            "module",
            tool_fingerprint(),
            src.shown,
            src.out.as_posix(),
            text or "",
            _dependencies(src, text, definers, seen),
        )
        entries[src.out] = entry
        cached = cache.get(entry)
        if cached is None:
            misses.append((src.out, entry, emit))
        else:
            outputs[src.out] = cached
    for (path, entry, _), final in zip(misses, _finish_all([emit for _, _, emit in misses])):
        _compiles(path, final)
        cache.put(entry, final)
        outputs[path] = final
    for path, init in _package_inits(sources, files, paths).items():
        entry = key("init", tool_fingerprint(), init)
        final = cache.get(entry) or _finished(init)
        cache.put(entry, final)
        outputs[path] = final
        entries[path] = entry
    if run is not None:
        cache.save_run(run, entries)
    return dict(sorted(outputs.items()))


def _compiles(path: Path, text: str) -> None:
    """Raise where the generated module `text` is not Python (a layerdsl bug: a duplicate parameter, ...),
    rather than write a package that fails when imported; black's layout does not see every such error."""
    try:
        compile(text, path.as_posix(), "exec", dont_inherit=True)
    except SyntaxError as e:
        raise RuntimeError(f"the module generated as {path.as_posix()} does not compile: {e}") from e


def _finished(text: str) -> str:
    """`text` laid out and stamped with its hash."""
    return stamp(format_python(text))


MIN_JOBS_PER_WORKER = 8  # below this, forking a worker costs more than it saves
_JOBS: list[Callable[[], str]] = []  # what forked workers emit (inherited, not pickled: closures over the Program)


def _finish_all(jobs: list[Callable[[], str]]) -> list[str]:
    """Each job's module, emitted and laid out: in forked worker processes when there are enough jobs and
    cores (`LAYERDSL_JOBS` sets the number of processes; 1 emits here). Workers inherit the checked program,
    so only the finished texts travel back."""
    workers = min(_cores(), len(jobs) // MIN_JOBS_PER_WORKER)
    if workers < 2:
        return [_finished(job()) for job in jobs]
    import multiprocessing

    global _JOBS
    _JOBS = jobs
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return pool.map(_finish_job, range(len(jobs)), chunksize=max(1, len(jobs) // (workers * 8)))
    finally:
        _JOBS = []


def _finish_job(index: int) -> str:
    return _finished(_JOBS[index]())


def _cores() -> int:
    """How many processes `gen` may use: `LAYERDSL_JOBS`, else the cores this process may run on (1 where
    processes cannot be forked safely)."""
    if os.environ.get("LAYERDSL_JOBS", "").isdigit():
        return max(1, int(os.environ["LAYERDSL_JOBS"]))
    if not hasattr(os, "fork") or "torch" in sys.modules:
        return 1  # no fork, or a process with torch's thread pools (`layerdsl test`), which fork does not copy
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _lazy_modules(
    sources: list[Source],
    files: list[N.SpecFile],
    program: Program,
    plans: dict[str, Plan],
    texts: list[str | None] | None = None,
) -> list[Callable[[], str]]:
    """For each source, a function that emits its module (called only on a cache miss). With the specs'
    `texts`, a module is told the import paths of only the layers its text names (the ones it can use),
    not of every layer of the program (quadratic in the number of files). A name means the layer its
    spec's folder sees (`Program.seen_from`)."""
    from layerdsl.codegen.module import emit_file

    module_of: dict[int, tuple[str, ...]] = {}  # id(layer) -> module path parts
    for src, f in zip(sources, files):
        for layer in f.layers:
            module_of[id(layer)] = src.out.with_suffix("").parts

    def emitter(src: Source, f: N.SpecFile, text: str | None) -> Callable[[], str]:
        here = src.out.with_suffix("").parts
        seen = program.seen_from(f.path).layers
        names = seen.keys() if text is None else seen.keys() & set(_WORD.findall(text))
        found = {name: module_of[id(seen[name])] for name in names if id(seen[name]) in module_of}
        imports = {name: relative_import(here, there) for name, there in found.items() if there != here}
        return lambda: emit_file(f, program, src.shown, imports, plans)

    return [emitter(src, f, t) for src, f, t in zip(sources, files, texts or [None] * len(files))]


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _definers(sources: list[Source], texts: list[str | None], files: list[N.SpecFile]) -> dict[int, tuple[Source, str]]:
    """id(layer) -> the source defining it, and how a module using it depends on that source."""
    found = {}
    for src, text, f in zip(sources, texts, files):
        for layer in f.layers:
            found[id(layer)] = (src, f"{layer.name}\0{src.out.as_posix()}\0{text_hash(text or '')}")
    return found


def _dependencies(
    src: Source, text: str | None, definers: dict[int, tuple[Source, str]], seen: dict[str, N.Layer]
) -> list[str]:
    """What a module's code depends on besides its own spec: each other spec defining a layer whose name
    occurs in this spec's text and that its folder sees by that name (`seen`): its module path and text.
    A nearer spec defining the name later is another dependency, so the module is emitted again."""
    words = set(_WORD.findall(text or "")) & seen.keys()
    found = (definers.get(id(seen[word])) for word in words)
    return sorted(dep for other, dep in filter(None, found) if other is not src)


def emit_modules(
    sources: list[Source],
    files: list[N.SpecFile],
    program: Program,
    plans: dict[str, Plan],
) -> dict[Path, str]:
    """Each spec's module source (before formatting)."""
    return {src.out: emit() for src, emit in zip(sources, _lazy_modules(sources, files, program, plans))}


def relative_import(here: tuple[str, ...], target: tuple[str, ...]) -> str:
    """The relative module path from the module `here` to the module `target` (path parts, no suffix):
    `("a", "b")` → `("a", "c")` is `.c`."""
    package = here[:-1]
    common = 0
    while common < len(package) and common < len(target) - 1 and package[common] == target[common]:
        common += 1
    return "." * (len(package) - common + 1) + ".".join(target[common:])


def _package_inits(sources: list[Source], files: list[N.SpecFile], paths: list[str]) -> dict[Path, str]:
    """Each package's `__init__`, re-exporting the layers of its folder and the folders below it. A name
    defined in several of them is re-exported as a spec in the package's folder sees it (its own folder's
    layer first, then the nearest folder's); one that is ambiguous there is left to its modules."""
    from layerdsl.codegen.module import emit_package_init
    from layerdsl.semantics.scopes import folder_distance

    modules = [(src.out.with_suffix("").parts, [layer.name for layer in f.layers]) for src, f in zip(sources, files)]
    below: dict[tuple[str, ...], dict[str, list[tuple[str, ...]]]] = {}  # package -> name -> modules defining it
    for module, names in modules:
        for depth in range(len(module)):
            for name in names:
                below.setdefault(module[:depth], {}).setdefault(name, []).append(module)
    shown = _package_name(paths)
    inits = {}
    for pkg, defined in below.items():
        chosen = {}  # name -> the module the package re-exports it from
        for name, definers in defined.items():
            ranked = sorted((folder_distance(pkg, module[:-1]), module) for module in definers)
            if len(ranked) == 1 or ranked[1][0] != ranked[0][0]:
                chosen[name] = ranked[0][1]
        mods = []
        for module, names in modules:
            exported = [name for name in names if chosen.get(name) == module]
            if module[: len(pkg)] == pkg and exported:
                mods.append((".".join(module[len(pkg) :]), exported))
        inits[Path(*pkg) / "__init__.py"] = emit_package_init(sorted(mods), shown)
    return inits


def _package_name(paths: list[str]) -> str:
    """How the package `__init__`s name the specs: the folder's name, or "the specs"."""
    return Path(paths[0]).resolve().name + "/" if len(paths) == 1 and Path(paths[0]).is_dir() else "the specs"


def format_python(text: str) -> str:
    """The emitted `text` laid out as black formats it (driver/layout.py: black runs only on the lines that
    need it)."""
    from layerdsl.driver.layout import format_python as layout

    return layout(text)
