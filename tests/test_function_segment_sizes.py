"""Sizes of locals the `if`s of a segmented forward bind (`nested_ifs.sizes_by_side`), followed back one
condition at a time along the `if`s they pass (an `and` whose first term is false decides without its
second), not over every combination of every condition: a size seven nested `if`s choose is eight ways,
not 2 ** 7. A size not followed back on every way is a located error, not a statement left reading a local
before forward binds it."""

from __future__ import annotations

import itertools

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .support import compile_spec

FLAGS = "abcdefgpqrst"

DEEP = '''
@function
layer DeepSize(n: int, a: bool = true, b: bool = true, c: bool = true, d: bool = true, e: bool = true,
               f: bool = true, g: bool = true, p: bool = false, q: bool = false, r: bool = false,
               s: bool = false, t: bool = false) {
    """A local whose size seven nested conditions choose, and five more independent `if`s."""
    param w: [n] = ones
    example(n = 4)
    forward(x: [B, n]) -> [B, n] {
        h = x * w
        if a {
            if b {
                if c {
                    if d {
                        if e {
                            if f {
                                if g {
                                    h = reshape(h, [1, B * n])
                                }
                            }
                        }
                    }
                }
            }
        }
        rows = size_at(h, 0)
        y = x * w
        if p {
            y = tanh(y)
        }
        if q {
            y = y * y
        }
        if r {
            y = sigmoid(y)
        }
        if s {
            y = y + x
        }
        if t {
            y = y * w
        }
        return y * rows
    }
}
'''


@pytest.fixture(scope="module")
def deep() -> dict:
    return compile_spec(DEEP, "deep")


@pytest.mark.parametrize("off", [None, "a", "d", "g"])
def test_a_size_seven_conditions_choose_matches_the_plain_form(deep, off):
    torch.manual_seed(0)
    for rest in itertools.product([True, False], repeat=2):
        config = {k: k != off for k in "abcdefg"} | dict(zip("pq", rest))
        layer = deep["DeepSize"](4, **config, dtype=torch.float64)
        x = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
        w = layer.w.detach().requires_grad_()
        got, want = layer(x), deep["deep_size"](x, w, n=4, **config)
        assert torch.allclose(got, want)
        grads = torch.autograd.grad(got.sum(), [x, layer.w])
        expected = torch.autograd.grad(want.sum(), [x, w])
        assert all(torch.allclose(g, e) for g, e in zip(grads, expected))


FLAGGED = "\n".join(f"        if k{i} {{\n            z = z * y\n        }}" for i in range(1, 6))
UNFOLLOWED = f"""
@function
layer Unfollowed(n: int, {", ".join(f"k{i}: bool = false" for i in range(6))}) {{
    example(n = 4)
    forward(x: [..., n], y: [B, n]) -> [B, n] {{
        h = y
        if k0 {{
            h = x + y
        }}
        rows = h.ndim
        z = y * rows
{FLAGGED}
        return z
    }}
}}
"""


def test_a_size_not_followed_on_every_way_is_a_located_error():
    """`x + y` of an `x: [..., n]` has a rank the shapes do not give: the statement reading it is named, not
    left to read `h` before forward binds it."""
    spec = parse_file("unfollowed.layer", UNFOLLOWED)
    check_program([spec])
    _, problems = plan_backwards([spec])
    assert len(problems) == 1
    line = UNFOLLOWED.splitlines().index("        rows = h.ndim") + 1
    assert problems[0].span.line == line and "reads `h.ndim`" in problems[0].message
