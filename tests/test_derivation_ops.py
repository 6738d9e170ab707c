"""Derived backwards through the op families that used to need a backward block: indexing and slicing,
`cat`/`stack`, the Fourier transforms (complex intermediates, real or complex outputs, `n` and `dim`).
For one spec per family: the Function against plain autograd, gradcheck and gradgradcheck, and
torch.func.vmap of torch.func.grad and jacrev."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from layerdsl.codegen.module import emit_file
from layerdsl.driver.cli import main
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .support import compile_spec

SPEC = """
@function
layer Probe(n: int) {{
    param w: [{w}] = uniform(0.5, 1.5)
    example(n = 8)

    forward(x: [B, n]) -> {out} {{
{statements}        return {body}
    }}
}}
"""

LOOP = """h = x
outputs = []
for t in range(3) {
    if t > 0 {
        h = h * w
    }
    h = tanh(h + x[:, t : t + 1])
    outputs.append(h)
}
"""
REVERSED = f"""{LOOP}rev = []
for t in range(1, 3) {{
    for u in range(2) {{
        rev.append(outputs[3 - t] * (u + 1))
    }}
}}
"""

FAMILIES = {
    "slicing": ("tanh(x)[:, 1:3] * w + x[-1, none][..., 2:4] + x[..., 0, none]", "n // 4", "[B, 2]"),
    "negative_bounds": ("sin(x * w)[1:, -3:-1]", "n", "[B - 1, 2]"),
    "cat": ("cat([tanh(x)[:, :2], x * w, exp(x)[:, 2:]], dim = -1)", "n", "[B, 2 * n]"),
    "cat_rows": ("cat([tanh(x), x * w], dim = 0)", "n", "[2 * B, n]"),
    "stack": ("stack([x * w, exp(x)], dim = -1)[..., 1] + stack([x, x * w])[0]", "n", "[B, n]"),
    "half_fourier": ("fft(x * w)[..., : n // 2]", "n", "[B, n // 2]"),
    "spectral_filter": ("irfft(rfft(x) * w, n = n)", "n // 2 + 1", "[B, n]"),
    "fft_n_dim": ("ifft(fft(x * w, n = 5, dim = 0), dim = 0)[:, 1:]", "n", "[5, n - 1]"),
    "rfft_n": ("rfft(x * w, n = 6)", "n", "[B, 4]"),
    "irfft_default_n": ("irfft(fft(x) * w, dim = -1)", "n", "[B, 2 * n - 2]"),
    "irfft_n_odd": ("irfft(rfft(x * w), n = 7)", "n", "[B, 7]"),
    "complex_product": ("ifft(fft(x) * fft(x * w)) * 2", "n", "[B, n]"),
    # loops with a trip count written in the spec, unrolled (`autodiff.unroll`); a body's last line returns
    "unrolled_loop": (LOOP + "stack(outputs, dim = 1)[:, 2] + cat(outputs, dim = -1)[:, :n]", "n", "[B, n]"),
    "list_read_backwards": (REVERSED + "sum(stack(rev), dim = 0) * w", "n", "[B, n]"),
    "size_at": ("x * w / size_at(x, 0) + size_at(x, -2)", "n", "[B, n]"),
}


def _compile(body: str, w: str, out: str) -> dict:
    *lines, result = body.strip().split("\n")
    statements = "".join(f"        {line}\n" for line in lines)
    return compile_spec(SPEC.format(statements=statements, body=result, w=w, out=out), "probe")


@pytest.fixture(params=sorted(FAMILIES), name="family")
def _family(request):
    body, w, out = FAMILIES[request.param]
    ns = _compile(body, w, out)
    torch.manual_seed(0)
    layer = ns["Probe"](8, dtype=torch.float64)
    fn = ns["ProbeFunction"].apply

    through_apply = [8] if "n" in _kwargs(ns) else []
    numbers = {"n": 8} if "n" in inspect.signature(ns["probe"]).parameters else {}

    def apply(x, weight):
        y = fn(x, weight, *through_apply)
        return y[0] if isinstance(y, tuple) else y

    def plain(x, weight):
        return ns["probe"](x, weight, **numbers)

    return plain, layer, apply


def _kwargs(ns) -> list[str]:
    return list(inspect.signature(ns["ProbeFunction"].forward).parameters)[2:]


def test_derived_backward_matches_autograd(family):
    plain, layer, apply = family
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    got, want = apply(x, layer.w), plain(x, layer.w)
    assert torch.allclose(got, want)
    seed = torch.randn_like(want)
    for a, b in zip(
        torch.autograd.grad(got, [x, layer.w], seed, create_graph=True),
        torch.autograd.grad(want, [x, layer.w], seed, create_graph=True),
    ):
        assert torch.allclose(a, b)
        v = torch.randn_like(a)
        second = torch.autograd.grad((a * v).sum(), [x, layer.w], allow_unused=True, retain_graph=True)
        ref = torch.autograd.grad((b * v).sum(), [x, layer.w], allow_unused=True, retain_graph=True)
        for s, r in zip(second, ref):
            assert (s is None and (r is None or r.abs().max() == 0)) or torch.allclose(s, r)


def test_gradcheck_and_gradgradcheck(family):
    _, layer, apply = family
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(apply, (x, layer.w))
    assert torch.autograd.gradgradcheck(apply, (x, layer.w))


# functorch has no batching rule for the in-place addcmul_ a backward may use: a note about speed under vmap
@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
def test_vmap_of_grad_and_jacrev(family):
    plain, layer, apply = family
    w = layer.w.detach()
    xs = torch.randn(3, 4, 8, dtype=torch.float64)

    def loss(f):
        return lambda t: torch.view_as_real(f(t, w).to(torch.complex128)).square().sum()

    batched = torch.func.vmap(torch.func.grad(loss(apply)))(xs)
    want = torch.func.vmap(torch.func.grad(loss(plain)))(xs)
    assert torch.allclose(batched, want)
    jac = torch.func.jacrev(lambda t: apply(t, w).real)(xs[0])
    ref = torch.func.jacrev(lambda t: plain(t, w).real)(xs[0])
    assert torch.allclose(jac, ref)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("return x[x > 0, x < 1]", "several index tensors when they are ints, side by side"),
        ("return x[x > 0, 1:]", "index tensors with `:` or `...` for the other dims"),
        ("return abs(fft(x))", "abs() of a complex value"),
        ("return round(x)", "round() has no derivative"),
    ],
)
def test_what_still_cannot_be_derived_says_which_op_and_why(tmp_path, capsys, body, message):
    spec = tmp_path / "bad.layer"
    spec.write_text(
        '@function\nlayer Bad() {\n    """A layer."""\n    example()\n\n    forward(x) {\n        '
        + body
        + "\n    }\n}\n"
    )
    assert main(["check", str(spec)]) == 1
    assert message in capsys.readouterr().err


def test_circular_pad_with_widths_of_no_declared_length_asks_for_one(tmp_path, capsys):
    spec = tmp_path / "bad.layer"
    spec.write_text(
        '@function\nlayer Bad(widths: ints) {\n    """A layer."""\n    example(widths = [1, 1])\n\n'
        '    forward(x) {\n        return pad(x, widths, "circular")\n    }\n}\n'
    )
    assert main(["check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "bad.layer:7:16: error: a derived backward through circular pad() needs how many widths there are" in err
    assert "`widths: ints[4]`" in err


CIRCULAR = """
@function
layer CircularPad(widths: ints[4]) {
    \"\"\"Circular padding by widths from an argument of a declared length.\"\"\"
    example(widths = [1, 2, 0, 1])

    forward(x: [N, C, H, W]) {
        return sin(pad(x, widths, "circular")) * 2
    }
}
"""


@pytest.mark.parametrize("widths", [[1, 2, 0, 1], [2, 0, 1, -1], [0, 0, 3, 1]])
def test_circular_pad_with_widths_from_an_argument_derives(widths):
    ns = compile_spec(CIRCULAR, "circular")
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    layer = ns["CircularPad"](widths)
    assert torch.autograd.gradcheck(layer, (x,))
    assert torch.autograd.gradgradcheck(layer, (x,))
    seed = torch.randn_like(layer(x))
    (got,) = torch.autograd.grad(layer(x), x, seed)
    (want,) = torch.autograd.grad(ns["circular_pad"](x, widths=widths), x, seed)
    assert torch.allclose(got, want)


CONV = """
@function
layer Conv(c: int, k: int) {{
    param weight: {weight} = uniform(-0.5, 0.5)
    param bias: [k] = uniform(-0.5, 0.5)
    example(c = 2, k = 3)

    forward(x: {x}) {{
        return {body}
    }}
}}
"""


@pytest.mark.parametrize(
    ("weight", "x", "body", "shape"),
    [
        ("[k, c, 3, 3]", "[N, c, H, W]", "tanh(conv2d(x, weight, bias, padding = 1))", (2, 2, 5, 4)),
        ("[k, c, 2, 2]", "[N, c, H, W]", "conv2d(x * x, weight, bias, stride = 2)", (2, 2, 5, 4)),
        ("[k, c, 3]", "[N, c, L]", "conv1d(sin(x), weight, bias, stride = 2, dilation = 2) * 2", (3, 2, 9)),
    ],
)
def test_convolutions_derive(weight, x, body, shape):
    ns = compile_spec(CONV.format(weight=weight, x=x, body=body), "conv")
    torch.manual_seed(0)
    layer = ns["Conv"](2, 3, dtype=torch.float64)
    fn = ns["ConvFunction"].apply
    inputs = (torch.randn(*shape, dtype=torch.float64, requires_grad=True), layer.weight, layer.bias)
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)
    seed = torch.randn_like(fn(*inputs))
    got = torch.autograd.grad(fn(*inputs), inputs, seed)
    want = torch.autograd.grad(ns["conv"](*inputs), inputs, seed)
    assert all(torch.allclose(a, b) for a, b in zip(got, want))
    w, b = layer.weight.detach(), layer.bias.detach()
    xs = torch.randn(2, *shape, dtype=torch.float64)
    batched = torch.func.vmap(torch.func.grad(lambda t: fn(t, w, b).square().sum()))(xs)
    for i in range(2):
        t = xs[i].clone().requires_grad_()
        (g,) = torch.autograd.grad(ns["conv"](t, w, b).square().sum(), t)
        assert torch.allclose(batched[i], g)


DROPOUT = """
@function
layer Drop(n: int) {
    param w: [n, n] = uniform(-0.5, 0.5)
    example(n = 4)

    forward(x: [B, n]) -> [B, n] {
        return dropout(tanh(x @ w), p = 0.25) * 2
    }
}
"""


def test_dropout_derives_with_its_mask_saved_as_bool():
    ns = compile_spec(DROPOUT, "drop")
    torch.manual_seed(0)
    layer = ns["Drop"](4, dtype=torch.float64)
    fn = ns["DropFunction"].apply
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)

    def seeded(t, w):  # the same mask on every call, so that gradcheck sees one function
        torch.manual_seed(1)
        return fn(t, w, True)[0]

    assert torch.autograd.gradcheck(seeded, (x, layer.w))
    assert torch.autograd.gradgradcheck(seeded, (x, layer.w))
    saved: list[torch.dtype] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.dtype) or t, lambda t: t):
        out, _, keep = fn(x, layer.w, True)
    assert keep.dtype == torch.bool and saved.count(torch.bool) == 1
    assert 0 < keep.sum() < keep.numel()
    want = torch.where(keep, torch.tanh(x @ layer.w) / 0.75, 0) * 2
    assert torch.allclose(out, want)
    seed = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, layer.w), seed)
    ref = torch.autograd.grad(want, (x, layer.w), seed)
    assert all(torch.allclose(a, b) for a, b in zip(got, ref))
    out = fn(x, layer.w, False)[0]  # eval mode: the mask is not applied
    assert torch.allclose(out, torch.tanh(x @ layer.w) * 2)
    (g,) = torch.autograd.grad(out.sum(), x)
    (r,) = torch.autograd.grad((torch.tanh(x @ layer.w) * 2).sum(), x)
    assert torch.allclose(g, r)


# -- the index ops (issue 14's): index tensors are inputs of their own, integer data never differentiated
INDEXING = """
@function
layer Picks(n: int) {{
    param w: [n, n] = uniform(0.5, 1.5)
    example(n = 6)

    forward(x: [B, n], idx: long[B, 2], sel: long[3], ids: long[B, 2]) {{
        return {body}
    }}
}}
"""

POOLING = """
@function
layer Pooling(c: int) {{
    param weight: {weight} = uniform(0.5, 1.5)
    param bias: [c] = uniform(-0.5, 0.5)
    example(c = 2)

    forward(x: {x}) -> {out} {{
        return {body}
    }}
}}
"""

INDEX_FAMILIES = {
    "flip": "flip(tanh(x), [0, 1]) * x[::-1] + sin(x)[:, ::-2][..., :1] * w[0, ::-1]",
    "gather": "gather(x * x, 1, idx) * gather(w, 0, idx[:, :1])",
    "scatter": "scatter(tanh(x), 1, idx, x[:, :2] * w[:4, 2:4]) + scatter_add(x, 0, idx, sin(x)[:, :2])",
    "index_select": "index_select(x * w[:, 0], 1, sel) * index_select(tanh(x), 0, idx[:, 0])[:, :3]",
    "tensor_index": "x[:, sel] * tanh(x)[..., sel] + w[idx[:, :1]][:, 0, :3] * x[idx[:, 0]][:, 1:4]",
    "unflatten": "sum(unflatten(x * x, 1, [2, n // 2]) * unflatten(w[0], 0, [2, -1]), dim = -1)",
    "embedding": "embedding(ids, w * x[:1], padding_idx = 5)[:, 1] * x + embedding(ids, tanh(w), padding_idx = -1)[:, 0]",
    "several_index_tensors": "x[idx[:, 0], sel[:1] + 1] * 2 + w[idx[:, 0], idx[:, 1]] * tanh(x)[idx[:, 1], sel[1:2]]",
}


def _index_inputs() -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        # below B and n (it indexes both), distinct in each row (scatter writes each place once)
        "idx": torch.tensor([[0, 3], [2, 1], [1, 0], [3, 2]]),
        "sel": torch.tensor([4, 0, 4]),  # a repeated index: its gradients add up
        "ids": torch.randint(0, 5, (4, 2), generator=g),  # not the padding row 5: gradcheck sees its value read
    }


@pytest.fixture(params=sorted(INDEX_FAMILIES), name="index_family")
def _index_family(request):
    ns = compile_spec(INDEXING.format(body=INDEX_FAMILIES[request.param]), "picks")
    torch.manual_seed(0)
    layer = ns["Picks"](6, dtype=torch.float64)
    fn = ns["PicksFunction"].apply
    extra = [6] if len(inspect.signature(ns["PicksFunction"].forward).parameters) > 5 else []
    numbers = {"n": 6} if "n" in inspect.signature(ns["picks"]).parameters else {}

    def apply(x, w, ints):  # the Function may return saved intermediates after the output
        y = fn(x, ints["idx"], ints["sel"], ints["ids"], w, *extra)
        return y[0] if isinstance(y, tuple) else y

    def plain(x, w, ints):
        return ns["picks"](x, ints["idx"], ints["sel"], ints["ids"], w, **numbers)

    return plain, layer.w.detach(), apply


def test_index_ops_derive_like_autograd_to_second_order(index_family):
    plain, w0, apply = index_family
    ints = _index_inputs()
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    w = w0.clone().requires_grad_()
    got, want = apply(x, w, ints), plain(x, w, ints)
    assert torch.allclose(got, want)
    seed = torch.randn_like(want)
    firsts = torch.autograd.grad(got, [x, w], seed, create_graph=True)
    refs = torch.autograd.grad(want, [x, w], seed, create_graph=True)
    for a, b in zip(firsts, refs):
        assert torch.allclose(a, b)
        v = torch.randn_like(a)
        second = torch.autograd.grad((a * v).sum(), [x, w], allow_unused=True, retain_graph=True)
        ref = torch.autograd.grad((b * v).sum(), [x, w], allow_unused=True, retain_graph=True)
        for s, r in zip(second, ref):
            assert (s is None and (r is None or r.abs().max() == 0)) or torch.allclose(s, r)


def test_index_ops_pass_gradcheck_and_gradgradcheck(index_family):
    _, w0, apply = index_family
    ints = _index_inputs()
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    w = w0.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: apply(a, b, ints), (x, w))
    assert torch.autograd.gradgradcheck(lambda a, b: apply(a, b, ints), (x, w))


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
def test_index_ops_under_vmap_of_grad_and_jacrev(index_family):
    plain, w, apply = index_family
    ints = _index_inputs()
    xs = torch.randn(3, 4, 6, dtype=torch.float64)

    def loss(f):
        return lambda t: f(t, w, ints).square().sum()

    assert torch.allclose(
        torch.func.vmap(torch.func.grad(loss(apply)))(xs), torch.func.vmap(torch.func.grad(loss(plain)))(xs)
    )
    jac = torch.func.jacrev(lambda t: apply(t, w, ints))(xs[0])
    assert torch.allclose(jac, torch.func.jacrev(lambda t: plain(t, w, ints))(xs[0]))


EMBEDDING = """
@function
layer Lookup(num: int, dim: int) {
    param weight: [num, dim] = normal
    example(num = 5, dim = 3)

    forward(ids: long[B, T]) -> [B, T, dim] {
        return embedding(ids, weight, padding_idx = 1, max_norm = 1.0) * 2
    }
}
"""


def test_embedding_padding_row_gets_no_gradient_and_max_norm_renormalises_in_place_like_torch():
    ns = compile_spec(EMBEDDING, "lookup")
    torch.manual_seed(0)
    ours = ns["Lookup"](5, 3, dtype=torch.float64)
    theirs = torch.nn.Embedding(5, 3, padding_idx=1, max_norm=1.0, dtype=torch.float64)
    theirs.weight.data.copy_(ours.weight.data * 3)  # rows longer than max_norm: renormalised
    ours.weight.data.copy_(theirs.weight.data)
    ids = torch.tensor([[0, 1, 1], [3, 0, 4]])
    got, want = ours(ids), theirs(ids) * 2
    assert torch.allclose(got, want)
    assert torch.allclose(ours.weight, theirs.weight)  # rows 0, 1, 3, 4 renormalised in place, row 2 kept
    assert torch.allclose(ours.weight[2], theirs.weight[2]) and ours.weight[0].norm() <= 1.0 + 1e-12
    seed = torch.randn_like(got)
    (g,) = torch.autograd.grad(got, ours.weight, seed)
    (r,) = torch.autograd.grad(want, theirs.weight, seed)
    assert torch.allclose(g, r) and g[1].abs().max() == 0 and g[2].abs().max() == 0


HEADS = """
@function
layer Heads(h: int, d: int) {
    param w: [h * d, h * d] = uniform(-0.5, 0.5)
    example(h = 2, d = 3)

    forward(x: [B, T, h * d]) -> [B, T, h * d] {
        q = reshape(x @ w, [..., h, d])
        return reshape(softmax(q, dim = -1) * q, [..., h * d])
    }
}
"""


def test_reshape_with_kept_leading_dims_is_unflatten_and_flatten_and_derives():
    spec = parse_file("heads.layer", HEADS)
    source = emit_file(spec, check_program([spec]), "heads.layer", {})
    assert (
        "torch.unflatten(x @ w, -1, [h, d])" in source and "torch.flatten(torch.softmax(q, dim=-1) * q, -2)" in source
    )
    ns: dict = {}
    exec(compile(source, "heads.py", "exec"), ns)
    torch.manual_seed(0)
    layer = ns["Heads"](2, 3, dtype=torch.float64)
    x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)

    def fn(a, b, h, d):
        return ns["HeadsFunction"].apply(a, b, h, d)[0]

    assert torch.allclose(fn(x, layer.w, 2, 3), ns["heads"](x, layer.w, h=2, d=3))
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, 2, 3), (x, layer.w))
    assert torch.autograd.gradgradcheck(lambda a, b: fn(a, b, 2, 3), (x, layer.w))


# One spec per family: (weight shape, input shape declared, body, declared output, an input's size).
POOLING_FAMILIES = {
    "max_pool1d": (
        "[c]",
        "[N, c, L]",
        "max_pool1d(tanh(x), 3, stride = 2, padding = 1) * 2",
        "[N, c, (L - 1) // 2 + 1]",
        (2, 2, 9),
    ),
    "max_pool2d": (
        "[c]",
        "[N, c, H, W]",
        "max_pool2d(x * x, 2) + 1",
        "[N, c, (H - 2) // 2 + 1, (W - 2) // 2 + 1]",
        (2, 2, 6, 5),
    ),
    "max_pool2d_overlap": (
        "[c]",
        "[N, c, H, W]",
        "max_pool2d(sin(x), [3, 2], stride = 1, dilation = [1, 2], ceil_mode = true)",
        "[N, c, H - 2, W - 2]",
        (2, 2, 6, 5),
    ),
    "max_pool3d": (
        "[c]",
        "[N, c, D, H, W]",
        "max_pool3d(exp(x), 2, stride = 1)",
        "[N, c, D - 1, H - 1, W - 1]",
        (1, 2, 3, 4, 3),
    ),
    "avg_pool1d": (
        "[c]",
        "[N, c, L]",
        "avg_pool1d(x * x, 3, stride = 2, padding = 1)",
        "[N, c, (L - 1) // 2 + 1]",
        (2, 2, 9),
    ),
    "avg_pool2d": (
        "[c]",
        "[N, c, H, W]",
        "avg_pool2d(tanh(x), 3, stride = 2, padding = 1, ceil_mode = true, count_include_pad = false)",
        "[N, c, 4, 3]",
        (2, 2, 7, 5),
    ),
    "avg_pool3d": (
        "[c]",
        "[N, c, D, H, W]",
        "avg_pool3d(x * x, 2, divisor_override = 3)",
        "[N, c, (D - 2) // 2 + 1, (H - 2) // 2 + 1, (W - 2) // 2 + 1]",
        (1, 2, 3, 4, 3),
    ),
    "lp_pool1d": ("[c]", "[N, c, L]", "lp_pool1d(exp(x), 2, 3, stride = 2)", "[N, c, (L - 3) // 2 + 1]", (2, 2, 9)),
    "lp_pool2d": (
        "[c]",
        "[N, c, H, W]",
        "lp_pool2d(exp(x), 3, 2)",
        "[N, c, (H - 2) // 2 + 1, (W - 2) // 2 + 1]",
        (2, 2, 6, 5),
    ),
    "adaptive_avg_pool1d": ("[c]", "[N, c, L]", "adaptive_avg_pool1d(x * x, 4)", "[N, c, 4]", (2, 2, 9)),
    "adaptive_avg_pool2d": (
        "[c]",
        "[N, c, H, W]",
        "adaptive_avg_pool2d(tanh(x), [3, 2])",
        "[N, c, 3, 2]",
        (2, 2, 7, 5),
    ),
    "adaptive_max_pool1d": ("[c]", "[N, c, L]", "adaptive_max_pool1d(sin(x), 4)", "[N, c, 4]", (2, 2, 9)),
    "adaptive_max_pool2d": (
        "[c]",
        "[N, c, H, W]",
        "adaptive_max_pool2d(x * x, [3, none])",
        "[N, c, 3, W]",
        (2, 2, 7, 5),
    ),
    # output sizes that fit the input evenly: the pseudo-random windows are then the same on every call
    "fractional_max_pool2d": (
        "[c]",
        "[N, c, H, W]",
        "fractional_max_pool2d(x * x, 2, output_size = [3, 2])",
        "[N, c, 3, 2]",
        (2, 2, 6, 4),
    ),
    "fractional_max_pool3d": (
        "[c]",
        "[N, c, D, H, W]",
        "fractional_max_pool3d(sin(x), 2, output_size = 2)",
        "[N, c, 2, 2, 2]",
        (1, 2, 4, 4, 4),
    ),
    "adaptive_max_pool3d": (
        "[c]",
        "[N, c, D, H, W]",
        "adaptive_max_pool3d(x * x, 2)",
        "[N, c, 2, 2, 2]",
        (1, 2, 3, 4, 5),
    ),
    "pad_constant": (
        "[c]",
        "[N, c, H, W]",
        'pad(tanh(x), [1, 2, 0, 1], "constant", 0.5)',
        "[N, c, H + 1, W + 3]",
        (2, 2, 4, 3),
    ),
    "pad_crop": ("[c]", "[N, c, L]", "pad(x * x, [-1, 2])", "[N, c, L + 1]", (2, 2, 5)),
    "pad_reflect": (
        "[c]",
        "[N, c, H, W]",
        'pad(sin(x), [2, 1, 1, 1], "reflect")',
        "[N, c, H + 2, W + 3]",
        (2, 2, 4, 3),
    ),
    "pad_replicate1d": ("[c]", "[N, c, L]", 'pad(x * x, [2, 3], "replicate")', "[N, c, L + 5]", (2, 2, 4)),
    "pad_circular1d": ("[c]", "[N, c, L]", 'pad(x * x, [2, 3], "circular")', "[N, c, L + 5]", (2, 2, 4)),
    "pad_circular_crop": ("[c]", "[N, c, L]", 'pad(x * x, [-1, 2], "circular")', "[N, c, L + 1]", (2, 2, 5)),
    "pad_circular3d": (
        "[c]",
        "[N, c, D, H, W]",
        'pad(tanh(x), [1, 0, 2, -1, 1, 1], "circular")',
        "[N, c, D + 2, H + 1, W + 1]",
        (1, 2, 2, 3, 2),
    ),
    "pad_replicate3d": (
        "[c]",
        "[N, c, D, H, W]",
        'pad(tanh(x), [1, 0, 0, 1, 1, 1], "replicate")',
        "[N, c, D + 2, H + 1, W + 1]",
        (1, 2, 2, 3, 2),
    ),
    "prelu_channels": ("[c]", "[N, c, H, W]", "prelu(x, weight) * 2", "[N, c, H, W]", (2, 2, 3, 4)),
    "prelu_one": ("[1]", "[N, c, L]", "prelu(x * x - 1, weight)", "[N, c, L]", (2, 2, 5)),
    "glu": ("[c]", "[N, c, L]", "glu(x * x, dim = 1)", "[N, c // 2, L]", (2, 2, 5)),
    "glu_last": ("[c]", "[N, c, L]", "glu(tanh(x))", "[N, c, L // 2]", (2, 2, 6)),
    "conv3d": (
        "[c, c, 2, 1, 2]",
        "[N, c, D, H, W]",
        "conv3d(tanh(x), weight, bias, stride = [1, 2, 1], padding = 1)",
        "[N, c, D + 1, 3, W + 1]",
        (1, 2, 3, 4, 3),
    ),
    "conv_transpose1d": (
        "[c, c, 3]",
        "[N, c, L]",
        "conv_transpose1d(x * x, weight, bias, stride = 2, padding = 1, output_padding = 1)",
        "[N, c, 2 * L]",
        (2, 2, 4),
    ),
    "conv_transpose2d": (
        "[c, 1, 3, 2]",
        "[N, c, H, W]",
        "conv_transpose2d(tanh(x), weight, bias, stride = [2, 1], groups = 2, dilation = 2)",
        "[N, 2, 2 * H + 3, W + 2]",
        (2, 2, 3, 4),
    ),
    "conv_transpose3d": (
        "[c, c, 2, 2, 2]",
        "[N, c, D, H, W]",
        "conv_transpose3d(x * x, weight, bias, stride = 2)",
        "[N, c, 2 * D, 2 * H, 2 * W]",
        (1, 2, 2, 3, 2),
    ),
}


# The numerical checks (slow) on one or two specs per family; every spec above is compared with autograd.
CHECKED = sorted(set(POOLING_FAMILIES) - {"max_pool2d", "avg_pool1d", "lp_pool2d", "adaptive_avg_pool1d"}
                 - {"adaptive_max_pool1d", "pad_replicate1d", "pad_circular1d", "pad_circular_crop"}
                 - {"glu_last", "conv_transpose3d"})  # fmt: skip


def _pooling_family(name: str):
    weight, x, body, out, shape = POOLING_FAMILIES[name]
    ns = compile_spec(POOLING.format(weight=weight, x=x, body=body, out=out), "pooling")
    torch.manual_seed(0)
    layer = ns["Pooling"](2, dtype=torch.float64)
    fn = ns["PoolingFunction"].apply

    def apply(*inputs):
        y = fn(*inputs)
        return y[0] if isinstance(y, tuple) else y

    # distinct values, so that no window of a max pooling has a tie (where the two sides differ)
    x = (torch.randperm(math.prod(shape), dtype=torch.float64) / math.prod(shape) - 0.4).reshape(shape)
    return ns["pooling"], apply, (x.requires_grad_(), layer.weight, layer.bias)


@pytest.fixture(params=sorted(POOLING_FAMILIES), name="pooling")
def _pooling(request):
    return _pooling_family(request.param)


@pytest.fixture(params=CHECKED, name="checked")
def _checked(request):
    return _pooling_family(request.param)


def test_pooling_family_matches_autograd_to_second_order(pooling):
    plain, apply, inputs = pooling
    got, want = apply(*inputs), plain(*inputs)
    assert torch.allclose(got, want)
    seed = torch.randn_like(want)
    firsts = torch.autograd.grad(got, inputs, seed, create_graph=True, materialize_grads=True)
    refs = torch.autograd.grad(want, inputs, seed, create_graph=True, materialize_grads=True)
    for a, b in zip(firsts, refs):
        assert torch.allclose(a, b)
        v = torch.randn_like(a)
        for s, r in zip(_second(a, v, inputs), _second(b, v, inputs)):
            assert torch.allclose(s, r)


def _second(first: torch.Tensor, v: torch.Tensor, inputs) -> list[torch.Tensor]:
    """The gradients of `first . v` (zeros where it does not depend on an input)."""
    if not first.requires_grad:
        return [torch.zeros_like(t) for t in inputs]
    return list(torch.autograd.grad((first * v).sum(), inputs, retain_graph=True, materialize_grads=True))


def test_pooling_family_gradcheck_and_gradgradcheck(checked):
    _, apply, inputs = checked
    assert torch.autograd.gradcheck(apply, inputs)
    assert torch.autograd.gradgradcheck(apply, inputs)


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # fractional pooling's fallback
def test_pooling_family_vmap_of_grad_and_jacrev(checked, request):
    plain, apply, (x, weight, bias) = checked
    w, b = weight.detach(), bias.detach()
    xs = torch.stack([x.detach(), x.detach().flip(-1) * 2])

    def loss(f):
        return lambda t: f(t, w, b).square().sum()

    # fractional pooling draws its windows' offsets (torch.rand): vmap must be told how
    randomness = "same" if "fractional" in request.node.callspec.id else "error"
    batched = torch.func.vmap(torch.func.grad(loss(apply)), randomness=randomness)(xs)
    want = torch.func.vmap(torch.func.grad(loss(plain)), randomness=randomness)(xs)
    assert torch.allclose(batched, want)
    assert torch.allclose(
        torch.func.jacrev(lambda t: apply(t, w, b))(xs[0]), torch.func.jacrev(lambda t: plain(t, w, b))(xs[0])
    )


PARTS = """
@function
layer Parts(d: int) {
    param w: [2 * d] = uniform(0.5, 1.5)
    example(d = 3)

    forward(x: [B, 2 * d]) -> [B, d] {
        a, b = chunk(x * w, 2, dim = -1)
        q, k, v = split(tanh(x), [d, 1, d - 1], dim = 1)
        top, bottom = split(x, 2, dim = 0)
        return a * sigmoid(b) + q * cat([k, v], dim = -1) + sum(top * bottom, dim = 0, keepdim = true)[..., :d]
    }
}
"""


def _parts():
    spec = parse_file("parts.layer", PARTS)
    source = emit_file(spec, check_program([spec]), "parts.layer", {})
    ns: dict = {}
    exec(compile(source, "parts.py", "exec"), ns)
    torch.manual_seed(0)
    layer = ns["Parts"](3, dtype=torch.float64)
    function = ns["PartsFunction"].apply

    def apply(*inputs):
        y = function(*inputs)
        return y[0] if isinstance(y, tuple) else y  # an intermediate it saves may be an extra output

    return source, ns, layer.w.detach().clone().requires_grad_(), apply


def test_chunk_and_split_derive_like_autograd_to_second_order():
    source, ns, w, apply = _parts()
    assert "torch.chunk(x * w, 2, dim=-1)" in source and "torch.split(torch.tanh(x), [d, 1, d - 1], dim=1)" in source
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    got, want = apply(x, w, 3), ns["parts"](x, w, d=3)
    assert torch.allclose(got, want)
    seed = torch.randn_like(want)
    firsts = torch.autograd.grad(got, [x, w], seed, create_graph=True)
    refs = torch.autograd.grad(want, [x, w], seed, create_graph=True)
    for a, b in zip(firsts, refs):
        assert torch.allclose(a, b)
        v = torch.randn_like(a)
        for s, r in zip(_second(a, v, [x, w]), _second(b, v, [x, w])):
            assert torch.allclose(s, r)
    assert torch.autograd.gradcheck(lambda a, b: apply(a, b, 3), (x, w))
    assert torch.autograd.gradgradcheck(lambda a, b: apply(a, b, 3), (x, w))


MASKED = """
@function
layer Masked(n: int) {
    \"\"\"Bool-mask indexes: an input mask, a comparison of a parameter, a comparison of the input.\"\"\"
    param w: [n] = uniform(0.5, 1.5)
    example(n = 4)

    forward(x: [B, n], m: bool[B]) {
        return sum(tanh(x * w)[m] * 2, dim = 0) + sum(x[:, w > 1] ** 2) + sum(exp(x)[x > 0])
    }
}
"""


def test_a_bool_mask_index_derives():
    """How many elements a mask picks is data: the backward puts the gradient back where the mask is True."""
    ns = compile_spec(MASKED, "masked")
    torch.manual_seed(0)
    layer = ns["Masked"](4, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([True, False, True, True, False])

    def apply(a, w):
        y = ns["MaskedFunction"].apply(a, mask, w)
        return y[0] if isinstance(y, tuple) else y

    assert torch.autograd.gradcheck(apply, (x, layer.w))
    assert torch.autograd.gradgradcheck(apply, (x, layer.w))
    seed = torch.randn(4, dtype=torch.float64)
    got = torch.autograd.grad(apply(x, layer.w), [x, layer.w], seed)
    want = torch.autograd.grad(ns["masked"](x, mask, layer.w), [x, layer.w], seed)
    assert all(torch.allclose(a, b) for a, b in zip(got, want))


LINEAR_CROSS_ENTROPY = """
@function
layer Scored(d: int, c: int) {{
    \"\"\"Logits of a linear map scored by cross entropy, as one op.\"\"\"
    param w: [c, d] = normal
    param b: [c] = normal
    example(d = 4, c = 3)

    forward(x: {x}, t: {t}) {{
        return linear_cross_entropy(x, w, t, {options})
    }}
}}
"""


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
@pytest.mark.parametrize(
    ("x", "t", "options", "torch_options"),
    [
        ("[B, d]", "long[B]", "linear_bias = b", {"linear_bias": "b"}),
        ("[B, d]", "long[B]", 'ignore_index = 1, reduction = "sum"', {"ignore_index": 1, "reduction": "sum"}),
        ("[B, d]", "long[B]", "linear_bias = b, label_smoothing = 0.25", {"linear_bias": "b", "label_smoothing": 0.25}),
        ("[B, d]", "[B, c]", 'linear_bias = b, reduction = "none"', {"linear_bias": "b", "reduction": "none"}),
        ("[d]", "long[]", "linear_bias = b", {"linear_bias": "b"}),
    ],
)
def test_linear_cross_entropy_derives_like_torch(x, t, options, torch_options):
    ns = compile_spec(LINEAR_CROSS_ENTROPY.format(x=x, t=t, options=options), "scored")
    torch.manual_seed(0)
    layer = ns["Scored"](4, 3, dtype=torch.float64)
    inp = torch.randn(*((5, 4) if x == "[B, d]" else (4,)), dtype=torch.float64, requires_grad=True)
    if t == "[B, c]":
        target = torch.softmax(torch.randn(5, 3, dtype=torch.float64), -1)
    else:
        target = torch.tensor([0, 1, 2, 1, 0]) if x == "[B, d]" else torch.tensor(2)
    kwargs = {k: (layer.b if v == "b" else v) for k, v in torch_options.items()}
    want = torch.nn.functional.linear_cross_entropy(inp, layer.w, target, **kwargs)
    got = layer(inp, target)
    assert torch.allclose(got, want)
    seed = torch.randn_like(want)
    params = [inp, layer.w, layer.b] if "linear_bias" in kwargs else [inp, layer.w]
    firsts = torch.autograd.grad(got, params, seed, create_graph=True)
    refs = torch.autograd.grad(want, params, seed, create_graph=True)
    assert all(torch.allclose(a, r) for a, r in zip(firsts, refs))
    seconds = torch.autograd.grad(sum((g * g).sum() for g in firsts), params)
    ref_seconds = torch.autograd.grad(sum((g * g).sum() for g in refs), params)
    assert all(torch.allclose(a, r) for a, r in zip(seconds, ref_seconds))
    assert torch.autograd.gradcheck(lambda a, w, b: _scored(ns, a, target, w, b), (inp, layer.w, layer.b))
    batched = torch.func.vmap(
        torch.func.grad(lambda a: _scored(ns, a, target, layer.w.detach(), layer.b.detach()).sum())
    )(torch.stack([inp.detach(), inp.detach() * 2]))
    for k, scale in enumerate((1, 2)):
        a = (inp.detach() * scale).requires_grad_()
        (g,) = torch.autograd.grad(ns["scored"](a, target, layer.w, layer.b).sum(), a)
        assert torch.allclose(batched[k], g)


def _scored(ns, a, target, w, b):
    y = ns["ScoredFunction"].apply(a, target, w, b)
    return y[0] if isinstance(y, tuple) else y


OPTIONAL_INPUTS = """
@function
layer Gated(n: int) {
    \"\"\"Optional inputs: a gate applied where given, a shift added where given.\"\"\"
    param w: [n] = uniform(0.5, 1.5)
    example(n = 4)

    forward(x: [B, n], gate: [B, n]? = none, shift: [n]? = none) -> [B, n] {
        h = tanh(x * w)
        if gate != none {
            h = h * sigmoid(gate)
        }
        return h * 2 + shift
    }
}
"""


@pytest.mark.parametrize(("with_gate", "with_shift"), [(True, True), (True, False), (False, True), (False, False)])
def test_optional_inputs_derive_given_or_not(with_gate, with_shift):
    """The Function takes the optional inputs (None when absent, with a None gradient); `if gate != none`
    chooses the same side in backward (`ctx.gate_shape`), and `+ shift` is `x` when shift is None."""
    ns = compile_spec(OPTIONAL_INPUTS, "gated")
    torch.manual_seed(0)
    layer = ns["Gated"](4, dtype=torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    gate = torch.randn(3, 4, dtype=torch.float64, requires_grad=True) if with_gate else None
    shift = torch.randn(4, dtype=torch.float64, requires_grad=True) if with_shift else None
    tensors = [t for t in (x, gate, shift, layer.w) if t is not None]

    def apply(*given):
        it = iter(given)
        args = [next(it), next(it) if with_gate else None, next(it) if with_shift else None, next(it)]
        y = ns["GatedFunction"].apply(*args)
        return y[0] if isinstance(y, tuple) else y

    assert torch.allclose(apply(*tensors), ns["gated"](x, layer.w, gate=gate, shift=shift))
    assert torch.autograd.gradcheck(apply, tuple(tensors))
    assert torch.autograd.gradgradcheck(apply, tuple(tensors))
    grads = torch.autograd.grad(layer(x, gate, shift).sum(), [x, layer.w])
    want = torch.autograd.grad(ns["gated"](x, layer.w, gate=gate, shift=shift).sum(), [x, layer.w])
    assert all(torch.allclose(a, b) for a, b in zip(grads, want))
    w = layer.w.detach()
    xs = torch.randn(2, 3, 4, dtype=torch.float64)
    detached = [None if t is None else t.detach() for t in (gate, shift)]
    batched = torch.func.vmap(torch.func.grad(lambda t: ns["GatedFunction"].apply(t, *detached, w)[0].sum()))(xs)
    for k in range(2):
        t = xs[k].clone().requires_grad_()
        (g,) = torch.autograd.grad(ns["gated"](t, w, gate=detached[0], shift=detached[1]).sum(), t)
        assert torch.allclose(batched[k], g)


SHAPE_ONLY = """
@function
layer PerRow(n: int) {
    \"\"\"A shape-only use: the mean over rows by the row count.\"\"\"
    example(n = 4)

    forward(x: [B, n]) -> [B, n] {
        rows = size_at(x, 0)
        return x * 2 / rows
    }
}
"""


def test_size_at_saves_no_tensor():
    """`size_at(x, 0)` of `x: [B, n]` is the dim B, kept on ctx as a number: the backward reads no tensor."""
    ns = compile_spec(SHAPE_ONLY, "per_row")
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    y = ns["PerRowFunction"].apply(x)
    y = y[0] if isinstance(y, tuple) else y
    assert len(y.grad_fn.saved_tensors) == 0
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(g, torch.full_like(x, 2 / 5))
