"""MultiheadAttention under `@function`: more `if` combinations than `plan.MAX_BRANCH_PLANS`, each `if`
a segment (`autodiff.loops.Choice`), with the parts the segmented form takes since: members read on the
sides that prove them built (`in_proj_weight`, `q_proj_weight`), nested `if`s and a side's number
(`autodiff.nested_ifs`), `is_floating_point(mask)`, flag inputs (`need_weights`) and sizes of locals
the `if`s bind (`tgt_len`, `src_len` after `add_bias_kv`). The Function against the plain module in
float64, over its arguments, both mask dtypes and shapes, unbatched and batch-first inputs: outputs,
first and second derivatives, and gradcheck/gradgradcheck where noted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from layerdsl.autodiff.loops import Choice, LoopPlan
from layerdsl.autodiff.plan import plan_backwards
from layerdsl.ir.printer import spec_text
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .function_agreement import agree
from .support import torch_nn_with_and_without_function

SPECS = Path(__file__).resolve().parent.parent / "specs" / "torch_nn"
FILES = ["attention.layer", "linear.layer"]


@pytest.fixture(scope="module")
def modules(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("attention")
    return torch_nn_with_and_without_function(root, FILES, "MultiheadAttention", "attention")


def test_multihead_attention_plans_as_segments():
    files = []
    for name in FILES:
        text = (
            (SPECS / name).read_text().replace("\nlayer MultiheadAttention(", "\n@function\nlayer MultiheadAttention(")
        )
        files.append(parse_file(str(SPECS / name), text))
    check_program(files)
    plans, problems = plan_backwards(files)
    assert problems == []
    plan = plans["MultiheadAttention"]
    assert isinstance(plan, LoopPlan)
    # out_proj's `+ bias` reads out_proj.bias outside `if bias`: that statement alone is an `if` on `bias`
    # (the forward is not split into a side with the member and one without)
    on_bias = [seg for seg in plan.segments if isinstance(seg, Choice) and spec_text(seg.cond) == "bias"]
    assert any("out_proj_bias" in spec_text(s.expr) for seg in on_bias for s in seg.sides()[0].steps)
    assert all("out_proj_bias" not in spec_text(s.expr) for seg in on_bias for s in seg.sides()[1].steps)


CONFIGS = [
    {},
    {"add_bias_kv": True, "add_zero_attn": True},
    {"bias": False, "batch_first": True},
    {"add_zero_attn": True, "kdim": 3, "vdim": 5},
]


def _masks(batch: int, length: int) -> list[dict]:
    torch.manual_seed(1)
    return [
        {},
        {"attn_mask": torch.rand(length, length, dtype=torch.float64)},
        {"attn_mask": torch.rand(length, length) > 0.7},
        {"attn_mask": torch.rand(batch * 2, length, length, dtype=torch.float64)},
        {"key_padding_mask": torch.rand(batch, length) > 0.7, "average_attn_weights": False},
        {"key_padding_mask": torch.rand(batch, length, dtype=torch.float64)},
        {"need_weights": False},
    ]


@pytest.mark.parametrize("config", CONFIGS)
def test_the_function_matches_the_plain_module(modules, config):
    function, plain = modules
    torch.manual_seed(0)
    a = function.MultiheadAttention(4, 2, **config, dtype=torch.float64)
    b = plain.MultiheadAttention(4, 2, **config, dtype=torch.float64)
    b.load_state_dict(a.state_dict())
    batch, length = 2, 3
    lead = (batch, length) if config.get("batch_first") else (length, batch)
    for masks in _masks(batch, length):
        q = torch.rand(*lead, 4, dtype=torch.float64, requires_grad=True)
        k = torch.rand(*lead, config.get("kdim", 4), dtype=torch.float64, requires_grad=True)
        v = torch.rand(*lead, config.get("vdim", 4), dtype=torch.float64, requires_grad=True)
        got, want = a(q, k, v, **masks), b(q, k, v, **masks)
        assert [g is None for g in got] == [w is None for w in want]
        outputs = [(g, w) for g, w in zip(got, want) if w is not None]
        total = [
            sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in side)
            for side in zip(*outputs)
        ]
        params = torch.autograd.grad(total[0], list(a.parameters()), retain_graph=True, allow_unused=True)
        expected = torch.autograd.grad(total[1], list(b.parameters()), retain_graph=True, allow_unused=True)
        for p, e in zip(params, expected):
            assert (p is None) == (e is None) and (p is None or torch.allclose(p, e))
        agree(tuple(g for g, _ in outputs), tuple(w for _, w in outputs), [q, k, v])


def test_unbatched_inputs_match(modules):
    function, plain = modules
    torch.manual_seed(0)
    a = function.MultiheadAttention(4, 2, add_bias_kv=True, dtype=torch.float64)
    b = plain.MultiheadAttention(4, 2, add_bias_kv=True, dtype=torch.float64)
    b.load_state_dict(a.state_dict())
    q = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(3) > 0.5
    agree(a(q, q, q, key_padding_mask=mask), b(q, q, q, key_padding_mask=mask), [q])


def test_gradcheck_and_gradgradcheck(modules):
    function, _ = modules
    torch.manual_seed(0)
    a = function.MultiheadAttention(4, 2, add_bias_kv=True, add_zero_attn=True, dtype=torch.float64)
    names = [n for n, _ in a.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in a.parameters()]
    q = torch.rand(3, 2, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(3, 3, dtype=torch.float64)

    def run(q, *tensors):
        return torch.func.functional_call(a, dict(zip(names, tensors)), (q, q, q), {"attn_mask": mask})

    assert torch.autograd.gradcheck(run, (q, *params))
    assert torch.autograd.gradgradcheck(run, (q, *params))


ENCODER_FILES = ["attention.layer", "linear.layer", "layer_norm.layer", "transformer.layer"]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> tuple:
    """TransformerEncoderLayer with and without `@function` (its attention, linears and norms inlined)."""
    root = tmp_path_factory.mktemp("encoder")
    return torch_nn_with_and_without_function(root, ENCODER_FILES, "TransformerEncoderLayer", "encoder")


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_the_encoder_layer_matches_the_plain_module(encoders, norm_first, bias):
    """Its norms' statistics kept by the Function are not differentiable outputs (one
    `mark_non_differentiable` for all of them: torch keeps only the last call's), so the second derivative
    differentiates through ATen's layer norm backward as autograd's does."""
    function, plain = encoders
    torch.manual_seed(0)
    config = {"dim_feedforward": 8, "dropout": 0.0, "norm_first": norm_first, "bias": bias}
    a = function.TransformerEncoderLayer(4, 2, **config, dtype=torch.float64)
    b = plain.TransformerEncoderLayer(4, 2, **config, dtype=torch.float64)
    b.load_state_dict(a.state_dict())
    src = torch.rand(3, 2, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(3, 3) > 0.7
    agree(a(src, src_mask=mask), b(src, src_mask=mask), [src])
