"""Ranks a way through a segmented forward's `if`s decides (`autodiff.local_sizes`, `nested_ifs`).

`h = x + first(x)` of an `x: [..., d]`, where `first` branches on its input's rank (a batch of one when
unbatched, as MultiheadAttention does), has a rank the declared shapes leave open; `second(h)` tests
`h.ndim` and measures `h`. Along each way through the `if`s before it, the conditions taken say what the
input's rank is (`x.ndim == 2` taken: 2), and the layer's own `require`s bound it (`x.ndim <= 3`: where
`x.ndim == 2` is not taken, 3), so `h`'s rank and sizes are those of `x`: `second`'s numbers are chosen by
`x.ndim` as `first`'s are. A sub's `require`s on `h` bound it too: the Function checks them.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .function_agreement import compare_with_plain
from .support import compile_spec, torch_nn_with_and_without_function

FLAGS = "pqrst"
REQUIRES = """        require x.ndim >= 2, "x has 2 dims (unbatched) or 3 (batched)"
        require x.ndim <= 3, "x has 2 dims (unbatched) or 3 (batched)"
"""
SPEC = '''
layer Block(d: int, batch_first: bool = false) {{
    """Rows by batch, as attention takes them: an unbatched [L, d] is a batch of one."""
    param w: [d, d] = ones

    example(d = 3)

    forward(x: [..., d]) -> [..., d] {{
{block_requires}        if x.ndim == 2 {{
            q = unsqueeze(x, 1)
        }} else if batch_first {{
            q = transpose(x, 0, 1)
        }} else {{
            q = x
        }}
        rows = size_at(q, 0)
        batch = size_at(q, 1)
        flat = tanh(reshape(q, [rows * batch, d]) @ w)
        y = reshape(flat, [rows, batch, d])
        if x.ndim == 2 {{
            y = squeeze(y, 1)
        }} else if batch_first {{
            y = transpose(y, 0, 1)
        }}
        return y
    }}
}}

{function}
layer Residual(d: int, batch_first: bool = false, {flags}) {{
    """Two blocks with a residual between them, and five independent `if`s: a segmented forward."""
    sub first = Block(d, batch_first = batch_first)
    sub second = Block(d, batch_first = batch_first)

    example(d = 3)

    forward(x: [..., d]) -> [..., d] {{
{requires}        h = x + first(x)
        y = second(h)
{ifs}
        return h * y
    }}
}}
'''


def spec_text(function: bool = True, requires: str = "layer") -> str:
    ifs = "\n".join(f"        if {f} {{\n            y = sin(y)\n        }}" for f in FLAGS)
    return SPEC.format(
        function="@function" if function else "",
        flags=", ".join(f"{f}: bool = false" for f in FLAGS),
        ifs=ifs,
        requires=REQUIRES if requires == "layer" else "",
        block_requires=REQUIRES if requires == "sub" else "",
    )


def problems(text: str) -> list:
    spec = parse_file("residual.layer", text)
    check_program([spec])
    return plan_backwards([spec])[1]


def test_the_second_block_derives():
    """`second`'s `h.ndim == 2` and `size_at(q, 0)` are followed back to `x` along each way (refused
    before: "tests `h.ndim`, a size of a local the `if`s before it compute on their sides")."""
    assert problems(spec_text()) == []


def test_a_sub_require_is_relied_on():
    """The same bounds stated by the sub: the Function checks them on `h` (`sub_requires`), so they bound
    x's rank as the layer's own do (tests/test_function_computed_requires.py runs it)."""
    assert problems(spec_text(requires="sub")) == []


def test_without_the_bound_the_rank_is_not_assumed():
    found = problems(spec_text(requires="none"))
    assert len(found) == 1 and "a size of a local the `if`s before it compute" in found[0].message


@pytest.fixture(scope="module")
def compiled() -> tuple[dict, dict]:
    return compile_spec(spec_text(True), "residual"), compile_spec(spec_text(False), "residual")


@pytest.mark.parametrize("shape", [(4, 3), (4, 2, 3)], ids=["unbatched", "batched"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("flags", ["", "pr", "pqrst"])
def test_the_function_matches_the_plain_module(compiled, shape, batch_first, flags):
    function, plain = compiled
    config = {"batch_first": batch_first} | {f: f in flags for f in FLAGS}
    torch.manual_seed(0)
    a = function["Residual"](3, **config, dtype=torch.float64)
    b = plain["Residual"](3, **config, dtype=torch.float64)
    with torch.no_grad():
        for p in a.parameters():
            p.uniform_(-0.5, 0.5)
    b.load_state_dict(a.state_dict())
    compare_with_plain(a, b, torch.rand(*shape, dtype=torch.float64, requires_grad=True))


def test_the_function_checks_the_bound_it_relies_on(compiled):
    function, _ = compiled
    layer = function["Residual"](3, dtype=torch.float64)
    with pytest.raises(ValueError, match="x has 2 dims"):
        layer(torch.rand(4, 1, 2, 3, dtype=torch.float64))


def test_second_blocks_numbers_are_chosen_by_the_inputs_rank(compiled):
    """The generated forward chooses `second`'s sizes by `x`'s rank, as `first`'s: no `h` is measured."""
    source = compiled[0]["SOURCE"]
    forward = source[source.index("class ResidualFunction") : source.index("def setup_context")]
    assert "second_rows = first_rows" in forward
    assert "h.shape" not in forward and "h.dim()" not in forward


@pytest.mark.parametrize("batch_first", [False, True])
def test_the_decoder_layer_matches_autograd_in_both_ranks(tmp_path, batch_first):
    """TransformerDecoderLayer (specs/torch_nn) derives: outputs and gradients as autograd's, for tgt [L, E]
    and [L, N, E] (the coverage page compares its configurations batched, and second derivatives)."""
    function, plain = torch_nn_with_and_without_function(
        tmp_path,
        ["transformer.layer", "attention.layer", "linear.layer", "layer_norm.layer"],
        "TransformerDecoderLayer",
        f"rank_facts_decoder_{batch_first}",
    )
    ours = importlib.import_module(f"{function.__name__}.torch_nn.transformer")
    theirs = importlib.import_module(f"{plain.__name__}.torch_nn.transformer")
    torch.manual_seed(0)
    kwargs = {"dim_feedforward": 8, "dropout": 0.0, "batch_first": batch_first, "dtype": torch.float64}
    a, b = ours.TransformerDecoderLayer(4, 2, **kwargs), theirs.TransformerDecoderLayer(4, 2, **kwargs)
    b.load_state_dict(a.state_dict())
    for tgt, memory in (((3, 4), (5, 4)), ((3, 2, 4), (3, 5, 4) if batch_first else (5, 2, 4))):
        inputs = [torch.rand(*s, dtype=torch.float64, requires_grad=True) for s in (tgt, memory)]
        out, ref = a(*inputs), b(*inputs)
        torch.testing.assert_close(out, ref)
        seed = torch.randn_like(ref)
        got = torch.autograd.grad(out, [*inputs, *a.parameters()], seed)
        want = torch.autograd.grad(ref, [*inputs, *b.parameters()], seed)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
