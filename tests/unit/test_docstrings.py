"""A spec's docstring is the text as written (LaTeX's `\\frac` is not a form feed), and its generated
literal holds exactly that text whatever it contains."""

from __future__ import annotations

import ast

import pytest

from layerdsl.codegen.module import emit_file, pydoc
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from ..support import compile_spec

HOSTILE = [
    r"Computes $\frac{x}{\sqrt{d}}$ (a form feed if read as an escape).",
    r"Ends with a backslash \\",
    "Ends with one backslash \\",
    'Ends with a quote"',
    'Ends with quotes ""',
    'Holds """ three quotes',
    r'Holds \""" an escaped triple quote',
    "Control \x1b[2J characters \x00 and \u2028 a line separator",
    r"Escapes as text: \n \t \x41 \N{BULLET} \u00e9 \ud800",
    "Line one.\n\n    Indented line two.\n",
    "",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_the_literal_holds_the_text_exactly(text):
    literal = pydoc(text)
    assert ast.literal_eval(literal) == text
    tree = ast.parse(f"class C:\n    {literal}\n")  # one statement: nothing in the text ended it early
    assert len(tree.body) == 1 and len(tree.body[0].body) == 1  # type: ignore[attr-defined]


def test_latex_is_written_raw_as_torch_writes_it_and_hostile_text_escaped():
    assert pydoc(r"$\frac{a}{b}$") == 'r"""$\\frac{a}{b}$"""'
    assert pydoc("plain") == '"""plain"""'
    assert pydoc("ends \\").startswith('"""')  # a raw literal cannot end with a backslash
    assert pydoc('a \\ and """').startswith('"""')


# The spec's text, as a user types it into the .layer file, and the docstring it must give.
WRITTEN = [
    (r"Computes $\frac{x}{2}$ and $\alpha \sum_i x_i$.", r"Computes $\frac{x}{2}$ and $\alpha \sum_i x_i$."),
    (r"Quotes \"\"\" stay escaped \"", r"Quotes \"\"\" stay escaped \""),
    (r"A trailing backslash \\", r"A trailing backslash \\"),
    (r"Not escapes: \n \x41 \N{x}", r"Not escapes: \n \x41 \N{x}"),
]


@pytest.mark.parametrize("written, doc", WRITTEN)
def test_a_docstring_is_the_text_as_written(written, doc):
    text = f'layer Doc() {{\n    """{written}"""\n    example()\n\n    forward(x) {{\n        return x\n    }}\n}}\n'
    assert compile_spec(text)["Doc"].__doc__ == doc


def test_line_breaks_are_read_as_python_reads_them():
    text = 'layer Doc() {\r\n    """One.\r\n\r\n    Two."""\r\n    example()\r\n    forward(x) {\r\n        return x\r\n    }\r\n}\r\n'
    spec = parse_file("doc.layer", text)
    source = emit_file(spec, check_program([spec]), "doc.layer", {})
    assert "\r" not in source and spec.layers[0].docstring == "One.\n\n    Two."
