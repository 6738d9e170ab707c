"""What a `@function` layer saves for backward: only what the backward reads, in its smallest form (a
comparison as a `bool` mask, a sign as `int8`), measured with saved_tensors_hooks; and the comment lines
that say what is saved and why."""

from __future__ import annotations

import pytest
import torch

from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .support import compile_spec

SPEC = """
@function{save}
layer Probe(n: int) {{
    param w: [n, n] = uniform(-0.5, 0.5)
    param b: [n] = uniform(-0.5, 0.5)
    example(n = 4)

    forward(x: [B, n]) -> [B, n] {{
        return {body}
    }}
}}
"""


def _compile(body: str, save: str = "") -> tuple[str, dict]:
    text = SPEC.format(body=body, save=f'(save = "{save}")' if save else "")
    spec = parse_file("probe.layer", text)
    source = emit_file(spec, check_program([spec]), "probe.layer", {})
    namespace: dict = {}
    exec(compile(source, "probe.py", "exec"), namespace)
    return source, namespace


def _saved(body: str, save: str = "", dtype=torch.float64) -> list[tuple[torch.dtype, tuple[int, ...]]]:
    """(dtype, shape) of each tensor the Function saves, for x: [8, 4] with every gradient needed."""
    _, ns = _compile(body, save)
    torch.manual_seed(0)
    layer = ns["Probe"](4, dtype=dtype)
    x = torch.randn(8, 4, dtype=dtype, requires_grad=True)
    saved: list[tuple[torch.dtype, tuple[int, ...]]] = []

    def pack(t):
        saved.append((t.dtype, tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    _matches_autograd(ns, layer, x, out)
    return saved


def _matches_autograd(ns, layer, x, out) -> None:
    want = ns["probe"](x, layer.w, layer.b)
    seed = torch.randn_like(want)
    got = torch.autograd.grad(out, [x, layer.w, layer.b], seed, allow_unused=True)
    ref = torch.autograd.grad(want, [x, layer.w, layer.b], seed, allow_unused=True)
    for a, r in zip(got, ref):
        assert (a is None) == (r is None) or (a if r is None else r).abs().max() == 0
        if a is not None and r is not None:
            assert torch.allclose(a, r)


@pytest.mark.parametrize("save", ["", "inputs"])
def test_a_centering_layer_saves_no_tensor(save):
    assert _saved("x - mean(x, dim = -1, keepdim = true)", save) == []
    assert _saved("x - mean(x)", save) == []


def test_a_relu_layer_saves_one_bool_mask():
    assert _saved("relu(x)") == [(torch.bool, (8, 4))]
    assert _saved("relu(x)", "inputs") == [(torch.bool, (8, 4))]
    # the linear part needs x and w as values; the relu adds a mask, not its float output
    saved = _saved("relu(x @ w + b)")
    assert sorted(saved, key=str) == sorted(
        [(torch.float64, (8, 4)), (torch.float64, (4, 4)), (torch.bool, (8, 4))], key=str
    )


@pytest.mark.parametrize(
    "body",
    ["clamp(x * 2, -1, 1)", "clamp(x, min = 0)", "where(x > 0, x * 2, x * 3)", "maximum(x * 2, x * 3)"],
)
def test_piecewise_linear_layers_save_bool_masks_only(body):
    saved = _saved(body)
    assert saved and all(dtype == torch.bool for dtype, _ in saved), saved


def test_abs_saves_its_sign_as_int8():
    assert _saved("abs(x) * 3") == [(torch.int8, (8, 4))]


def test_a_mask_is_not_saved_where_the_float_tensor_is_needed_anyway():
    # x is read as a value by the product's gradient: a mask beside it would only add bytes
    assert _saved("relu(x) * x") == [(torch.float64, (8, 4))]


def test_masks_keep_double_backward_and_vmap_right():
    _, ns = _compile("relu(x @ w + b)")
    torch.manual_seed(0)
    layer = ns["Probe"](4, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    fn = ns["ProbeFunction"].apply
    assert torch.autograd.gradcheck(fn, (x, layer.w, layer.b))
    assert torch.autograd.gradgradcheck(fn, (x, layer.w, layer.b))
    vmapped_input_grads_agree(fn, ns["probe"], layer, torch.allclose)


def vmapped_input_grads_agree(fn, plain, layer, same) -> None:
    """`fn(x, w, b)`'s input gradients under `vmap(grad)` over a batch of three [5, 4] inputs are `same` as the
    plain functional form's, one by one (the Probe layer's w and b held fixed)."""
    xs = torch.randn(3, 5, 4, dtype=torch.float64)
    w, b = layer.w.detach(), layer.b.detach()
    batched = torch.func.vmap(lambda t: torch.func.grad(lambda u: fn(u, w, b).sum())(t))(xs)
    for k in range(3):
        t = xs[k].clone().requires_grad_()
        (g,) = torch.autograd.grad(plain(t, w, b).sum(), t)
        assert same(batched[k], g)


def test_setup_context_says_what_is_saved_and_why():
    source, _ = _compile("relu(x @ w + b)")
    lines = [line.strip() for line in source.splitlines() if line.strip().startswith("# saves")]
    assert lines == [
        "# saves x: read by grad_w",
        "# saves w: read by grad_x",
        "# saves relu_positive = relu > 0, as bool: read by every gradient",
    ]


INDEXED = """
@function
layer Picks(n: int) {
    param b: [n] = uniform(-0.5, 0.5)
    example(n = 4)

    forward(x: [B, n], idx: long[B, 2]) {
        return BODY
    }
}
"""


@pytest.mark.parametrize(
    ("body", "kept"),
    [
        ("flip(x, [1]) * 2 + b", []),  # reversing needs nothing kept
        ("x[:, ::-1] + b", []),
        ("gather(x + b, 1, idx)", [(torch.int64, (8, 2))]),  # the index, not the input
        ("x[:, idx[0]] * 2 + b[0]", [(torch.int64, (8, 2))]),  # idx, its row picked again in backward
        ("index_select(x + b, 1, idx[0])", [(torch.int64, (8, 2))]),
    ],
)
def test_index_ops_save_the_index_only(body, kept):
    ns = compile_spec(INDEXED.replace("BODY", body), "picks")
    layer = ns["Picks"](4, dtype=torch.float64)
    x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[0, 3], [2, 1]] * 4)
    saved: list[tuple[torch.dtype, tuple[int, ...]]] = []

    def pack(t):
        saved.append((t.dtype, tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x, idx)
    assert saved == kept
    seed = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, layer.b], seed)
    want = torch.autograd.grad(ns["picks"](x, idx, layer.b), [x, layer.b], seed)
    assert all(torch.allclose(a, r) for a, r in zip(got, want))


