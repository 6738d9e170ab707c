"""`@function` layers: torch.func, torch.compile, surrogates, what is saved, and derivation errors."""

from __future__ import annotations

import importlib

import pytest
import torch

from layerdsl.driver.cli import main


def _module(gen, name):
    return importlib.import_module(f"{gen.__name__}.{name}")


def _saved_storages(fn, *args) -> int:
    """Bytes of the unique storages autograd keeps for backward."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sum(seen.values())


def test_vmap_and_func_grad_work_on_a_function(gen):
    torch.manual_seed(0)
    m = gen.SwishFunctional(5, dtype=torch.float64)
    xs = torch.randn(3, 4, 5, dtype=torch.float64)
    batched = torch.func.vmap(m)(xs)
    assert torch.allclose(batched, torch.stack([m(x) for x in xs]))
    beta = m.beta.detach()
    fn = _module(gen, "swish_function").SwishFunctionalFunction.apply
    g = torch.func.grad(lambda x: fn(x, beta).sum())(xs[0])
    x = xs[0].clone().requires_grad_()
    (m(x).sum()).backward()
    assert torch.allclose(g, x.grad)


def test_vmap_over_a_function_with_saved_intermediates(gen):
    m = gen.RMSNormFunctional(6, dtype=torch.float64)
    xs = torch.randn(2, 3, 6, dtype=torch.float64)
    assert torch.allclose(torch.func.vmap(m)(xs), torch.stack([m(x) for x in xs]))


def test_torch_compile_fullgraph(gen):
    torch._dynamo.reset()
    m = gen.SwishFunctional(5)
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    x = torch.randn(4, 5, requires_grad=True)
    out = compiled(x)
    assert torch.allclose(out, m(x))
    out.sum().backward()
    assert x.grad is not None and m.beta.grad is not None


def test_surrogates_return_their_declared_gradients(gen):
    x = torch.randn(3, 4, requires_grad=True)
    gen.GradientReversal(scale=0.5)(x).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, -0.5))
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = gen.StraightThroughRound()(x)
    assert torch.equal(y, torch.round(x))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x)) and x.grad.dtype == torch.float64


def test_handwritten_backward_matches_autograd(gen):
    m = gen.ScaledTanh(4, dtype=torch.float64)
    with torch.no_grad():
        m.scale.uniform_(0.5, 2)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(m(x).sum(), x)
    (ref,) = torch.autograd.grad((m.scale * torch.tanh(x)).sum(), x)
    assert torch.allclose(g, ref)


def test_function_saves_about_half_of_what_autograd_saves(gen):
    x = torch.randn(256, 64, requires_grad=True)
    for fn_layer, module_layer in [
        (gen.SwishFunctional(64), gen.Swish(64)),
        (gen.RMSNormFunctional(64), gen.RMSNorm(64)),
    ]:
        saved_fn = _saved_storages(fn_layer, x)
        saved_module = _saved_storages(module_layer, x)
        assert saved_fn <= 0.55 * saved_module, (type(fn_layer).__name__, saved_fn, saved_module)
    chain, x2 = gen.FusedChain(), torch.randn(256, 64, requires_grad=True)
    from torch import sigmoid, tanh

    plain = _saved_storages(lambda t: tanh(chain.a * t + chain.b) * sigmoid(chain.c * t), x2)
    assert _saved_storages(chain, x2) <= 0.4 * plain


def test_unneeded_gradients_save_less(gen):
    m = gen.MyLayerFunctional(64, 32)
    x = torch.rand(128, 64)
    everything = _saved_storages(m, x.clone().requires_grad_())
    m.bias.requires_grad_(False)
    only_weight = _saved_storages(m, x)  # the weight itself is not needed for the weight's gradient
    assert only_weight == everything - m.weight.numel() * 4
    mod = _module(gen, "my_layer_function")
    y = mod.MyLayerFunctionalFunction.apply(x.clone().requires_grad_(), m.weight, None)
    assert torch.allclose(y, mod.my_layer_functional(x, m.weight, None))


def test_optional_member_absent_in_a_function(gen):
    m = gen.MyLayerFunctional(5, 3, bias=False, dtype=torch.float64)
    x = torch.rand(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


@pytest.mark.parametrize(
    ("body", "message", "where"),
    [
        ("return sign(x) * x", "sign() has no derivative", "7:16"),
        ("return abs(fft(x))", "abs() of a complex value has no derivative", "7:16"),
        ("return x[x > 0, 1:]", "index tensors with `:` or `...` for the other dims", "7:18"),
    ],
)
def test_what_cannot_be_derived_is_a_located_error(tmp_path, capsys, body, message, where):
    spec = tmp_path / "specs"
    spec.mkdir()
    (spec / "bad.layer").write_text(
        '@function\nlayer Bad() {\n    """A layer."""\n    example()\n\n    forward(x) {\n        '
        + body
        + "\n    }\n}\n"
    )
    assert main(["gen", str(spec), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"specs/bad.layer:{where}: error:" in err and message in err and "backward" in err
    assert not (tmp_path / "out").exists()


def test_show_prints_the_derived_backward(capsys):
    from .conftest import SPECS

    assert main(["show", str(SPECS / "swish_function.layer"), "--layer", "SwishFunctional"]) == 0
    out = capsys.readouterr().out
    assert "class SwishFunctionalFunction(torch.autograd.Function):" in out
    assert "def backward(ctx, grad_out):" in out and "ctx.needs_input_grad[1]" in out


def _full_size_buffers(step, shape) -> tuple[int, int]:
    """(new tensors of `shape` that ATen allocates, in-place updates) while `step` runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        fresh = inplace = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func._schema.name
            if name.endswith("_") and not name.endswith("__"):
                Count.inplace += 1
            elif (
                isinstance(out, torch.Tensor)
                and tuple(out.shape) == shape
                and not out._is_view()
                and func._schema.is_mutable is False
            ):
                if all(
                    out.untyped_storage().data_ptr() != a.untyped_storage().data_ptr()
                    for a in args
                    if isinstance(a, torch.Tensor)
                ):
                    Count.fresh += 1
            return out

    with Count():
        step()
    return Count.fresh, Count.inplace


