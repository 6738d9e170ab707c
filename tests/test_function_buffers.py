"""`@function` layers that update buffers, return as many outputs as an argument chooses, or branch on an
input's dtype: the shipped specs compiled with `@function`, against the same specs compiled plain.

Buffers: the Function returns each new value (not differentiable) and the module writes it, so the
buffers after several training steps are the plain module's, bit for bit; outputs and gradients match,
gradcheck and gradgradcheck pass, and what the Function saves is what the backward reads (a centring layer
saves nothing). Outputs chosen by an argument: `return_indices` pooling gives the pooled output with its
int64 indices (no gradient), or the pooled output alone. Dtype tests: `if is_floating_point(mask)` picks a
side in forward and the same side in backward.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
import torch

from .support import compile_spec

SPECS = Path(__file__).resolve().parent.parent / "specs"


def as_function(text: str) -> str:
    """The spec with `@function` above each of its layers."""
    return re.sub(r"^layer ", "@function\nlayer ", text, flags=re.M)


@cache
def compiled(spec: str) -> tuple[dict, dict]:
    """(plain, @function) namespaces of a shipped spec."""
    text = (SPECS / spec).read_text()
    stem = Path(spec).stem
    return compile_spec(text, f"{stem}_plain"), compile_spec(as_function(text), f"{stem}_function")


def pair(spec: str, name: str, **kwargs):
    """The plain and the @function module, in float64, with the same parameters and buffers."""
    plain_ns, function_ns = compiled(spec)
    torch.manual_seed(0)
    plain = plain_ns[name](**kwargs, dtype=torch.float64)
    function = function_ns[name](**kwargs, dtype=torch.float64)
    with torch.no_grad():  # parameters away from their initial ones and zeros, so a wrong gradient shows
        for p in plain.parameters():
            p.uniform_(0.5, 1.5)
    function.load_state_dict(plain.state_dict())
    assert function_ns[f"{name}Function"] is not None
    return plain, function


UPDATING = [
    ("running_center.layer", "RunningCenter", {"num_features": 3}, (5, 3)),
    ("running_center.layer", "RunningCenter", {"num_features": 3, "momentum": 0.5}, (5, 3)),
    ("torch_nn/batchnorm.layer", "BatchNorm1d", {"num_features": 3}, (5, 3, 4)),
    ("torch_nn/batchnorm.layer", "BatchNorm1d", {"num_features": 3}, (6, 3)),
    ("torch_nn/batchnorm.layer", "BatchNorm1d", {"num_features": 3, "momentum": None}, (5, 3, 4)),
    ("torch_nn/batchnorm.layer", "BatchNorm1d", {"num_features": 3, "track_running_stats": False}, (5, 3, 4)),
    ("torch_nn/batchnorm.layer", "BatchNorm1d", {"num_features": 3, "affine": False}, (5, 3, 4)),
    ("torch_nn/batchnorm.layer", "BatchNorm2d", {"num_features": 3, "momentum": None}, (4, 3, 2, 3)),
    ("torch_nn/batchnorm.layer", "BatchNorm2d", {"num_features": 3, "bias": False}, (4, 3, 2, 3)),
    ("torch_nn/batchnorm.layer", "BatchNorm3d", {"num_features": 3}, (2, 3, 2, 2, 3)),
    ("torch_nn/instancenorm.layer", "InstanceNorm1d", {"num_features": 3}, (5, 3, 4)),
    ("torch_nn/instancenorm.layer", "InstanceNorm1d", {"num_features": 3, "track_running_stats": True}, (5, 3, 4)),
    (
        "torch_nn/instancenorm.layer",
        "InstanceNorm1d",
        {"num_features": 3, "track_running_stats": True, "momentum": None, "affine": True},
        (3, 4),
    ),
    (
        "torch_nn/instancenorm.layer",
        "InstanceNorm2d",
        {"num_features": 3, "track_running_stats": True, "affine": True},
        (2, 3, 4, 4),
    ),
    (
        "torch_nn/instancenorm.layer",
        "InstanceNorm3d",
        {"num_features": 3, "track_running_stats": True},
        (2, 3, 2, 3, 3),
    ),
]


def _id(case) -> str:
    _, name, kwargs, shape = case
    return f"{name}-{'-'.join(f'{k}={v}' for k, v in kwargs.items() if k != 'num_features')}-{len(shape)}d"


def _step(module, x: torch.Tensor, seed: torch.Tensor):
    """One forward and backward: the output, the input's and the parameters' gradients."""
    x = x.detach().requires_grad_()
    out = module(x)
    params = list(module.parameters())
    grads = torch.autograd.grad(out, [x, *params], seed)
    return out.detach(), grads


@pytest.mark.parametrize("case", UPDATING, ids=_id)
def test_training_steps_leave_the_plain_modules_buffers(case):
    spec, name, kwargs, shape = case
    plain, function = pair(spec, name, **kwargs)
    torch.manual_seed(1)
    for _ in range(4):  # the cumulative average (momentum None) reads the count each step updates
        x = torch.randn(*shape, dtype=torch.float64) * 2 + 0.5
        seed = torch.randn_like(plain(x.clone()))
        plain.load_state_dict(function.state_dict())  # the probing call above updated the plain buffers
        (want, want_grads), (got, got_grads) = _step(plain, x, seed), _step(function, x, seed)
        torch.testing.assert_close(got, want)
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g, w)
        for (buffer, b), (_, a) in zip(function.named_buffers(), plain.named_buffers()):
            assert b.dtype == a.dtype and torch.equal(b, a), buffer
    assert all(not b.requires_grad for b in function.buffers())
    plain.eval()
    function.eval()
    before = {k: v.clone() for k, v in function.state_dict().items()}
    x = torch.randn(*shape, dtype=torch.float64)
    seed = torch.randn_like(plain(x))
    (want, want_grads), (got, got_grads) = _step(plain, x, seed), _step(function, x, seed)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)
    assert all(torch.equal(v, before[k]) for k, v in function.state_dict().items()), "eval updates nothing"


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", [c for c in UPDATING if len(c[3]) <= 4], ids=_id)
def test_gradcheck_and_gradgradcheck(case, training):
    spec, name, kwargs, shape = case
    _, function = pair(spec, name, **kwargs)
    function.train(training)
    torch.manual_seed(2)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    params = [p for p in function.parameters()]

    def run(x, *values):
        members = dict(zip([n for n, _ in function.named_parameters()], values))
        return torch.func.functional_call(function, members, (x,))

    assert torch.autograd.gradcheck(run, (x, *params))
    assert torch.autograd.gradgradcheck(run, (x, *params))


def _saved(module, x: torch.Tensor) -> list[tuple[torch.dtype, tuple[int, ...]]]:
    saved: list[tuple[torch.dtype, tuple[int, ...]]] = []

    def pack(t):
        saved.append((t.dtype, tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return saved


def test_a_centring_layer_saves_nothing_and_batch_norm_what_an_expert_saves():
    _, center = pair("running_center.layer", "RunningCenter", num_features=3)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert _saved(center, x) == []  # its backward, g - mean(g), reads no value
    _, norm = pair("torch_nn/batchnorm.layer", "BatchNorm1d", num_features=3)
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    saved = _saved(norm, x)
    # the input, the weight, the batch mean and variance: as torch's batch_norm keeps input, weight and
    # its mean and inverse std; no new buffer value, no second input-sized tensor
    assert sorted(saved, key=str) == sorted(
        [(torch.float64, (5, 3, 4)), (torch.float64, (3,)), (torch.float64, (3,)), (torch.float64, (3,))], key=str
    )


def test_the_function_returns_new_buffer_values_and_the_module_writes_them():
    _, function_ns = compiled("torch_nn/batchnorm.layer")
    _, norm = pair("torch_nn/batchnorm.layer", "BatchNorm1d", num_features=3)
    apply = function_ns["BatchNorm1dFunction"].apply
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    args = [x, norm.weight, norm.bias, norm.running_mean, norm.running_var, norm.num_batches_tracked]
    results = apply(*args, 3, 1e-5, 0.1, True, True)
    new_mean, new_var, count = results[-3:]
    assert not (new_mean.requires_grad or new_var.requires_grad or count.requires_grad)
    assert count.dtype == torch.long and int(count) == 1
    torch.testing.assert_close(new_mean, 0.1 * x.detach().mean(0))
    torch.testing.assert_close(new_var, 0.9 + 0.1 * x.detach().var(0))
    assert int(norm.num_batches_tracked) == 0, "the Function itself writes no buffer"
    results = apply(*args, 3, 1e-5, 0.1, True, False)  # eval: nothing to write
    assert results[-3:] == (None, None, None)


def test_vmap_where_the_plain_module_supports_it():
    plain, function = pair("torch_nn/batchnorm.layer", "BatchNorm1d", num_features=3)
    plain.eval()
    function.eval()
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(torch.func.vmap(function)(x), torch.func.vmap(plain)(x))
    plain, function = pair("torch_nn/instancenorm.layer", "InstanceNorm1d", num_features=3, affine=True)
    x = torch.randn(4, 2, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(torch.func.vmap(function)(x), torch.func.vmap(plain)(x))
    jac = torch.func.jacrev(function)(x[0])
    torch.testing.assert_close(jac, torch.func.jacrev(plain)(x[0]))


POOLS = [
    ("MaxPool1d", {"kernel_size": 2}, (2, 3, 8)),
    ("MaxPool1d", {"kernel_size": 3, "stride": 2, "padding": 1}, (3, 9)),
    ("MaxPool2d", {"kernel_size": 2}, (2, 3, 6, 6)),
    ("MaxPool3d", {"kernel_size": 2}, (1, 2, 4, 4, 4)),
    ("FractionalMaxPool2d", {"kernel_size": 2, "output_size": 3}, (2, 3, 7, 7)),
    ("FractionalMaxPool2d", {"kernel_size": 2, "output_ratio": 0.5}, (2, 3, 8, 8)),
    ("FractionalMaxPool3d", {"kernel_size": 2, "output_size": 2}, (1, 2, 5, 5, 5)),
]


@pytest.mark.parametrize("indices", [True, False], ids=["indices", "pooled"])
@pytest.mark.parametrize("case", POOLS, ids=lambda c: f"{c[0]}-{len(c[2])}d-{sorted(c[1])[-1]}")
def test_return_indices_chooses_the_outputs(case, indices):
    name, kwargs, shape = case
    plain, function = pair("torch_nn/pooling.layer", name, **kwargs, return_indices=indices)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(3)  # fractional pooling draws its windows
    want = plain(x)
    torch.manual_seed(3)
    got = function(x)
    if not indices:
        assert isinstance(got, torch.Tensor)
        got, want = (got,), (want,)
    assert isinstance(got, tuple) and len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and torch.equal(g, w)
    if indices:
        assert got[1].dtype == torch.int64 and not got[1].requires_grad
    seed = torch.randn_like(want[0])
    (want_grad,) = torch.autograd.grad(want[0], x, seed)
    (got_grad,) = torch.autograd.grad(got[0], x, seed)
    torch.testing.assert_close(got_grad, want_grad)


@pytest.mark.parametrize("indices", [True, False], ids=["indices", "pooled"])
def test_max_pooling_with_indices_saves_the_indices_only(indices):
    _, function = pair("torch_nn/pooling.layer", "MaxPool2d", kernel_size=2, return_indices=indices)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    assert _saved(function, x) == [(torch.int64, (2, 3, 3, 3))]

    def pooled(x):
        out = function(x)
        return out[0] if indices else out

    assert torch.autograd.gradcheck(pooled, (x,))
    assert torch.autograd.gradgradcheck(pooled, (x,))


MASKED = """
layer MaskedScores(n: int) {
    example(n = 3)

    forward(x: [B, n], mask: bool[B, n]? = none) -> [B, n] {
        scores = x * 2.0
        if mask != none {
            m = unsqueeze(mask, 0)
            if is_floating_point(m) {
                scores = scores + m[0]
            } else {
                scores = where(m[0], -inf, scores)
            }
        }
        return softmax(scores, -1)
    }
}
"""


@pytest.mark.parametrize("mask", ["none", "bool", "float"])
def test_a_dtype_test_picks_the_same_side_in_forward_and_backward(mask):
    plain = compile_spec(MASKED, "masked_plain")["MaskedScores"](3, dtype=torch.float64)
    function_ns = compile_spec(as_function(MASKED), "masked_function")
    function = function_ns["MaskedScores"](3, dtype=torch.float64)
    torch.manual_seed(4)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    given = {
        "none": None,
        "bool": torch.tensor([[True, False, False]] * 4),
        "float": torch.randn(4, 3, dtype=torch.float64),
    }[mask]
    want, got = plain(x, given), function(x, given)
    torch.testing.assert_close(got, want)
    seed = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, x, seed), torch.autograd.grad(want, x, seed))
    assert torch.autograd.gradcheck(lambda x: function(x, given), (x,))
    assert torch.autograd.gradgradcheck(lambda x: function(x, given), (x,))


COUNTED = """
@function
layer CountedScale(n: int) {
    param w: [n] = ones
    buffer calls: long[] = zeros
    buffer last_mean: [n] = zeros
    example(n = 3)

    forward(x: [B, n]) -> [B, n] {
        update calls = calls + 1
        update last_mean = mean(x, dim = 0)
        return x * w
    }

    backward(grad_y) {
        grad x = grad_y * w
        grad w = sum(grad_y * x, dim = 0)
    }
}
"""


def test_a_hand_written_backward_updates_buffers_too():
    layer = compile_spec(COUNTED, "counted")["CountedScale"](3, dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    for _ in range(3):
        layer(x).sum().backward()
    assert layer.calls.dtype == torch.long and int(layer.calls) == 3
    torch.testing.assert_close(layer.last_mean, x.detach().mean(0))
    torch.testing.assert_close(x.grad, torch.full_like(x, 3.0))
