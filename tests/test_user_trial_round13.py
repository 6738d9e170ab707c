"""What a user's and an attacker's trial of round 13 found in `@function` layers: a buffer read after its
`update` passed a gradient back into what computed its new value (the plain module reads it from the
buffer, written under no_grad, so none flows); and an input returned as it is beside another output
crashed the Function when the backward saved that input ("An input that has been returned as-is as output
is being saved for backward")."""

from __future__ import annotations

import pytest
import torch

from .function_agreement import double
from .support import compile_spec

# the running mean is updated from the batch, then read: the gradient must not flow through the update
UPDATE_THEN_READ = """
@function
layer CenterOnUpdated(n: int) {
    param w: [n] = normal(0, 1)
    buffer center: [n] = zeros
    example(n = 3)
    forward(x: [B, n]) -> [B, n] {
        if training {
            update center = mean(x * w, dim = 0)
        }
        return (x - center) * w
    }
}
"""

# `x` is returned unchanged and saved (grad_w reads it)
INPUT_RETURNED = """
@function
layer PassAndScale(n: int) {
    param w: [n] = normal(0, 1)
    example(n = 3)
    forward(x: [B, n]) -> ([B, n], [B, n]) {
        kept = x
        return kept, x * w
    }
}
"""


def function_and_plain(text: str, stem: str, name: str, **kwargs):
    ours = compile_spec(text, stem)[name]
    plain = compile_spec(text.replace("@function\n", ""), f"{stem}_plain")[name]
    torch.manual_seed(0)
    a, b = ours(**kwargs).double(), plain(**kwargs).double()
    b.load_state_dict(a.state_dict())
    return a, b


def gradients(module: torch.nn.Module, outputs, x: torch.Tensor, seeds: list[torch.Tensor]):
    """First derivatives of the outputs (seeded) with respect to x and the parameters, and the second
    derivatives of their squared sum."""
    first = torch.autograd.grad(outputs, [x, *module.parameters()], seeds, create_graph=True)
    second = torch.autograd.grad(sum((g * g).sum() for g in first), [x, *module.parameters()])
    return [*first, *second]


@pytest.mark.parametrize("training", [True, False])
def test_a_buffer_read_after_its_update_passes_no_gradient(training):
    a, b = function_and_plain(UPDATE_THEN_READ, "center_on_updated", "CenterOnUpdated", n=3)
    a.train(training)
    b.train(training)
    with torch.no_grad():
        a.center.fill_(0.25)
        b.center.fill_(0.25)
    x = double(5, 3)
    out, ref = a(x), b(x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(a.center, b.center)
    seed = torch.randn_like(ref)
    for got, want in zip(gradients(a, [out], x, [seed]), gradients(b, [ref], x, [seed])):
        torch.testing.assert_close(got, want)


def test_an_input_returned_beside_another_output_is_returned_as_a_view():
    a, b = function_and_plain(INPUT_RETURNED, "pass_and_scale", "PassAndScale", n=3)
    x = double(4, 3)
    out, ref = a(x), b(x)
    for got, want in zip(out, ref):
        torch.testing.assert_close(got, want)
    assert out[0] is not x  # a view: the Function's output, not the input itself
    seeds = [torch.randn_like(r) for r in ref]
    for got, want in zip(gradients(a, list(out), x, seeds), gradients(b, list(ref), x, seeds)):
        torch.testing.assert_close(got, want)
    names = [n for n, _ in a.named_parameters()]

    def run(x, w):
        return torch.func.functional_call(a, dict(zip(names, [w])), (x,))

    w = a.w.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(run, (x, w))
    assert torch.autograd.gradgradcheck(run, (x, w))
