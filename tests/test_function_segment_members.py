"""A segmented forward (more `if` combinations than `plan.MAX_BRANCH_PLANS`, each `if` a
`autodiff.loops.Choice`) that reads optional members, as MultiheadAttention does: a member read only on
the side of an `if` that proves it built (`if joint { ... chunk(w, 2) ... }` of `param w: ... if joint`,
`if not joint` of `... if not joint`) is read there, without a Function per member; a member read
elsewhere (`+ ob` at the end) makes that statement an `if` on the member's condition, with it and without
it (not the whole forward a side each). An `if` on a size forward measures (`x.ndim == 3`) is a segment too. The
Function against the plain module in float64: outputs, gradients, gradcheck and gradgradcheck."""

from __future__ import annotations

import pytest
import torch

from layerdsl.autodiff.loops import Choice, LoopPlan
from layerdsl.autodiff.plan import plan_backwards
from layerdsl.ir.printer import spec_text
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .function_agreement import compare_with_plain
from .support import compile_spec

SPEC = '''
{function}
layer ProvenMembers(n: int, joint: bool = true, bias: bool = true, a: bool = true, b: bool = false,
                    c: bool = true, d: bool = false) {{
    """Projections and biases built when arguments say, and four flags: 64 combinations and more."""
    param w: [2 * n, n] = xavier_uniform if joint
    param wq: [n, n] = xavier_uniform if not joint
    param wk: [n, n] = xavier_uniform if not joint
    param bb: [2 * n] = ones if bias
    param ob: [n] = ones if bias

    example(n = 3)

    forward(x: [..., n]) -> [..., n] {{
        if joint {{
            w_q, w_k = chunk(w, 2)
            q = x @ transpose(w_q, 0, 1)
            k = x @ transpose(w_k, 0, 1)
        }} else {{
            q = x @ transpose(wq, 0, 1)
            k = x @ transpose(wk, 0, 1)
        }}
        if bias {{
            b_q, b_k = chunk(bb, 2)
            q = q + b_q
            k = k + b_k
        }}
        h = q * k
        if a {{
            h = tanh(h)
        }}
        if b {{
            h = h * h
        }}
        if c {{
            h = sigmoid(h) * q
        }}
        if d {{
            h = exp(h)
        }}
        if x.ndim == 3 {{
            h = h * 2
        }}
        return h + ob
    }}
}}
'''


def _compiled(function: bool) -> dict:
    return compile_spec(SPEC.format(function="@function" if function else ""), "proven")


@pytest.fixture(scope="module")
def compiled() -> tuple[dict, dict]:
    return _compiled(True), _compiled(False)


def test_members_proven_by_a_side_are_read_there():
    """No split: `w`, `wq`, `wk` are read on the sides that prove them built; `ob`, read outside every `if
    bias`, makes only the statement reading it an `if bias` of its own."""
    spec = parse_file("proven.layer", SPEC.format(function="@function"))
    check_program([spec])
    plans, problems = plan_backwards([spec])
    assert problems == []
    plan = plans["ProvenMembers"]
    assert isinstance(plan, LoopPlan)
    conditions = [spec_text(s.cond) for s in plan.segments if isinstance(s, Choice)]
    assert conditions == ["joint", "bias", "a", "b", "c", "d", "x_ndim == 3", "bias"]


CONFIGS = [
    (True, True, True, False, True, False),
    (False, True, False, True, False, True),
    (True, False, True, True, True, True),
    (False, False, False, False, False, False),
]


@pytest.mark.parametrize("flags", CONFIGS)
@pytest.mark.parametrize("rank", [2, 3])
def test_the_function_matches_the_plain_module(compiled, flags, rank):
    function, plain = compiled
    config = dict(zip(["joint", "bias", "a", "b", "c", "d"], flags))
    torch.manual_seed(0)
    a = function["ProvenMembers"](3, **config, dtype=torch.float64)
    b = plain["ProvenMembers"](3, **config, dtype=torch.float64)
    with torch.no_grad():
        for p in a.parameters():
            p.uniform_(-1, 1)
    b.load_state_dict(a.state_dict())
    x = torch.rand(*([2, 2] if rank == 3 else [2]), 3, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


def test_each_if_is_tested_once_per_side(compiled):
    """Forward tests each flag once, not once per combination; `bias` twice (its `if`, and the one the read of
    `ob` makes); the measured rank is kept on ctx for backward's test."""
    source = compiled[0]["SOURCE"]
    fn = source[source.index("class ProvenMembersFunction") : source.index("class ProvenMembers(")]
    forward = fn[fn.index("def forward") : fn.index("def setup_context")]
    assert forward.count("if bias:") == 2 and forward.count("if joint:") == 1
    for flag in ["a", "b", "c", "d"]:
        assert forward.count(f"if {flag}:") == 1
    assert "ctx.x_ndim" in fn
