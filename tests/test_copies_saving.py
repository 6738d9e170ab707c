"""What a loop Function over copies of a layer saves against autograd (issue 15). The module passes each member
of the copies stacked (`torch.stack([item.w_q for item in self.blocks])`), a new tensor; saved for backward,
it was kept until backward, where autograd keeps the parameters themselves (which the module holds anyway):
3.01 MiB of 99.20 in `benchmarks/bench_segment_saving.py`'s "6 projection copies", against autograd's 96.19.
The module now also passes the members themselves, in one list (`blocks_members`), which the Function saves
in place of the stacks and stacks again in backward, from the parameters, so that double backward reaches
them. A value read only for its shape per step (`new_zeros(()).expand(...)`, one element) is not saved
either: its shape is kept on ctx. So the Function saves what autograd saves: copies of a block, a family
of members (one built only when an argument says), optional members of copies in each configuration; with
the same gradients, second derivatives (gradgradcheck over the parameters) and `vmap` over the inputs."""

from __future__ import annotations

import re

import pytest
import torch

from .function_agreement import compare_with_plain
from .support import compile_spec, saved_bytes
from .test_family_members_in_loops import FAMILY_FUNCTION
from .test_function_loop_members import built_pair
from .test_loop_function_costs import PROJECTIONS, _copies


def _stacks_and_placeholders(run, module: torch.nn.Module) -> list[torch.Size]:
    """The shapes of the tensors saved while `run()` runs that are the members of copies stacked (a family's
    `w_l0`, `w_l1`, ... or a list's `blocks.0.w`, `blocks.1.w`), or one element expanded to a shape."""
    groups: dict[str, list[torch.Tensor]] = {}
    for name, p in module.named_parameters():
        groups.setdefault(re.sub(r"\d+", "#", name), []).append(p.detach())
    stacks = [torch.stack(ps) for ps in groups.values()]
    found = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        one = t.untyped_storage().nbytes() == t.element_size() and t.numel() > 1
        if one or any(t.shape == s.shape and torch.equal(t, s) for s in stacks):
            found.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return found


def test_a_loop_over_copies_saves_no_more_than_autograd():
    ours, plain = _copies(3, 8)
    x = torch.randn(4, 5, 8, dtype=torch.float64, requires_grad=True)
    assert saved_bytes(lambda: ours(x), ours) <= saved_bytes(lambda: plain(x), plain)


def test_the_module_passes_the_members_and_backward_stacks_them_again():
    source = compile_spec(PROJECTIONS, "projections")["SOURCE"]
    members = "[member for item in self.blocks for member in (item.w_q, item.w_k, item.b_q, item.b_k)]"
    assert f"self.n, self.blocks[0].d if len(self.blocks) else None, {members})[0]" in source
    assert "blocks_w_k = torch.stack(blocks_members[1::4]) if blocks_members else None" in source
    assert "new_zeros(()).expand" not in source.split("def setup_context")[1]  # no placeholder saved


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_a_family_in_a_loop_saves_neither_its_stacks_nor_placeholders_and_agrees(n, bias):
    ours = compile_spec(FAMILY_FUNCTION, "family_scan")["FamilyScan"]
    plain = compile_spec(FAMILY_FUNCTION.replace("@function\n", ""), "family_scan_plain")["FamilyScan"]
    torch.manual_seed(0)
    a, b = ours(n, 3, bias=bias).double(), plain(n, 3, bias=bias).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    # (it keeps the last carried value too, which autograd does not: another matter)
    assert not _stacks_and_placeholders(lambda: a(x), a)
    compare_with_plain(a, b, x)


@pytest.mark.parametrize(
    "config",
    [{}, {"bias": False}, {"fused": False, "gated": True, "affine": True}],
    ids=["fused_bias", "no_bias", "split_gated_affine"],
)
def test_optional_members_of_copies_save_no_more_than_autograd(config):
    a, b = built_pair(2, **config)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert not _stacks_and_placeholders(lambda: a(x), a)
    assert saved_bytes(lambda: a(x), a) <= saved_bytes(lambda: b(x), b)
    compare_with_plain(a, b, x)


def test_vmap_over_the_inputs_gives_each_ones_gradients():
    ours, plain = _copies(3, 4)
    xs = torch.randn(3, 2, 5, 4, dtype=torch.float64)
    batched = torch.func.vmap(torch.func.grad(lambda u: ours(u).sum()))(xs)
    for k in range(3):
        t = xs[k].clone().requires_grad_()
        (g,) = torch.autograd.grad(plain(t).sum(), t)
        torch.testing.assert_close(batched[k], g)
    x = xs[0].clone().requires_grad_()
    assert saved_bytes(lambda: ours(x), ours) <= saved_bytes(lambda: plain(x), plain)


# A composed Function (autodiff/sub_calls.py) calling the loop Function over copies hands it what its module
# would: the members as themselves too. Scale reads its input's size, so Outer composes rather than inlines.
COMPOSING = PROJECTIONS + """
@function
layer Scale() {
    example(D = 4)
    forward(x: [..., D]) -> [..., D] {
        return x / D
    }
}

@function
layer Outer(d: int, n: int) {
    sub proj = Projections(Projection(d), n)
    sub scale = Scale()
    example(d = 4, n = 2)
    forward(x: [..., d]) -> [..., d] {
        h = proj(x)
        return scale(h)
    }
}
"""


@pytest.mark.parametrize("n", [0, 1, 3])
def test_a_composed_function_passes_a_loop_over_copies_its_members(n):
    ours = compile_spec(COMPOSING, "outer_composing")
    plain = compile_spec(COMPOSING.replace("@function\n", ""), "outer_composing_plain")
    assert "class OuterFunction" in ours["SOURCE"] and "ProjectionsFunction.forward" in ours["SOURCE"]
    torch.manual_seed(0)
    a = ours["Outer"](4, n).double()
    b = plain["Outer"](4, n).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)
