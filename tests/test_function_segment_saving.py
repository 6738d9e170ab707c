"""What a segmented Function (each `if` a `Choice` of its own) saves for backward, against plain autograd on
the same layer (issue 15 item 2: no more bytes than an expert's Function, here autograd's).

A value backward reads only for its shape (`reshape(g, q.shape)`, `sum_to_size(scores.shape)`) keeps its
shape on ctx, not the tensor; a value only one side of an `if` reads (gelu's input, when relu may run
instead) is saved only when that side runs; dropout's mask is drawn only where it drops (training, p > 0).
Measured with `saved_tensors_hooks`, each storage counted once."""

from __future__ import annotations

import pytest
import torch

from .support import compile_spec, saved_bytes, torch_nn_with_and_without_function


@pytest.fixture(scope="module")
def attention(tmp_path_factory) -> tuple:
    """MultiheadAttention generated with `@function` and without (the plain module: autograd)."""
    root = tmp_path_factory.mktemp("attention_saving")
    return torch_nn_with_and_without_function(
        root, ["attention.layer", "linear.layer"], "MultiheadAttention", "attention_saving"
    )


@pytest.mark.parametrize(
    "dropout, training, masked",
    [(0.0, True, False), (0.1, True, False), (0.0, False, False), (0.0, True, True)],
    ids=["p=0", "p=0.1", "eval", "key-padding"],
)
def test_multihead_attention_saves_no_more_than_autograd(attention, dropout, training, masked):
    function, plain = attention
    torch.manual_seed(0)
    length, batch, embed = 64, 4, 64
    a = function.MultiheadAttention(embed, 8, dropout=dropout).train(training)
    b = plain.MultiheadAttention(embed, 8, dropout=dropout).train(training)
    b.load_state_dict(a.state_dict())
    x = torch.randn(length, batch, embed, requires_grad=True)
    masks = {"key_padding_mask": torch.rand(batch, length) > 0.8} if masked else {}
    ours, theirs = saved_bytes(lambda: a(x, x, x, **masks), a), saved_bytes(lambda: b(x, x, x, **masks), b)
    assert ours <= theirs, f"the Function saves {ours / 2**20:.2f} MiB, autograd {theirs / 2**20:.2f} MiB"


SIDES = '''
@function
layer SixSides(n: int, a: bool = true, b: bool = false, c: bool = true, d: bool = false,
               e: bool = true, f: bool = false) {
    """Six choices of configuration (64 combinations): each `if` a segment of its own."""
    param w: [n] = ones
    example(n = 4)
    forward(x: [B, n]) -> [B, n] {
        h = x * w
        if a {
            h = relu(h)
        } else {
            h = gelu(h)
        }
        if b {
            h = h * h
        }
        if c {
            h = reshape(reshape(h, [B * n]) * 2, [B, n])
        }
        if d {
            h = h + x
        }
        if e {
            h = h * w
        }
        if f {
            h = tanh(h)
        }
        return h
    }
}
'''


@pytest.fixture(scope="module")
def sides() -> dict:
    return compile_spec(SIDES, "six_sides")


@pytest.mark.parametrize("a", [True, False], ids=["relu", "gelu"])
def test_a_segmented_function_saves_no_more_than_autograd(sides, a):
    """`relu`'s side reads its output, `gelu`'s its input: the input is saved only when gelu runs; the
    reshapes' backward reads only shapes."""
    torch.manual_seed(0)
    layer = sides["SixSides"](256, a=a)
    x = torch.randn(512, 256, requires_grad=True)
    w = layer.w.detach().requires_grad_()
    ours = saved_bytes(lambda: layer(x))
    theirs = saved_bytes(lambda: sides["six_sides"](x, w, n=256, a=a))
    assert ours <= theirs, f"the Function saves {ours / 2**20:.2f} MiB, autograd {theirs / 2**20:.2f} MiB"
    got, want = layer(x), sides["six_sides"](x, w, n=256, a=a)
    assert torch.allclose(got, want)
    seed = torch.rand_like(got)
    grads = torch.autograd.grad((got * seed).sum(), [x, layer.w])
    expected = torch.autograd.grad((want * seed).sum(), [x, w])
    assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(grads, expected))


def test_the_sides_second_derivatives_match(sides):
    """What is saved only on a side, or kept as a shape, still carries second derivatives."""
    torch.manual_seed(0)
    for a in (True, False):
        x = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
        w = torch.rand(4, dtype=torch.float64, requires_grad=True)

        def run(x, w, a=a):
            out = sides["SixSidesFunction"].apply(x, w, 4, a, False, True, False, True, False)
            return out[0] if isinstance(out, tuple) else out

        assert torch.autograd.gradcheck(run, (x, w)) and torch.autograd.gradgradcheck(run, (x, w))