@pytest.mark.parametrize(
    ("layer", "at_most", "recorded_at_most"),
    [("SwishFunctional", 3, 5), ("FusedChain", 6, 9), ("RMSNormFunctional", 4, 5)],
)
def test_derived_backward_reuses_its_temporaries(gen, layer, at_most, recorded_at_most):
    """The derived backward updates temporaries it owns in place and uses fused kernels; written out of
    place (before the fusion pass) it allocated 10 (Swish), 18 (chain) and 8 (RMSNorm) full-size buffers.
    Recorded (create_graph=True) it may not update what autograd keeps, so it takes more."""
    m = getattr(gen, layer)(*([64] if layer != "FusedChain" else []))
    x = torch.randn(256, 64, requires_grad=True)
    y = m(x)
    g = torch.randn_like(y)
    params = [x, *m.parameters()]
    fresh, inplace = _full_size_buffers(lambda: torch.autograd.grad(y, params, g, retain_graph=True), (256, 64))
    assert fresh <= at_most and inplace > 0, (fresh, inplace)
    fresh, _ = _full_size_buffers(lambda: torch.autograd.grad(y, params, g, create_graph=True), (256, 64))
    assert fresh <= recorded_at_most, fresh


def test_forward_updates_its_own_temporaries(gen):
    """The Function's forward runs its one-operand operations on the temporaries it owns in place and
    fuses `x * x + bias`: MyLayer's forward makes one [B, in] buffer (three before); Swish's makes two,
    its output included (three before)."""
    m = gen.MyLayerFunctional(64, 32)
    x = torch.rand(256, 64)
    assert _full_size_buffers(lambda: m(x), (256, 64))[0] == 1
    assert _full_size_buffers(lambda: gen.SwishFunctional(64)(x), (256, 64))[0] == 2


_BATCHED = {
    "SwishFunctional": ([5], (3, 5)),
    "FusedChain": ([], (3, 5)),
    "RMSNormFunctional": ([5], (3, 5)),
    "MyLayerFunctional": ([5, 4], (3, 5)),
    "ChannelNorm": ([2], (2, 2, 3, 3)),
    "ChannelNormIndexed": ([2], (2, 2, 3, 3)),
}


