"""What several test files share: a spec's text compiled as `layerdsl gen` compiles a file, and run."""

from __future__ import annotations

from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file


def compile_spec(text: str, stem: str = "spec") -> dict:
    """The namespace of the module generated from spec `text` (as file `<stem>.layer`), executed; its source
    under "SOURCE"."""
    spec = parse_file(f"{stem}.layer", text)
    namespace: dict = {}
    source = emit_file(spec, check_program([spec]), f"{stem}.layer", {})
    namespace["SOURCE"] = source
    exec(compile(source, f"{stem}.py", "exec"), namespace)
    return namespace
