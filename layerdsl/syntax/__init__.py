"""The syntax stage: spec text → IR, with syntax errors as located diagnostics.

- `grammar`: the one place the grammar is loaded into Lark (one cached parser per configuration);
- `errors`: syntax errors as spans, messages and hints;
- `builder`: the Lark tree → IR builder;
- `parser`: the entries below, and the text normalisation they share.
"""

from layerdsl.syntax.parser import (
    ParsedFile,
    PartialParse,
    normalize_source,
    parse_expr,
    parse_file,
    parse_partial,
)

__all__ = ["ParsedFile", "PartialParse", "normalize_source", "parse_expr", "parse_file", "parse_partial"]
