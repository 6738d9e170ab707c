"""A copied layer's optional members read inside the loop over its copies (`autodiff/loop_members.py`): a
fused projection read through `chunk` and matmul on the side of an `if` that builds it, a split one on
the other side, a bias through `chunk` and `*`, a gate through a call. The loop is planned once per
combination of built and not-built members, chosen at the top of the Function by whether each member is
None. Against the plain module (the spec without `@function`), with each member built and not built:
outputs, first and second derivatives, gradcheck and gradgradcheck in float64."""

from __future__ import annotations

import functools
import re

import pytest
import torch

from layerdsl.autodiff.loop_members import MAX_MEMBER_COMBINATIONS
from layerdsl.autodiff.plan import plan_backwards
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .function_agreement import compare_with_plain
from .support import compile_spec

PROJ = """
layer Proj(d: int, fused: bool = true, bias: bool = true, gated: bool = false, affine: bool = false) {
    param w_in: [3 * d, d] = uniform(-0.5, 0.5) if fused
    param w_q: [d, d] = uniform(-0.5, 0.5) if not fused
    param w_k: [d, d] = uniform(-0.5, 0.5) if not fused
    param b_in: [3 * d] = uniform(-0.5, 0.5) if bias
    param gate: [d] = uniform(-0.5, 0.5) if gated
    param norm_w: [d] = uniform(0.5, 1.5) if affine
    example(d = 4)
    forward(x: [..., d]) -> [..., d] {
        if fused {
            w_a, w_b, w_c = chunk(w_in, 3)
            q = x @ transpose(w_a, 0, 1)
            k = x @ transpose(w_b + w_c, 0, 1)
        } else {
            q = x @ transpose(w_q, 0, 1)
            k = x @ transpose(w_k, 0, 1)
        }
        if bias {
            b_q, b_k, b_v = chunk(b_in, 3)
            q = q + b_q
            k = k + b_k * b_v
        }
        if gated {
            q = q * softplus(gate)
        }
        q = layer_norm(q, [d], norm_w)
        return x + tanh(q) * k
    }
}

@function
layer ProjStack(block: Proj, n: int) {
    sub layers = [copy(block) for i in range(n)]
    example(block = Proj(4), n = 2, D = 4)
    forward(x: [..., D]) -> [..., D] {
        h = x
        for p in layers {
            h = p(h)
        }
        return h
    }
}
"""


@functools.cache
def compiled(text: str, stem: str) -> dict:
    return compile_spec(text, stem)


def built_pair(n: int, **config):
    """The @function ProjStack and the plain one, of `n` copies of Proj(4, **config), with one state."""
    ours, plain = compiled(PROJ, "proj_stack"), compiled(PROJ.replace("@function\n", ""), "proj_stack_plain")
    torch.manual_seed(0)
    a = ours["ProjStack"](ours["Proj"](4, **config), n).double()
    b = plain["ProjStack"](plain["Proj"](4, **config), n).double()
    b.load_state_dict(a.state_dict())
    return a, b


# each member built in some configurations and not in others; two copies
@pytest.mark.parametrize(
    ("fused", "bias", "gated", "affine"),
    [(True, True, True, True), (False, False, False, False), (True, False, True, False), (False, True, False, True)],
)
def test_optional_members_read_through_chunk_matmul_and_a_call_in_the_loop_over_copies(fused, bias, gated, affine):
    n = 2
    a, b = built_pair(n, fused=fused, bias=bias, gated=gated, affine=affine)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


def test_the_loop_runs_once_per_combination_of_built_members_chosen_before_it():
    source = compiled(PROJ, "proj_stack")["SOURCE"]
    function = source[source.index("class ProjStackFunction") : source.index("class ProjStack(")]
    forward = function[: function.index("def setup_context")]
    # the norm's weight, read where it may be none: a loop each with and without it, chosen by `is not None`
    assert "if layers_norm_w is not None:" in forward
    loops = forward.split("for i in range(n):")[1:]
    assert len(loops) == 16  # fused or not, bias, gated, affine: each `if` on arguments out of the loop
    for loop in loops:  # the fused side reads only w_in, the split side only w_q and w_k
        body = loop.split("return ")[0]
        assert ("layers_w_in[i]" in body) != ("layers_w_q[i]" in body)
        assert "is not None" not in body
        assert not re.search(r"if layers_(w_in|w_q|w_k|b_in|gate|norm_w)\b", body)  # no member tested inside
        # a value of parameters alone (the transposes, softplus(gate)) cannot change with the carried h
        checked = set(re.findall(r"if (\w+)\.shape != \w+_steps", body))
        assert checked and not checked & {"tran", "tran4", "soft"}


def plan_problems(text: str) -> list[str]:
    spec = parse_file("members.layer", text)
    check_program([spec])
    _, problems = plan_backwards([spec])
    return [f"{p.span.line}:{p.span.col}: {p.message}" for p in problems]


def many_members(count: int) -> str:
    """A copied layer with `count` optional members, each read as a factor that may be none (`h * g0`)."""
    params = "\n".join(f"    param g{k}: [d] = uniform(0.5, 1.5) if s{k}" for k in range(count))
    flags = ", ".join(f"s{k}: bool = true" for k in range(count))
    reads = "\n".join(f"        h = h * g{k}" for k in range(count))
    return f"""
layer Gates(d: int, {flags}) {{
{params}
    example(d = 3)
    forward(x: [..., d]) -> [..., d] {{
        h = x
{reads}
        return h
    }}
}}

@function
layer GateStack(block: Gates, n: int) {{
    sub layers = [copy(block) for i in range(n)]
    example(block = Gates(3), n = 2, D = 3)
    forward(x: [..., D]) -> [..., D] {{
        h = x
        for g in layers {{
            h = g(h)
        }}
        return h
    }}
}}
"""


def test_more_combinations_of_built_members_than_the_cap_are_refused_at_a_members_read():
    count = MAX_MEMBER_COMBINATIONS.bit_length()  # 2**count combinations: past the cap
    problems = plan_problems(many_members(count))
    assert len(problems) == 1
    assert f"these make more than {MAX_MEMBER_COMBINATIONS}" in problems[0]
    last = 2 + count + 3 + count  # the read of the member that passes the cap: the last, in Gates' forward
    assert problems[0].startswith(f"{last}:17: ") and f"layers_g{count - 1};" in problems[0]
    assert plan_problems(many_members(count - 1)) == []