@pytest.mark.parametrize("create_graph", [False, True], ids=["first-order", "recorded"])
@pytest.mark.parametrize("layer", sorted(_BATCHED))
def test_batched_gradients_match_one_at_a_time(gen, layer, create_graph):
    """`is_grads_batched` runs the backward under vmap with batched incoming gradients and unbatched
    saved tensors: an in-place update may only write into a tensor at least as batched as what it reads."""
    torch.manual_seed(0)
    args, shape = _BATCHED[layer]
    m = getattr(gen, layer)(*args, dtype=torch.float64)
    x = torch.rand(*shape, dtype=torch.float64, requires_grad=True)
    inputs = [x, *m.parameters()]
    y = m(x)
    seeds = torch.randn(4, *y.shape, dtype=torch.float64)
    batched = torch.autograd.grad(y, inputs, seeds, is_grads_batched=True, retain_graph=True, create_graph=create_graph)
    for k, seed in enumerate(seeds):
        one = torch.autograd.grad(y, inputs, seed, retain_graph=True)
        for b, o in zip(batched, one):
            assert torch.allclose(b[k], o, rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # torch.func's addcmul_ fallback
def test_jacrev_through_a_function(gen):
    """torch.func.jacrev vmaps the backward over basis vectors while the saved input is unbatched."""
    torch.manual_seed(0)
    m = gen.FusedChain(dtype=torch.float64)
    fn = _module(gen, "fused_chain").FusedChainFunction.apply
    x = torch.randn(2, 3, dtype=torch.float64)
    a, b, c = (p.detach() for p in (m.a, m.b, m.c))
    jac = torch.func.jacrev(lambda t: fn(t, a, b, c))(x)
    want = torch.autograd.functional.jacobian(lambda t: torch.tanh(a * t + b) * torch.sigmoid(c * t), x)
    assert torch.allclose(jac, want)


def test_both_grad_modes_give_the_same_gradients(gen):
    """The backward branches on grad mode (recorded: nothing autograd keeps is updated in place); both
    branches compute the same gradients."""
    torch.manual_seed(0)
    for layer, (args, shape) in _BATCHED.items():
        m = getattr(gen, layer)(*args, dtype=torch.float64)
        x = torch.rand(*shape, dtype=torch.float64, requires_grad=True)
        inputs = [x, *m.parameters()]
        y = m(x)
        g = torch.randn_like(y)
        plain = torch.autograd.grad(y, inputs, g, retain_graph=True)
        recorded = torch.autograd.grad(y, inputs, g, retain_graph=True, create_graph=True)
        for p, r in zip(plain, recorded):
            assert torch.allclose(p, r, rtol=1e-12, atol=1e-14), layer


@pytest.mark.parametrize("wide", ["input", "parameters"])
@pytest.mark.parametrize(
    "layer", ["SwishFunctional", "FusedChain", "RMSNormFunctional", "ChannelNorm", "MyLayerFunctional"]
)
def test_in_place_backward_with_mixed_dtypes(gen, layer, wide):
    """float64 input with float32 parameters and the reverse: an in-place update must never meet an
    operand of a wider dtype (the module with float64 parameters and a float32 input still works)."""
    torch.manual_seed(0)
    args = {"FusedChain": [], "ChannelNorm": [4], "MyLayerFunctional": [6, 3]}.get(layer, [6])
    m = getattr(gen, layer)(*args, dtype=torch.float64 if wide == "parameters" else torch.float32)
    shape = (2, 4, 3, 3) if layer == "ChannelNorm" else (5, 6)
    x = torch.rand(*shape, dtype=torch.float64 if wide == "input" else torch.float32, requires_grad=True)
    params = list(m.parameters())
    try:
        want = torch.autograd.grad(_plain(m)(x, *params, **_numbers(m)).sum(), [x, *params])
    except TypeError:  # matmul wants one dtype: the input check refuses, the Function's just the same
        with pytest.raises(TypeError, match="input 'x' is torch.float"):
            m(x)
        return
    got = torch.autograd.grad(m(x).sum(), [x, *params])
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def _plain(m):
    mod = importlib.import_module(type(m).__module__)
    return getattr(mod, next(n for n in mod.__all__ if n[0].islower()))


def _numbers(m) -> dict:
    return {k: getattr(m, k) for k in ("eps",) if hasattr(m, k) and not isinstance(getattr(m, k), torch.Tensor)}


@pytest.mark.parametrize(
    ("module", "function", "args", "shape"),
    [
        (
            "channel_norm",
            "ChannelNormFunction",
            lambda: [torch.rand(3, 1, 1, dtype=torch.float64), torch.randn(3, 1, 1, dtype=torch.float64), 1e-5],
            (2, 3, 2, 2),
        ),
        (
            "channel_norm_indexed",
            "ChannelNormIndexedFunction",
            lambda: [torch.rand(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64), 1e-5],
            (2, 3, 2, 2),
        ),
    ],
)
def test_saved_intermediates_are_differentiable_outputs(gen, module, function, args, shape):
    """A Function that saves a costly intermediate returns it as an extra output whose gradient (None
    unless something reads it: double backward) has a section of its own; gradcheck over every output
    checks each section alone, since it feeds one output's gradient at a time."""
    torch.manual_seed(0)
    fn = getattr(_module(gen, module), function).apply
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    *params, eps = args()
    params = [p.requires_grad_() for p in params]
    assert torch.autograd.gradcheck(lambda *t: fn(*t, eps), (x, *params))
    out = fn(x, *params, eps)
    assert len(out) > 1
    g0, g1 = torch.randn_like(out[0]), torch.randn_like(out[1])
    main = torch.autograd.grad(out[0], x, g0, retain_graph=True)[0]
    only_extra = torch.autograd.grad(out[1], x, g1, retain_graph=True)[0]  # the main section does not run
    both = torch.autograd.grad(out[:2], x, (g0, g1))[0]  # both sections, the second adding to the first
    assert torch.allclose(both, main + only_extra)


def test_a_saved_value_recomputable_from_what_is_saved_goes_out_non_differentiable(gen):
    """RMSNorm saves `rsqr = rsqrt(mean(x * x) + eps)` and `x`: `rsqr` goes out marked non-differentiable, as
    a hand-written Function marks its `rstd` (no gradient section of its own), and a recorded backward
    computes it again from `x`, so that double backward still sees it depend on `x`."""
    fn = _module(gen, "rms_norm_function").RMSNormFunctionalFunction.apply
    torch.manual_seed(0)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    weight = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_()
    assert not fn(x, weight, 1e-6)[1].requires_grad
    assert torch.autograd.gradcheck(lambda x, w: fn(x, w, 1e-6)[0], (x, weight))
    assert torch.autograd.gradgradcheck(lambda x, w: fn(x, w, 1e-6)[0], (x, weight))


def test_grad_modes_share_their_common_statements_and_branch_inside_a_common_guard():
    from layerdsl.codegen.function import Assign, Delete, If, by_grad_mode
    from layerdsl.codegen.pyexpr import PyExpr, Spelling
    from layerdsl.ir import build as B

    ex = PyExpr(Spelling())
    product = B.binop("*", B.name("grad_out"), B.name("t"))
    in_place = B.call("mul_", B.name("t"), B.name("grad_out"))

    def backward(value, *after):
        return [Assign("t", B.name("x")), If("ctx.needs_input_grad[0]", [Assign("grad_x", value), *after])]

    same = backward(product)
    assert by_grad_mode(same, backward(product)) == same
    merged = by_grad_mode(backward(product, Delete(("t",))), backward(in_place))
    assert [line for code in merged for line in code.lines(ex)] == [
        "t = x",
        "if ctx.needs_input_grad[0]:",
        "    # create_graph=True: autograd records this backward, so nothing it saves is updated in place",
        "    if torch.is_grad_enabled():",
        "        grad_x = grad_out * t",
        "        del t",
        "    else:",
        "        grad_x = mul_(t, grad_out)",
    ]


LINEAR_CE = """@function
layer Lce(d: int, c: int) {
    \"\"\"Logits of a linear map scored by cross entropy.\"\"\"
    param w: [c, d] = normal
    example(d = 4, c = 3)

    forward(x: [B, d], t: long[B]) {
        return BODY
    }
}
"""


def test_linear_cross_entropy_derives_as_the_cross_entropy_of_its_logits(tmp_path):
    spec = tmp_path / "specs"
    spec.mkdir()
    (spec / "lce.layer").write_text(LINEAR_CE.replace("BODY", "linear_cross_entropy(x, w, t)"))
    assert main(["gen", str(spec), "-o", str(tmp_path / "out")]) == 0
    ns: dict = {}
    exec(compile((tmp_path / "out" / "lce.py").read_text(), "lce.py", "exec"), ns)
    layer = ns["Lce"](4, 3, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 3, (5,))
    want = torch.nn.functional.linear_cross_entropy(x, layer.w, t)
    got = layer(x, t)
    assert torch.allclose(got, want)
    assert torch.autograd.gradcheck(lambda a, w: ns["LceFunction"].apply(a, t, w), (x, layer.w))


@pytest.mark.parametrize(
    ("layer", "args", "member"),
    [("SwishFunctional", [8], "beta"), ("FusedChain", [], "a"), ("MyLayerFunctional", [8, 4], "weight")],
)
def test_the_module_reads_each_parameter_once(gen, layer, args, member):
    """The module's forward checks the input's device against a parameter and passes the parameter to `apply`:
    one read through `nn.Module.__getattr__` (about 0.5 µs each at 32x64), as the plain module's forward makes
    (`codegen.member_reads`)."""
    reads = []

    class Counted(getattr(gen, layer)):
        def __getattr__(self, name):
            reads.append(name)
            return super().__getattr__(name)

    module = Counted(*args)
    reads.clear()  # construction's reads
    module(torch.randn(2, 8))
    assert reads.count(member) == 1, reads
