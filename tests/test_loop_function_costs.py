"""What a loop Function keeps and runs, against the plain module: a value its backward reads only for its
shape (`cat`'s operands, each read for its size along the dim) is written as its static shape, in straight
code after a loop (a bidirectional RNN's flipped states) and inside a loop step, so the Function saves no
more bytes than autograd; and the straight code before and after a loop goes through the optimize passes
as a loop step does, so a layer norm there runs its backward kernel once (ATen calls counted). Each layer
against its plain form in float64 (outputs, first and second derivatives, gradcheck, gradgradcheck).

A loop over copies of a block keeps only what autograd keeps: a step value read only for its shape (`q` of
`q + b`, the matmuls' results, summed to their shapes) is not kept, its shape is (on ctx), a carried value is
kept from step 1 on (step 0's is the input), and the output is not kept for the zeros its gradient starts
from in double backward. The copies' members, which the module passes stacked (one tensor per member), are
kept as themselves (the module passes them so too), not stacked: nothing but the parameters."""

from __future__ import annotations

import functools

import pytest
import torch

from .function_agreement import compare_with_plain
from .support import AtenCalls, compile_spec, saved_bytes

BIDIRECTIONAL = """
@function
layer BiScan(d_in: int, d: int) {
    param w_in: [d, d_in] = uniform(-0.5, 0.5)
    param w: [d, d] = uniform(-0.5, 0.5)
    param w_in_reverse: [d, d_in] = uniform(-0.5, 0.5)
    param w_reverse: [d, d] = uniform(-0.5, 0.5)
    example(d_in = 2, d = 3)
    forward(x: [T, B, d_in]) -> [T, B, ...] {
        gi = x @ transpose(w_in, 0, 1)
        h = new_zeros(x, [size_at(x, 1), d])
        outputs = []
        for t in range(T) {
            h = tanh(gi[t] + h @ transpose(w, 0, 1))
            outputs.append(h)
        }
        gr = x @ transpose(w_in_reverse, 0, 1)
        g = new_zeros(x, [size_at(x, 1), d])
        backwards = []
        for s in range(T) {
            g = tanh(gr[T - 1 - s] + g @ transpose(w_reverse, 0, 1))
            backwards.append(g)
        }
        in_order = []
        for t in range(T) {
            in_order.append(backwards[T - 1 - t])
        }
        return cat([stack(outputs, dim = 0), stack(in_order, dim = 0)], dim = -1)
    }
}
"""

# `cat`'s backward reads `sin(h)` only for its size: not kept per step (its input h is, for sin's gradient)
CAT_IN_STEP = """
@function
layer CatStep(d: int) {
    param w: [2 * d, d] = uniform(-0.5, 0.5)
    example(d = 3)
    forward(x: [T, B, d]) -> [B, d] {
        h = x[0]
        for t in range(T) {
            h = cat([sin(h), x[t]], dim = -1) @ w
        }
        return h
    }
}
"""

NORMS_AROUND = """
@function
layer NormsAround(d: int, n: int = 3) {
    param w: [d, d] = uniform(-0.5, 0.5)
    param gain: [d] = uniform(0.5, 1.5)
    param shift: [d] = uniform(-0.5, 0.5)
    example(d = 4)
    forward(x: [B, d]) -> [B, d] {
        h = tanh(layer_norm(x, [d], gain, shift, 1e-5)) + x
        for k in range(n) {
            h = tanh(h @ w) + h
        }
        return tanh(layer_norm(h, [d], gain, shift, 1e-5)) + h
    }
}
"""


# a projection block (two matmuls with biases, a layer norm, a gated residual) and a loop over its copies
PROJECTIONS = """
layer Projection(d: int) {
    param w_q: [d, d] = uniform(-0.5, 0.5)
    param w_k: [d, d] = uniform(-0.5, 0.5)
    param b_q: [d] = uniform(-0.5, 0.5)
    param b_k: [d] = uniform(-0.5, 0.5)
    example(d = 4)
    forward(x: [..., d]) -> [..., d] {
        q = x @ transpose(w_q, 0, 1) + b_q
        k = x @ transpose(w_k, 0, 1) + b_k
        return x + tanh(layer_norm(q, [d])) * k
    }
}

@function
layer Projections(block: Projection, n: int) {
    sub blocks = [copy(block) for i in range(n)]
    example(block = Projection(4), n = 2, D = 4)
    forward(x: [..., D]) -> [..., D] {
        h = x
        for b in blocks {
            h = b(h)
        }
        return h
    }
}
"""


