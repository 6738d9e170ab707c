"""Dropout under `@function(save = "inputs")` in a forward with a loop, or with `if`s taken each on their own:
backward runs the forward again from the random state forward began with (`codegen.random_replay`), so it
draws the masks forward drew, and the caller's random stream is left as plain autograd leaves it. Each spec
against the plain module under one seed: outputs, gradients and the stream after, in train and eval mode,
for 0, 1 and 3 steps. Random draws make gradcheck meaningless as such: it runs with the seed set before
each call, so that every call draws the same masks (first and second derivatives)."""

from __future__ import annotations

import pytest
import torch

from tests.support import compile_spec, function_and_plain, saved_bytes

# a carried state with a dropout per step (the error corpus's spec before draws were replayed)
LOOP = """\
@function(save = "inputs")
layer DroppedScan(d: int) {
    param w: [d, d]
    example(d = 3)

    forward(x: [B, T, d]) -> [B, d] {
        h = new_zeros(x, [B, d])
        for t in range(T) {
            h = tanh(h @ w + x[:, t])
            h = dropout(h, 0.5)
        }
        return h
    }
}
"""

# more `if`s on arguments than there are branch plans: each `if` a segment of its own (`Choice`), one
# dropout on a side and one after
CHOICES = """\
@function(save = "inputs")
layer DroppedChoices(d: int, a: bool = true, b: bool = false, c: bool = true, e: bool = false, f: bool = true,
                     g: bool = false) {
    param w: [d, d]
    example(d = 3)

    forward(x: [B, T, d]) -> [B, d] {
        u = x
        if a {
            u = dropout(tanh(u), 0.5)
        }
        if b {
            u = u * u
        }
        if c {
            u = sigmoid(u) * x
        }
        h = tanh(u[:, -1] + u[:, 0] @ w)
        if e {
            h = h * h
        }
        if f {
            h = exp(dropout(h, 0.5))
        }
        if g {
            h = sin(h)
        }
        return h
    }
}
"""

# the names the Function would give the random state taken by the spec: an argument and a local
NAMED = LOOP.replace("DroppedScan(d: int)", "DroppedNamed(d: int, rng_state: float = 0.5)").replace(
    "h = dropout(h, 0.5)", "rng_state_ = dropout(h, rng_state)\n            h = rng_state_"
)

SPECS = {"DroppedScan": LOOP, "DroppedChoices": CHOICES, "DroppedNamed": NAMED}


def _modules(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The layer under `save = "inputs"` and plain (no `@function`): one state, float64."""
    return function_and_plain(SPECS[name], name, 3)


def _run(layer: torch.nn.Module, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, list, torch.Tensor]:
    """Output, gradients (of the input and parameters) and the random state after forward and backward."""
    torch.manual_seed(seed)
    out = layer(x)
    weights = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).reshape(out.shape)
    wrt = [x, *layer.parameters()]
    # none after a loop of no steps (the plain output is a constant): as zeros
    grads = torch.autograd.grad((out * weights).sum(), wrt, allow_unused=True) if out.requires_grad else [None] * 2
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt, strict=True)]
    return out.detach(), grads, torch.get_rng_state()


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("steps", [0, 1, 3])
@pytest.mark.parametrize("name", SPECS)
def test_replayed_masks_and_the_stream_after_are_the_plain_modules(name, steps, train):
    ours, plain = _modules(name)
    ours.train(train)
    plain.train(train)
    x = torch.empty(4, max(steps, 1) if name == "DroppedChoices" else steps, 3, dtype=torch.float64)
    x = x.uniform_(-1, 1).requires_grad_()
    for seed in (1, 2):
        got, want = _run(ours, x, seed), _run(plain, x, seed)
        torch.testing.assert_close(got[0], want[0])
        for g, w in zip(got[1], want[1], strict=True):
            torch.testing.assert_close(g, w)
        assert torch.equal(got[2], want[2])  # the caller's stream: backward's draws did not move it


def test_a_mask_is_drawn_in_training_only():
    ours, plain = _modules("DroppedScan")
    x = torch.rand(4, 3, 3, dtype=torch.float64)
    assert (ours(x) == 0).any()  # a mask drawn and applied
    ours.eval()
    state = torch.get_rng_state()
    torch.testing.assert_close(ours(x), plain.eval()(x))
    assert torch.equal(torch.get_rng_state(), state)  # eval draws nothing, as torch's dropout


@pytest.mark.parametrize("name", SPECS)
def test_the_function_saves_the_inputs_and_the_random_state_only(name):
    ours, _ = _modules(name)
    x = torch.rand(4, 5, 3, dtype=torch.float64, requires_grad=True)
    given = sum(t.numel() * t.element_size() for t in [x, *ours.parameters()])
    assert saved_bytes(lambda: ours(x)) == given  # no mask saved (the state is kept on ctx)
    source = compile_spec(SPECS[name], f"{name.lower()}_source")["SOURCE"]
    backward = source[source.index("def backward") : source.index("def apply")]
    assert "torch.random.fork_rng(" in backward and "torch.set_rng_state(" in backward


@pytest.mark.parametrize("name", SPECS)
def test_first_and_second_derivatives_with_the_seed_set_before_each_call(name):
    ours, _ = _modules(name)
    x = torch.rand(2, 3, 3, dtype=torch.float64, requires_grad=True)

    def seeded(x: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(7)  # the same masks at every call: a function of x alone
        return ours(x)

    assert torch.autograd.gradcheck(seeded, (x,))
    assert torch.autograd.gradgradcheck(seeded, (x,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: its own generator's state")
def test_a_cuda_input_replays_the_cuda_generator():
    # torch's CUDA dropout draws by a fused kernel of its own, so the plain module's masks differ: the
    # default `@function` (which draws as this one does, and saves its masks) is the reference
    ours, _ = _modules("DroppedScan")
    torch.manual_seed(0)
    text = LOOP.replace('@function(save = "inputs")', "@function")
    default = compile_spec(text, "droppedscan_default")["DroppedScan"](3).double().cuda()
    ours.cuda().load_state_dict(default.state_dict())
    x = torch.rand(4, 3, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    runs = []
    for layer in (ours, default):
        torch.manual_seed(3)
        out = layer(x)
        after_forward = torch.cuda.get_rng_state()
        grads = torch.autograd.grad(out.sum(), [x, *layer.parameters()])
        assert torch.equal(torch.cuda.get_rng_state(), after_forward)  # backward's draws did not move it
        runs.append((out, grads))
    torch.testing.assert_close(runs[0][0], runs[1][0])
    for g, w in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(g, w)


def test_the_default_function_draws_no_mask_in_eval_either():
    # the default policy keeps each step's mask as an extra output: in eval a mask keeping every element,
    # with no draw (before, it drew one: the caller's stream moved where torch's dropout leaves it)
    torch.manual_seed(0)
    text = LOOP.replace('@function(save = "inputs")', "@function")
    layer = compile_spec(text, "droppedscan_default_eval")["DroppedScan"](3).double().eval()
    x = torch.rand(4, 3, 3, dtype=torch.float64, requires_grad=True)
    state = torch.get_rng_state()
    out = layer(x)
    torch.autograd.grad(out.sum(), x)
    assert torch.equal(torch.get_rng_state(), state)
