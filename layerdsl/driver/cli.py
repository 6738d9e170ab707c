"""The `layerdsl` command: gen, check, show, test, fmt and lsp.

Exit codes follow black's: 0 success (for `--check`: nothing to do); 1 spec errors, failed checks, files
that `--check` finds stale or unformatted, or a file that cannot be read or written; 2 usage errors;
123 an internal error, a bug in layerdsl (printed with its traceback). Output piped into a reader that stops
early (`layerdsl fmt --diff specs | head -1`) ends the command quietly with 141, as a Unix tool killed by
SIGPIPE ends (128 + 13): a pipeline under `set -o pipefail` sees it as it sees `yes | head -1`.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from layerdsl import __version__
from layerdsl.deep_stack import on_deep_stack
from layerdsl.diagnostics import SpecError, printable

if TYPE_CHECKING:
    from layerdsl.driver.output import Plan

T = TypeVar("T")

EXIT_OK = 0
EXIT_ERRORS = 1
EXIT_USAGE = 2
EXIT_INTERNAL_ERROR = 123
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `cat` writing into a closed pipe

EXIT_CODES_HELP = (
    "exit codes: 0 success or nothing to do; 1 spec errors, failed checks, stale or unformatted files "
    "(--check) or a file that cannot be read or written; 2 usage errors; 123 internal error; 141 the output's "
    "reader stopped reading (a closed pipe, as `| head` closes it)"
)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.run is cmd_lsp:  # it puts itself on a deep stack (`tools.lsp.server.serve`) and closes stdout
        return _run(args)
    return _on_deep_stack(lambda: _piped(args))


def _piped(args: argparse.Namespace) -> int:
    try:
        code = _run(args)
        sys.stdout.flush()  # here, not at exit: a closed pipe is found while it can still be handled
        return code
    except BrokenPipeError:  # the reader stopped reading (`| head -1`): no message, nothing more written
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE


def _on_deep_stack(run: Callable[[], int]) -> int:
    """`run()` on a thread with a deep stack (`layerdsl.deep_stack`): a flat chain of operators is a tree as
    deep as it is long, and the passes after parsing recurse over it."""
    try:
        return on_deep_stack(run)
    except KeyboardInterrupt:  # delivered to the main thread
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    try:
        return args.run(args)
    except BrokenPipeError:  # an OSError, but no failure of the command's: `main` ends it quietly
        raise
    except SpecError as exc:
        _report(exc)
        return EXIT_ERRORS
    except FileNotFoundError as exc:  # a path given on the command line
        missing = exc.filename or (exc.args[0] if exc.args else exc)
        print(f"layerdsl: no such file or folder: {printable(str(missing))}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # the machine's doing, not a bug: unreadable spec, read-only output folder, full disk
        print(f"layerdsl: {printable(str(exc))}", file=sys.stderr)
        return EXIT_ERRORS
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        _report_internal_error(exc)
        return EXIT_INTERNAL_ERROR


def _stdout_to_devnull() -> None:
    """Standard output pointed at os.devnull, so that what is left in its buffer, flushed at exit, goes
    nowhere rather than raising BrokenPipeError again (the recipe of Python's `signal` docs)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="layerdsl", description="Generate PyTorch layers from .layer specs.", epilog=EXIT_CODES_HELP
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("gen", help="generate Python modules from specs")
    gen.add_argument("paths", nargs="+", metavar="PATH", help="spec files or folders of them")
    gen.add_argument("-o", "--out", required=True, help="output folder (a Python package)")
    gen.add_argument(
        "--check", action="store_true", help="write nothing; list stale, missing or obsolete files, exit 1 if any"
    )
    gen.add_argument("--force", action="store_true", help="overwrite or remove generated files edited by hand")
    gen.set_defaults(run=cmd_gen)

    check = sub.add_parser("check", help="report spec errors only")
    check.add_argument("paths", nargs="+", metavar="PATH")
    check.set_defaults(run=cmd_check)

    show = sub.add_parser("show", help="print the generated Python for a spec")
    show.add_argument("spec", metavar="SPEC")
    show.add_argument("--layer", help="only this layer's code")
    show.add_argument("--shapes", action="store_true", help="each forward statement with its inferred shape")
    show.set_defaults(run=cmd_show)

    test = sub.add_parser("test", help="generate into a temporary folder and run the checks of the test suite")
    test.add_argument("paths", nargs="+", metavar="PATH")
    test.add_argument("--device", choices=["cpu", "cuda", "all"], default="cpu")
    test.add_argument(
        "--example-only", action="store_true", help="check only the example's configuration, not the matrix"
    )
    test.set_defaults(run=cmd_test)

    fmt = sub.add_parser("fmt", help="format specs in the canonical layout")
    fmt.add_argument("paths", nargs="+", metavar="PATH")
    fmt.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file would change")
    fmt.add_argument("--diff", action="store_true", help="print a diff instead of writing")
    fmt.set_defaults(run=cmd_fmt)

    lsp = sub.add_parser("lsp", help="run the language server on stdio")
    # Clients append their transport flag (vscode-languageclient: `--stdio`); stdio is the only one served.
    lsp.add_argument("--stdio", action="store_true", help="speak LSP on stdin/stdout (the default and only transport)")
    for flag in ("--tcp", "--port", "--socket", "--pipe", "--node-ipc"):
        lsp.add_argument(flag, nargs="?", action=_StdioOnly, help=argparse.SUPPRESS)
    lsp.set_defaults(run=cmd_lsp)
    return p


class _StdioOnly(argparse.Action):
    """A transport flag other than --stdio: a usage error that says what is served instead."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{option_string} is not supported: the server speaks LSP over stdio only (use --stdio or no flag)"
        )


def _report(exc: SpecError) -> None:
    for d in exc.diagnostics:
        print(d.render(), file=sys.stderr)
    n = len(exc.diagnostics)
    print(f"{n} error{'s' if n != 1 else ''}", file=sys.stderr)


def _report_internal_error(exc: Exception) -> None:
    traceback.print_exception(exc, file=sys.stderr)
    print(
        f"layerdsl: internal error: {type(exc).__name__}: {exc}\n"
        "This is a bug in layerdsl; please report it with the traceback above.",
        file=sys.stderr,
    )


def cmd_gen(args: argparse.Namespace) -> int:
    from layerdsl.driver.output import NotAFolder, RefusedOverwrite, apply, clean_temporaries, locked, plan
    from layerdsl.driver.pipeline import generate

    outputs = generate(args.paths)
    out_dir = Path(args.out)
    try:
        if args.check:  # writes nothing, so needs no lock; an edited file is listed as stale
            return _report_check(plan(out_dir, outputs, force=True))
        with locked(out_dir):
            clean_temporaries(out_dir)
            todo = plan(out_dir, outputs, force=args.force)
            apply(todo)
    except NotAFolder:
        print(f"layerdsl: the output path is not a folder: {printable(str(out_dir))}", file=sys.stderr)
        return EXIT_ERRORS
    except RefusedOverwrite as exc:
        for path, why in exc.refusals:
            print(f"layerdsl: refusing to overwrite {printable(str(path))}: {why}", file=sys.stderr)
        return EXIT_ERRORS
    print(
        f"layerdsl: {len(todo.write)} written, {todo.unchanged} unchanged, {len(todo.remove)} removed "
        f"in {printable(str(out_dir))}"
    )
    return EXIT_OK


def _report_check(todo: Plan) -> int:
    for path in todo.write:
        print(f"{'stale' if path.exists() else 'missing'}: {printable(str(path))}")
    for path in todo.remove:
        print(f"obsolete: {printable(str(path))}")
    return EXIT_ERRORS if todo.write or todo.remove else EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from layerdsl.driver.pipeline import check

    _, files, _ = check(args.paths)
    n = sum(len(f.layers) for f in files)
    print(f"layerdsl: {n} layer{'s' if n != 1 else ''} in {len(files)} file{'s' if len(files) != 1 else ''}: no errors")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from layerdsl.driver.pipeline import generate

    spec = Path(args.spec)
    if spec.is_dir():
        print(f"layerdsl: show takes one spec file, not a folder: {spec}", file=sys.stderr)
        return EXIT_USAGE
    if args.shapes:
        from layerdsl.driver.pipeline import check
        from layerdsl.driver.show import shapes_listing

        _, files, program = _with_its_folder(spec, check)
        shown = (spec.name, f"{spec.parent.resolve().name}/{spec.name}")  # alone, or in its folder's run
        files = [f for f in files if f.path in shown]
        listing = shapes_listing(files, program, args.layer)
        if listing is None:
            print(f"layerdsl: no layer '{args.layer}' in {spec}", file=sys.stderr)
            return EXIT_USAGE
        sys.stdout.write(listing)
        return EXIT_OK
    outputs = _with_its_folder(spec, generate)
    code = outputs[Path(spec.name).with_suffix(".py")]
    if args.layer:
        from layerdsl.driver.show import select_layer

        picked = select_layer(code, args.layer)
        if picked is None:
            print(f"layerdsl: no layer '{args.layer}' in {spec}", file=sys.stderr)
            return EXIT_USAGE
        code = picked
    sys.stdout.write(code)
    return EXIT_OK


def _with_its_folder(spec: Path, run: Callable[[list[str]], T]) -> T:
    """`run` on the spec alone, or, where it names a layer that another spec defines, on the spec's folder
    (as `gen` of that folder sees it: the spec's module keeps its name)."""
    try:
        return run([str(spec)])
    except SpecError as exc:
        if not any(d.message.startswith("unknown layer ") for d in exc.diagnostics):
            raise
    try:
        return run([str(spec.parent)])
    except SpecError as exc:  # the spec's own errors, if it has any; else what stops its folder
        own = [d for d in exc.diagnostics if d.path == f"{spec.parent.resolve().name}/{spec.name}"]
        raise SpecError(own or exc.diagnostics) from None


def cmd_test(args: argparse.Namespace) -> int:
    from layerdsl.testing.layer_checks import run_cli

    return run_cli(args.paths, args.device, matrix=not args.example_only)


def cmd_fmt(args: argparse.Namespace) -> int:
    from layerdsl.tools.fmt.formatter import run_cli

    return run_cli(args.paths, check=args.check, diff=args.diff)


def cmd_lsp(args: argparse.Namespace) -> int:
    from layerdsl.tools.lsp.server import serve

    serve()
    return EXIT_OK
