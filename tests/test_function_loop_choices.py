"""`if`s on arguments that a loop's body tests more than once (`autodiff/loop_choices.py`): a copied layer
testing `norm_first` three times (once as `not norm_first`), a mask's presence twice (`mask != none`, then
`mask == none`), its activation and a gate once each, in the loop over its copies. Taking the body's `if`s out of the loop, each condition is chosen once and its other
tests decided by that choice: 2 * 2 * 2 * 2 = 16 copies of the loop, not the 2**7 = 128 that counting each
test on its own makes (past the cap of 32: refused before). Against the plain module (the spec without
`@function`) in several configurations, with the mask given and not: outputs, first and second derivatives,
gradcheck and gradgradcheck in float64."""

from __future__ import annotations

import functools

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .function_agreement import compare_with_plain
from .support import compile_spec

BLOCKS = """
layer Block(d: int, norm_first: bool = false, act: str = "relu", gated: bool = false) {
    param w: [d, d] = uniform(-0.5, 0.5)
    param g: [d] = uniform(-0.5, 0.5)
    example(d = 4)
    forward(x: [..., d], mask: [..., d]? = none) -> [..., d] {
        h = x
        if norm_first {
            h = layer_norm(h, [d])
        }
        if mask != none {
            h = h * mask
        }
        a = h @ transpose(w, 0, 1)
        if act == "relu" {
            a = relu(a)
        } else {
            a = tanh(a)
        }
        if gated {
            a = a * sigmoid(g)
        }
        if mask == none {
            a = a * 0.5
        } else {
            a = a + mask
        }
        if not norm_first {
            return layer_norm(x + a, [d])
        }
        return x + a
    }
}

@function
layer BlockStack(block: Block, n: int) {
    sub layers = [copy(block) for i in range(n)]
    example(block = Block(4), n = 2, D = 4)
    forward(x: [..., D], mask: [..., D]? = none) -> [..., D] {
        h = x
        for b in layers {
            h = b(h, mask)
        }
        return h
    }
}
"""


@functools.cache
def compiled(text: str, stem: str) -> dict:
    return compile_spec(text, stem)


def built_pair(n: int, **config):
    """The @function BlockStack and the plain one, of `n` copies of Block(4, **config), with one state."""
    ours, plain = compiled(BLOCKS, "block_stack"), compiled(BLOCKS.replace("@function\n", ""), "block_stack_plain")
    torch.manual_seed(0)
    a = ours["BlockStack"](ours["Block"](4, **config), n).double()
    b = plain["BlockStack"](plain["Block"](4, **config), n).double()
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize(
    ("n", "norm_first", "act", "gated", "masked"),
    [
        (2, False, "relu", False, False),
        (2, True, "tanh", True, True),
        (3, True, "relu", False, True),
        (1, False, "tanh", True, False),
        (2, False, "relu", True, True),
        (0, True, "tanh", False, True),
    ],
)
def test_a_loop_body_testing_conditions_again_derives_and_agrees_with_autograd(n, norm_first, act, gated, masked):
    a, b = built_pair(n, norm_first=norm_first, act=act, gated=gated)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    inputs = [x, torch.rand(3, 4, dtype=torch.float64, requires_grad=True) + 0.5] if masked else [x]
    compare_with_plain(a, b, *inputs)


def test_each_condition_is_chosen_once_outside_the_loop():
    source = compiled(BLOCKS, "block_stack")["SOURCE"]
    function = source[source.index("class BlockStackFunction") : source.index("class BlockStack(")]
    forward = function[: function.index("def setup_context")]
    loops = forward.split("for i in range(n):")[1:]
    assert len(loops) == 16  # norm_first, the mask's presence, act, gated: each chosen once
    for loop in loops:  # no condition tested inside a copy of the loop
        body = loop.split("return ")[0]
        assert "if layers_norm_first" not in body and "is not None" not in body


def plan_problems(text: str) -> list[str]:
    spec = parse_file("blocks.layer", text)
    check_program([spec])
    _, problems = plan_backwards([spec])
    return [p.message for p in problems]


def with_conditions(*flags: str) -> str:
    """BLOCKS with an `if` on each of `flags` (new bool arguments of Block), each tested twice."""
    text = BLOCKS.replace(
        "gated: bool = false)", "gated: bool = false" + "".join(f", {f}: bool = false" for f in flags) + ")"
    )
    tests = "".join(f"        if {f} {{\n            a = a * 2.0\n        }}\n" * 2 for f in flags)
    return text.replace("        if not norm_first {", tests + "        if not norm_first {")


def test_the_copies_are_counted_by_condition_against_the_cap():
    # a fifth condition, tested twice: 32 copies (2**11 counting each test on its own)
    assert plan_problems(with_conditions("p")) == []
    # a comparison of a value with itself picks its side, first in the body too: no copy for the other side
    first = "        h = x\n        if d == d {\n            h = h * 2.0\n        }\n"
    compared = with_conditions("p").replace("        h = x\n", first, 1)
    assert "if d == d" in compared and plan_problems(compared) == []
    # a sixth: 64, past the cap of 32, refused at an `if` in the loop's body
    problems = plan_problems(with_conditions("p", "q"))
    assert len(problems) == 1 and "would make more than 32 copies of the loop" in problems[0]