POOLING = """
@function{save}
layer Pool(c: int) {{
    param w: [c] = uniform(0.5, 1.5)
    example(c = 3)

    forward(x: [N, c, H, W]) {{
        return {body}
    }}
}}
"""


NORM_LOSS = """
@function
layer NormLoss(c: int) {{
    {members}
    example(c = 4)

    forward({inputs}) {{
        return {body}
    }}
}}
"""


def _pooling_saved(body: str, save: str = "") -> tuple[list[tuple[torch.dtype, tuple[int, ...]]], str]:
    """What a pooling layer's Function saves for x: [2, 3, 8, 6], checked against autograd; and its source."""
    spec = parse_file("pool.layer", POOLING.format(body=body, save=f'(save = "{save}")' if save else ""))
    source = emit_file(spec, check_program([spec]), "pool.layer", {})
    ns: dict = {}
    exec(compile(source, "pool.py", "exec"), ns)
    layer = ns["Pool"](3, dtype=torch.float64)
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64, requires_grad=True)
    saved: list[tuple[torch.dtype, tuple[int, ...]]] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((t.dtype, tuple(t.shape))) or t, lambda t: t):
        out = layer(x)
    seed = torch.randn_like(out)
    want = ns["pool"](x, layer.w)
    got, ref = torch.autograd.grad(out, x, seed), torch.autograd.grad(want, x, seed)
    assert torch.allclose(got[0], ref[0])
    return saved, source


@pytest.mark.parametrize("save", ["", "inputs"])
@pytest.mark.parametrize(
    ("body", "pooled"),
    [("max_pool2d(x, 2)", (2, 3, 4, 3)), ("adaptive_max_pool2d(x, [3, 2])", (2, 3, 3, 2))],
)
def test_max_pooling_saves_its_argmax_indices_not_floats(body, pooled, save):
    saved, source = _pooling_saved(body, save)
    assert saved == [(torch.int64, pooled)]
    assert "return_indices=True" in source


