"""`codegen.function_members`: a loop Function given a held list of the copies' members (`HeldMembers`) saves
the members in place of the stacks, and its backward stacks again each stack it unpacks."""

from __future__ import annotations

from layerdsl.codegen.function_members import HeldMembers, held_params, saved_with_held, unpacked_with_held

HELD = HeldMembers("blocks_members", ("blocks_w1", "blocks_w2"), "[...]", "list[Tensor]")


def test_setup_context_saves_the_members_after_the_other_tensors():
    assert saved_with_held(["x", "blocks_w2", "h"], HELD) == ["x", "h", "*blocks_members"]
    assert saved_with_held(["x", "h"], HELD) == ["x", "h"]  # no stack saved: nothing held
    assert saved_with_held(["x", "blocks_w1"], None) == ["x", "blocks_w1"]


def test_backward_stacks_again_each_stack_it_unpacks_from_its_slice_of_the_members():
    lines = unpacked_with_held(["x", "blocks_w2"], HELD)
    assert lines[0] == "x, *blocks_members = ctx.saved_tensors"
    assert lines[2:] == ["blocks_w2 = torch.stack(blocks_members[1::2]) if blocks_members else None"]
    assert unpacked_with_held(["blocks_w1"], HELD)[0] == "blocks_members = ctx.saved_tensors"
    assert unpacked_with_held(["x"], HELD) == ["x, = ctx.saved_tensors"]
    assert held_params(HELD) == ["blocks_members"] and held_params(None) == []
