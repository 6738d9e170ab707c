"""A segmented forward (more `if` combinations than `plan.MAX_BRANCH_PLANS`) whose sides nest `if`s and
bind numbers, as MultiheadAttention's do: `autodiff.nested_ifs` writes each nested `if` at the top of
forward testing both conditions (`if a and b`), a local one side binds None after it when the other ran,
and a number a side binds (`m = m + 1`) a statement of its own (`m = m + 1 if a else m`). The Function
against the plain module in float64: outputs, gradients, gradcheck and gradgradcheck."""

from __future__ import annotations

import pytest
import torch

from layerdsl.autodiff.loops import Choice, LoopPlan
from layerdsl.autodiff.plan import plan_backwards
from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .function_agreement import compare_with_plain
from .support import compile_spec

SPEC = '''
{function}
layer Nested(n: int, a: bool = true, b: bool = false, c: bool = true, d: bool = false, e: bool = true,
             f: bool = false) {{
    """Nested ifs, a number bound on a side, an optional input: more than 32 combinations."""
    param w: [n] = ones

    example(n = 3)

    forward(x: [B, n], u: [B, n]? = none) -> [B, n] {{
        m = 1
        if a {{
            g = tanh(x)
            if b {{
                g = g * w
            }} else if c {{
                g = sigmoid(g)
            }} else {{
                g = g + 1
            }}
            m = m + 1
            h = g * x
        }} else {{
            h = exp(x)
        }}
        if u != none {{
            p = u * w
            if d {{
                p = p * p
            }}
            h = h + p
        }}
        if e {{
            h = sin(h) * m
        }}
        if f {{
            h = cos(h)
        }}
        return h
    }}
}}
'''


def _compiled(function: bool) -> dict:
    return compile_spec(SPEC.format(function="@function" if function else ""), "nested")


@pytest.fixture(scope="module")
def compiled() -> tuple[dict, dict]:
    return _compiled(True), _compiled(False)


def test_nested_ifs_are_segments_at_the_top():
    """`if a { g; if b {..} else if c {..} else {..}; m = m + 1; h } else { h }` is `if a {g} else {h}`,
    three `if`s on `a and ...`, the number, `if a {h}`; `if u != none { p; if d {..}; h }` three more."""
    spec = parse_file("nested.layer", SPEC.format(function="@function"))
    check_program([spec])
    plans, problems = plan_backwards([spec])
    assert problems == []
    plan = plans["Nested"]
    assert isinstance(plan, LoopPlan)
    assert sum(isinstance(s, Choice) for s in plan.segments) == 1 + 3 + 1 + 3 + 2


CONFIGS = [
    (True, True, False, True, True, False, True),
    (True, False, True, False, True, True, False),
    (True, False, False, True, False, False, True),
    (False, True, True, False, True, True, True),
    (False, False, False, True, False, True, False),
]


@pytest.mark.parametrize("flags", CONFIGS)
def test_the_function_matches_the_plain_module(compiled, flags):
    function, plain = compiled
    config = dict(zip("abcdef", flags[:6]))
    torch.manual_seed(0)
    a = function["Nested"](3, **config, dtype=torch.float64)
    b = plain["Nested"](3, **config, dtype=torch.float64)
    with torch.no_grad():
        a.w.uniform_(0.5, 1.5)
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    u = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, *([x, u] if flags[6] else [x]))


def test_a_local_of_one_side_is_none_after_the_other(compiled):
    """`g`, bound by `if a` only and read by the `if a and ...` after it: None when `a` does not hold."""
    source = compiled[0]["SOURCE"]
    fn = source[source.index("class NestedFunction") : source.index("class Nested(")]
    forward = fn[fn.index("def forward") : fn.index("def setup_context")]
    assert "if a and b:" in forward and "if a and not b and c:" in forward
    assert "m = m + 1 if a else m" in forward.replace("(", "").replace(")", "")
    assert "= None" in forward


TWO_NAMES = '''
{function}
layer TwoNamesOneValue(n: int, nf: bool = true, a: bool = true, b: bool = true, c: bool = false, d: bool = true,
                       e: bool = false) {{
    """A side binding two locals to one value (`y = cos(...)`, `h = y`), as TransformerEncoderLayer's do."""
    param w: [n] = ones
    param v: [n] = ones

    example(n = 3)

    forward(x: [B, n]) -> [B, n] {{
        y = x
        if nf {{
            h = tanh(y)
            if a {{
                g = h * w
            }} else {{
                g = h
            }}
            y = y + g
            h = sin(y)
        }} else {{
            if a {{
                g = y * w
            }} else {{
                g = y
            }}
            y = cos(y + g)
            h = y
        }}
        out = h * v
        if b {{
            out = out * out
        }}
        if c {{
            out = out + 1
        }}
        if d {{
            out = tanh(out)
        }}
        if e {{
            out = out * 2
        }}
        if nf {{
            return y + out
        }}
        return exp(y + out)
    }}
}}
'''


@pytest.mark.parametrize("flags", [(True, True), (True, False), (False, True), (False, False)])
def test_two_locals_holding_one_value_sum_their_gradients(flags):
    """Backward gives the side's value the gradients of both merged names (it overwrote one with the
    other before)."""
    namespaces = []
    for function in (True, False):
        spec = parse_file("two.layer", TWO_NAMES.format(function="@function" if function else ""))
        program = check_program([spec])
        namespace: dict = {}
        exec(compile(emit_file(spec, program, "two.layer", {}), "two.py", "exec"), namespace)
        namespaces.append(namespace)
    config = dict(zip(["nf", "a"], flags))
    torch.manual_seed(0)
    a = namespaces[0]["TwoNamesOneValue"](3, **config, dtype=torch.float64)
    b = namespaces[1]["TwoNamesOneValue"](3, **config, dtype=torch.float64)
    with torch.no_grad():
        a.w.uniform_(0.5, 1.5)
        a.v.uniform_(0.5, 1.5)
    b.load_state_dict(a.state_dict())
    compare_with_plain(a, b, torch.rand(2, 3, dtype=torch.float64, requires_grad=True))
