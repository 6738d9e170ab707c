"""A block's header too long for the line with a comment after its `:` (the Function's `if mean_steps is not
None:  # None after a loop of no steps`, codegen/function_loops.py, with a longer name) went to black
without the `pass` that makes it parse: black raised and `gen` failed. driver/layout.py gives black a body
after any header, commented or not; black leaves the result unchanged. And a spec whose `if` conditions and
file name are long (each `if` line carrying its `# file.layer:N`) generates black's layout."""

from __future__ import annotations

import os
import subprocess
import sys

import black
import pytest

from layerdsl.driver.layout import format_python

LONG = "the_value_carried_from_one_step_to_the_next_with_a_long_name"


def _black(text: str) -> str:
    return black.format_str(text, mode=black.Mode())


@pytest.mark.parametrize(
    "header",
    [
        f"if {LONG}_steps is not None:  # None after a loop of no steps",
        f"if {LONG}_steps is not None and {LONG}_count > 0:  # None after a loop of no steps",
        f"while {LONG} is not None:  # a comment black cannot move into the block",
        f"for {LONG} in range({LONG}_count):  # a comment black cannot move into the block",
        f"with torch.no_grad({LONG}):  # a comment black cannot move into the block",
    ],
)
@pytest.mark.parametrize("depth", [2, 4])
def test_a_long_block_header_with_a_trailing_comment_is_laid_out(header, depth):
    indent = "    " * depth
    opening = "class A:\n    def f(self, x):\n" + "".join(f"{'    ' * d}if x:\n" for d in range(2, depth))
    text = f"{opening}{indent}{header}\n{indent}    y = 1\n"
    assert len(f"{indent}{header}") > 88
    laid_out = format_python(text)
    assert _black(laid_out) == laid_out
    comment = header[header.index("  # ") + 2 :]
    assert sum(comment in line for line in laid_out.splitlines()) == 1
    assert laid_out.splitlines()[-1] == f"{indent}    y = 1"


LONG_IF_SPEC = """\
layer LongConditions(use_the_first_option_which_has_a_long_name: bool = true,
                     use_the_second_option_which_has_a_long_name_too: bool = false, d: int = 3) {
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        y = x
        if use_the_first_option_which_has_a_long_name and use_the_second_option_which_has_a_long_name_too {
            y = x * 2.0
        } else if use_the_second_option_which_has_a_long_name_too or use_the_first_option_which_has_a_long_name {
            y = x * 3.0
        }
        if use_the_first_option_which_has_a_long_name_too_and_more_and_more_and_more_and_more > 0 {
            y = y + 1.0
        }
        return y
    }
}
"""


def test_a_spec_with_long_if_lines_and_a_long_file_name_generates_blacks_layout(tmp_path):
    spec = tmp_path / "specs" / "a_spec_file_name_long_enough_that_its_comment_fills_much_of_a_line.layer"
    spec.parent.mkdir()
    text = LONG_IF_SPEC.replace(
        "use_the_first_option_which_has_a_long_name_too_and_more_and_more_and_more_and_more > 0",
        "use_the_first_option_which_has_a_long_name",
    )
    spec.write_text(text + "\n@function\n" + text.replace("LongConditions", "LongConditionsFunction"))
    gen = [sys.executable, "-m", "layerdsl", "gen", str(spec.parent), "-o", str(tmp_path / "out")]
    done = subprocess.run(gen, capture_output=True, text=True, env={**os.environ, "LAYERDSL_NO_CACHE": "1"})
    assert done.returncode == 0, done.stderr
    (module,) = (tmp_path / "out").rglob("a_spec_file_name_*.py")
    source = module.read_text()
    assert max(len(line) for line in source.splitlines()) > 88  # the spec comments on lines of their own
    assert _black(source) == source
