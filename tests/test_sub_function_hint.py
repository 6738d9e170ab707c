"""A `@function` layer refused inside one of its subs, where the sub's layer derives on its own: the hint
names that layer (`put @function on Block instead of Stack`), and following it works: the plain stack runs
each copy's Function, and its gradients pass gradcheck and gradgradcheck and equal the plain stack's."""

from __future__ import annotations

import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .support import compile_spec

FLAGS = ["a", "b", "c", "e", "f", "g"]


def _block(function: bool, body_extra: str = "") -> str:
    args = ", ".join(f"{f}: bool = true" for f in FLAGS)
    # `k` read in `if a`'s side and bound after the `if`s: in a loop over copies, whose `if`s are choices per
    # step (`step_choices`), a number bound after a statement that reads it is refused (`loop_ints`)
    nested = {"a": "            h = h * k\n"}
    ifs = "".join(
        f"        if {f} {{\n            h = h * 0.5\n{nested.get(f, '')}        }} else {{\n            h = tanh(h)\n        }}\n"
        for f in FLAGS
    )
    return f"""
{"@function" if function else ""}
layer Block(d: int, {args}) {{
    param w: [d, d]
    example(d = 3)
    forward(x: [..., d]) -> [..., d] {{
        h = x @ transpose(w, 0, 1){body_extra}
        k = 2
{ifs}        k = k + 1
        return x + h * k
    }}
}}
"""


def _stack(function: bool) -> str:
    return f"""
{"@function" if function else ""}
layer Stack(block: Block, n: int) {{
    sub layers = [copy(block) for i in range(n)]
    example(block = Block(3), n = 2, D = 3)
    forward(x: [..., D]) -> [..., D] {{
        h = x
        for blk in layers {{
            h = blk(h)
        }}
        return h
    }}
}}
"""


def _problems(text: str) -> list:
    spec = parse_file("stack.layer", text)
    check_program([spec])
    return plan_backwards([spec])[1]


def test_a_refusal_inside_a_sub_whose_layer_derives_names_that_layer():
    problems = _problems(_block(False) + _stack(True))
    assert problems, "six `if`s on arguments in a loop over copies, a number bound after one reads it, are refused"
    assert all("inlined into 'Stack'" in p.message for p in problems)
    assert any("put @function on Block instead of Stack" in p.hint for p in problems)


def test_no_such_hint_when_the_sub_does_not_derive_either():
    loop = (  # a number bound after the `if` that reads it (`loop_ints`), in Block's own loop
        "\n        n = 0\n        for t in range(size_at(x, 0)) {\n            if t > n {\n"
        "                h = h * 0.5\n            }\n            n = (n + t) % 4\n        }"
    )
    problems = _problems(_block(False, body_extra=loop) + _stack(True))
    assert problems
    assert not any("put @function on" in p.hint for p in problems)


def test_following_the_hint_gives_a_stack_of_functions_equal_to_the_plain_one():
    torch.manual_seed(0)
    ns = compile_spec(_block(True) + _stack(False), stem="stack_fn")
    plain = compile_spec(_block(False) + _stack(False), stem="stack_plain")
    for flags in ({f: True for f in FLAGS}, {f: i % 2 == 0 for i, f in enumerate(FLAGS)}):
        stack = ns["Stack"](ns["Block"](3, **flags, dtype=torch.float64), 3)
        reference = plain["Stack"](plain["Block"](3, **flags, dtype=torch.float64), 3)
        reference.load_state_dict(stack.state_dict())
        x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
        y = stack(x)
        assert "BlockFunction" in type(y.grad_fn).__name__, "each copy runs the Block's Function"
        assert torch.autograd.gradcheck(stack, (x,))
        assert torch.autograd.gradgradcheck(stack, (x,))
        g = torch.randn_like(y)
        (got,) = torch.autograd.grad(y, x, g)
        (want,) = torch.autograd.grad(reference(x), x, g)
        torch.testing.assert_close(got, want)