def _copies(n: int, d: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    ours, plain = compile_spec(PROJECTIONS, "projections"), compile_spec(
        PROJECTIONS.replace("@function\n", ""), "projections_plain"
    )
    torch.manual_seed(0)
    a = ours["Projections"](ours["Projection"](d), n).double()
    b = plain["Projections"](plain["Projection"](d), n).double()
    b.load_state_dict(a.state_dict())
    return a, b


def _kept_besides_stacks(run, module: torch.nn.Module) -> tuple[int, int, int]:
    """The bytes kept for backward while `run()` runs (each storage once, the module's parameters left out);
    of those, the bytes of the copies' members stacked (a saved tensor equal to one member of every copy,
    stacked); and the bytes of single elements expanded to a shape (a value kept for its shape)."""
    own = {p.untyped_storage().data_ptr() for p in module.parameters()}
    members: dict[str, list[torch.Tensor]] = {}
    for name, p in module.named_parameters():
        members.setdefault(name.split(".", 2)[-1], []).append(p.detach())
    stacks = [torch.stack(ps) for ps in members.values()]
    kept: dict[int, tuple[int, str]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            stacked = any(t.shape == s.shape and torch.equal(t, s) for s in stacks)
            one = storage.nbytes() == t.element_size() and t.numel() > 1
            kept[storage.data_ptr()] = (storage.nbytes(), "stacked" if stacked else "one" if one else "")
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    sizes = {what: sum(n for n, kind in kept.values() if kind == what) for what in ("", "stacked", "one")}
    return sum(sizes.values()), sizes["stacked"], sizes["one"]


def test_a_loop_over_copies_keeps_no_more_than_autograd():
    ours, plain = _copies(3, 8)
    x = torch.randn(4, 5, 8, dtype=torch.float64, requires_grad=True)
    total, stacked, single = _kept_besides_stacks(lambda: ours(x), ours)
    assert stacked == 0  # the members kept as themselves (the module's), not stacked
    assert single == 0  # the values read for their shape: their shapes kept on ctx
    assert total == saved_bytes(lambda: plain(x), plain)
    assert "_steps[i - 1] if i > 0 else x" in compile_spec(PROJECTIONS, "projections")["SOURCE"]


@pytest.mark.parametrize("n", [0, 2])
def test_a_loop_over_copies_agrees_with_the_plain_module(n):
    ours, plain = _copies(n, 3)
    compare_with_plain(ours, plain, torch.randn(2, 3, dtype=torch.float64, requires_grad=True))


@functools.cache
def _pair(text: str, stem: str, name: str, **kwargs) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The `@function` module and the plain one, in float64, with the same state."""
    ours = compile_spec(text, stem)[name](**kwargs).double()
    plain = compile_spec(text.replace("@function\n", ""), f"{stem}_plain")[name](**kwargs).double()
    plain.load_state_dict(ours.state_dict())
    return ours, plain


CASES = [
    (BIDIRECTIONAL, "bi_scan", "BiScan", {"d_in": 2, "d": 3}, (5, 4, 2), "torch.narrow(grad_out, -1, ctx.d, ctx.d)"),
    (CAT_IN_STEP, "cat_step", "CatStep", {"d": 3}, (5, 4, 3), "torch.narrow(grad_cat, -1, 0, w.shape[-1])"),
]
COLUMNS = ("text", "stem", "name", "kwargs", "shape", "narrowed")


def test_a_bidirectional_scan_saves_no_more_than_autograd():
    """The flipped states that `cat` joins are read only for their size: not kept (autograd keeps none)."""
    ours, plain = _pair(BIDIRECTIONAL, "bi_scan", "BiScan", d_in=2, d=3)
    x = torch.randn(5, 4, 2, dtype=torch.float64, requires_grad=True)
    assert saved_bytes(lambda: ours(x)) <= saved_bytes(lambda: plain(x))
    setup = compile_spec(BIDIRECTIONAL, "bi_scan")["SOURCE"].split("def setup_context")[1].split("def backward")[0]
    assert "flipped" not in setup


def test_an_operand_read_for_its_size_in_a_step_is_not_kept_per_step():
    ours, plain = _pair(CAT_IN_STEP, "cat_step", "CatStep", d=3)
    x = torch.randn(5, 4, 3, dtype=torch.float64, requires_grad=True)
    assert "sin_steps" not in compile_spec(CAT_IN_STEP, "cat_step")["SOURCE"]
    # no more than autograd keeps, although the carried h is kept twice besides: the last (returned) and
    # step 0's start copied into the stack of h (autograd keeps it as the view x[0])
    assert saved_bytes(lambda: ours(x)) <= saved_bytes(lambda: plain(x))


@pytest.mark.parametrize(COLUMNS, CASES, ids=["after_a_loop", "in_a_step"])
def test_sizes_from_ctx_agree_with_the_plain_module(text, stem, name, kwargs, shape, narrowed):
    ours, plain = _pair(text, stem, name, **kwargs)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert narrowed in compile_spec(text, stem)["SOURCE"]  # each operand's size: the dim from ctx or a parameter
    compare_with_plain(ours, plain, x)


@pytest.mark.parametrize("n", [0, 2])
def test_straight_code_around_a_loop_runs_the_layer_norm_kernel_once_per_norm(n):
    ours, plain = _pair(NORMS_AROUND, "norms_around", "NormsAround", d=4, n=n)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    out = ours(x)
    with AtenCalls() as counted:
        torch.autograd.backward(out, torch.randn_like(out))
    assert counted.calls["native_layer_norm_backward"] == 2  # one norm before the loop, one after
    compare_with_plain(ours, plain, x)
