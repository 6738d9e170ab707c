"""One reading of half-typed text for every editor feature: strings and comments are not code."""

from __future__ import annotations

from layerdsl.tools.lsp.folding import folding_ranges
from layerdsl.tools.lsp.scanning import depths, open_bracket


def test_brackets_inside_strings_and_comments_do_not_count():
    text = 'layer A() {\n    """a { docstring ("""\n    # a comment {[(\n    let s = "a ) string {"\n    x = f(a, [b'
    assert depths(text) == (1, 2)
    assert open_bracket(text) == ("[", text.rindex("["))


def test_an_unclosed_one_line_string_ends_at_its_line():
    text = 'layer A() {\n    let s = "unclosed\n    x = f(a, '
    assert open_bracket(text) == ("(", text.rindex("("))


def test_a_brace_closes_every_open_bracket():
    assert open_bracket("f(a, [b\n}") is None


def test_folding_skips_brackets_in_strings_and_folds_docstrings():
    text = 'layer A() {\n    """one\n    two {\n    """\n    x = 1\n}\n'
    ranges = {(r.start_line, r.end_line, r.kind) for r in folding_ranges(text)}
    assert (0, 4, None) in ranges  # the layer's braces; the `{` in the docstring opened nothing
    assert any(r[:2] == (1, 3) for r in ranges)  # the docstring