@pytest.mark.parametrize("body", ["avg_pool2d(x, 2)", "adaptive_avg_pool2d(x, 3)", 'pad(x, [1, 1, 2, 0], "reflect")'])
def test_average_pooling_and_padding_save_only_the_input_shape(body):
    saved, source = _pooling_saved(body)
    assert saved == []
    assert "x.shape" in source.split("def setup_context")[1].split("def backward")[0]


def test_constant_padding_keeps_nothing():
    """Its backward cuts the padding off the gradient (`grad[..., 1:-2]`): not even the input's shape."""
    saved, source = _pooling_saved("pad(x, [1, 2])")
    assert saved == []
    assert "ctx." not in source.split("def setup_context")[1].split("def backward")[0]


def test_prelu_saves_a_mask_for_the_input_and_the_input_for_the_weight():
    saved, _ = _pooling_saved("prelu(x, w)")
    assert sorted(saved, key=str) == sorted([(torch.float64, (2, 3, 8, 6)), (torch.float64, (3,))], key=str)


F32, I64 = torch.float32, torch.int64


@pytest.mark.parametrize(
    ("members", "inputs", "body", "make", "expected"),
    [
        (  # the expert's: x, weight, bias and the per-row mean and rstd, computed by the forward's kernel
            "param weight: [c] = ones\n    param bias: [c] = zeros",
            "x: [B, c]",
            "layer_norm(x, [c], weight, bias)",
            lambda: [torch.randn(8, 4)],
            [(F32, (8, 4)), (F32, (4,)), (F32, (4,)), (F32, (8, 1)), (F32, (8, 1))],
        ),
        (
            "param weight: [c] = ones",
            "x: [B, c]",
            "rms_norm(x, [c], weight)",
            lambda: [torch.randn(8, 4)],
            [(F32, (8, 4)), (F32, (4,))],
        ),
        (  # mean and rstd per sample and group
            "param weight: [c] = ones\n    param bias: [c] = zeros",
            "x: [B, c, L]",
            "group_norm(x, 2, weight, bias)",
            lambda: [torch.randn(8, 4, 3)],
            [(F32, (8, 4, 3)), (F32, (4,)), (F32, (8, 2)), (F32, (8, 2))],
        ),
        (  # the log-probabilities instead of the logits, the targets and the class weights
            "buffer w: [c] = ones",
            "x: [B, c], t: long[B]",
            "cross_entropy(x, t, w, label_smoothing = 0.1)",
            lambda: [torch.randn(8, 4), torch.randint(0, 4, (8,))],
            [(I64, (8,)), (F32, (4,)), (F32, (8, 4))],
        ),
        (
            "",
            "x: [B, c], t: long[B]",
            "cross_entropy(x, t)",
            lambda: [torch.randn(8, 4), torch.randint(0, 4, (8,))],
            [(I64, (8,)), (F32, (8, 4))],
        ),
        (  # the targets; the input only for its shape
            "",
            "x: [B, c], t: long[B]",
            "nll_loss(x, t)",
            lambda: [torch.randn(8, 4), torch.randint(0, 4, (8,))],
            [(I64, (8,))],
        ),
        (
            "",
            "x: [B, c], t: [B, c], v: [B, c]",
            "gaussian_nll_loss(x, t, v)",
            lambda: [torch.randn(8, 4), torch.randn(8, 4), torch.rand(8, 4) + 0.5],
            [(F32, (8, 4))] * 3,
        ),
    ],
)
def test_norms_and_losses_save_what_an_expert_saves(members, inputs, body, make, expected):
    """An expert's Function saves the input and the small statistics its kernel computed with the result
    (layer and group norm: mean and rstd), or the log-probabilities in place of the logits (cross entropy),
    and no input read only for its shape (nll_loss): the derived one saves exactly that, in the order of the
    Function's save_for_backward."""
    namespace = compile_spec(NORM_LOSS.format(members=members, inputs=inputs, body=body), "norm_loss")
    layer = namespace["NormLoss"](4)
    values = [t.requires_grad_() if t.is_floating_point() else t for t in make()]
    saved: list[tuple[torch.dtype, tuple[int, ...]]] = []

    def pack(t):
        saved.append((t.dtype, tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(*values)
    assert saved == expected
    out.sum().backward()
    assert values[0].grad is not None
