"""A list that a loop over a family whose first member has a shape of its own appends to (an RNN's
`finals`): the first step, written on its own (`autodiff.peel`), appends its item before the loop over
the rest appends theirs, and the list is stacked after. The Function starts the list with the first
step's item, and its backward gives that item the first slice of the stacked gradient. Against the plain
form (outputs, gradients, gradcheck and gradgradcheck in float64) at 1, 2 and 3 members."""

from __future__ import annotations

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .function_agreement import compare_with_plain
from .support import saved_bytes
from .test_function_sub_lists import plain_pair

FINALS = """
@function
layer FinalsFirst(n: int, d_in: int, d: int, scaled: bool = false) {
    for k in range(n) {
        param w_l{k}: [d_in if k == 0 else d, d] = uniform(-0.5, 0.5)
        param b_l{k}: [d] = uniform(-0.5, 0.5)
    }
    example(n = 3, d_in = 2, d = 3)
    forward(x: [B, d_in]) -> [B, d] {
        h = x
        finals = []
        for k in range(n) {
            h = tanh(h @ w_l{k} + b_l{k})
            if scaled {
                finals.append(h * (k + 1))
            } else {
                finals.append(h)
            }
        }
        return sum(stack(finals, dim = 1) * 2, dim = 1) + h
    }
}
"""

LAST_DIM = """
@function
layer FinalsLastDim(n: int, d_in: int, d: int) {
    for k in range(n) {
        param w_l{k}: [d_in if k == 0 else d, d] = uniform(-0.5, 0.5)
    }
    example(n = 2, d_in = 2, d = 3)
    forward(x: [B, d_in]) -> [...] {
        h = x
        finals = []
        for k in range(n) {
            h = sin(h @ w_l{k})
            finals.append(h * h)
        }
        return stack(finals, dim = -1)
    }
}
"""


def generated(text: str, stem: str) -> str:
    spec = parse_file(f"{stem}.layer", text)
    program = check_program([spec])
    plans, problems = plan_backwards([spec])
    assert not problems, problems
    return emit_file(spec, program, f"{stem}.layer", plans)


def problems_of(text: str, stem: str) -> list:
    spec = parse_file(f"{stem}.layer", text)
    check_program([spec])
    return plan_backwards([spec])[1]


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("scaled", [False, True])
def test_a_list_gets_its_first_item_from_the_first_step_and_the_rest_from_the_loop(n, scaled):
    a, b = plain_pair(FINALS, "finals_first", "FinalsFirst", n=n, d_in=2, d=3, scaled=scaled)
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


@pytest.mark.parametrize("n", [1, 3])
def test_the_list_stacked_at_its_last_dim_and_returned(n):
    a, b = plain_pair(LAST_DIM, "finals_last_dim", "FinalsLastDim", n=n, d_in=2, d=3)
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


def test_the_list_starts_with_the_first_steps_item_and_its_gradient_is_the_first_slice():
    source = generated(LAST_DIM, "finals_last_dim")
    assert "finals = [finals_head" in source
    assert "grad_stacked_finals_parts[k + 1]" in source  # a step's slice comes after the first step's
    assert "grad_stacked_finals_parts[0]" in source


def test_a_cat_of_such_a_list_derives():
    """Its first item cat'ed to the steps' stacked (`loops.Planner.cat_of_steps`; refused before)."""
    text = LAST_DIM.replace("FinalsLastDim", "FinalsCat").replace("stack(finals, dim = -1)", "cat(finals, dim = -1)")
    assert problems_of(text, "finals_cat") == []
    ours, plain = plain_pair(text, "finals_cat", "FinalsCat", n=3, d_in=2, d=3)
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(ours(x), plain(x))
    assert torch.autograd.gradcheck(ours, (x,))


def test_a_loop_over_the_steps_inside_the_loop_over_the_family_derives():
    """The loop over the family's members from 1 on holds the loop over the steps (`autodiff.nest`)."""
    text = """
@function
layer FinalsNested(n: int, d_in: int, d: int) {
    for k in range(n) {
        param w_l{k}: [d_in if k == 0 else d, d] = uniform(-0.5, 0.5)
    }
    example(n = 2, d_in = 2, d = 3)
    forward(input: [B, T, d_in]) -> [...] {
        x = input
        finals = []
        for k in range(n) {
            h = x[:, 0] @ w_l{k}
            for t in range(T) {
                h = tanh(x[:, t] @ w_l{k} + h)
            }
            finals.append(h)
            x = x @ w_l{k}
        }
        return stack(finals, dim = 0)
    }
}
"""
    a, b = plain_pair(text, "finals_nested", "FinalsNested", n=3, d_in=2, d=3)
    compare_with_plain(a, b, torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True))


REVERSED = """
@function
layer Reordered(d: int, scaled: bool = false) {
    param w: [d, d] = uniform(-0.5, 0.5)
    example(d = 3)
    forward(x: [B, T, d]) -> [...] {
        h = new_zeros(x, [d])
        backwards = []
        for s in range(T) {
            h = tanh(x[:, T - 1 - s] @ w + h)
            backwards.append(h)
        }
        in_order = []
        for t in range(T) {
            in_order.append(backwards[T - 1 - t])
        }
        if scaled {
            y = stack(in_order, dim = -2) * 2
        } else {
            y = stack(in_order, dim = 1)
        }
        return cat([x, y], dim = -1) + sum(h)
    }
}
"""


@pytest.mark.parametrize("length", [1, 3])
@pytest.mark.parametrize("scaled", [False, True])
def test_a_list_put_back_in_order_is_the_flip_of_the_others_stack(length, scaled):
    a, b = plain_pair(REVERSED, "reordered", "Reordered", d=3, scaled=scaled)
    x = torch.randn(2, length, 3, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


def test_the_reordering_loop_is_not_run_and_its_list_not_made():
    source = generated(REVERSED, "reordered")
    function = source[source.index("class ReorderedFunction") : source.index("class Reordered(")]
    assert "in_order" not in function
    assert "torch.flip(" in function  # forward flips the stack, backward the gradient
    assert function.count("for t in") == 0


def test_a_loop_that_does_not_only_reorder_is_left_as_it_is():
    text = REVERSED.replace("Reordered(", "NotReordered(").replace("backwards[T - 1 - t]", "backwards[t]")
    problems = problems_of(text, "not_reversed")
    assert [(p.span.line, p.span.col) for p in problems] == [(15, 39)]
    assert "picks from a list at positions known when generating" in problems[0].message


TWO_PER_STEP = """
@function
layer TwoPerStep(d: int) {
    param w: [d, d] = uniform(-0.5, 0.5)
    example(d = 3)
    forward(x: [B, T, d]) -> [...] {
        h = new_zeros(x, [d])
        outs = []
        for t in range(T) {
            h = tanh(x[:, t] @ w + h)
            outs.append(h)
            outs.append(h * 2)
        }
        return stack(outs, dim = 1)
    }
}
"""

BOTH_DIRECTIONS = """
@function
layer BothDirections(n: int, d_in: int, d: int) {
    for k in range(n) {
        param w_l{k}: [d_in if k == 0 else 2 * d, d] = uniform(-0.5, 0.5)
        param v_l{k}: [d_in if k == 0 else 2 * d, d] = uniform(-0.5, 0.5)
    }
    example(n = 2, d_in = 2, d = 3)
    forward(input: [B, d_in]) -> [...] {
        x = input
        finals = []
        for k in range(n) {
            a = tanh(x @ w_l{k})
            finals.append(a)
            b = sin(x @ v_l{k})
            finals.append(b)
            x = cat([a, b], dim = -1)
        }
        return stack(finals, dim = 0) * 3 + sum(x)
    }
}
"""


@pytest.mark.parametrize("length", [1, 3])
def test_a_loop_appending_twice_per_step_derives(length):
    a, b = plain_pair(TWO_PER_STEP, "two_per_step", "TwoPerStep", d=3)
    x = torch.randn(2, length, 3, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


def test_the_items_of_a_step_are_its_slices_in_order():
    source = generated(TWO_PER_STEP, "two_per_step")
    assert "grad_stacked_outs_parts[2 * t]" in source
    assert "grad_stacked_outs_parts[2 * t + 1]" in source


@pytest.mark.parametrize("n", [1, 2, 3])
def test_two_items_per_member_with_the_first_members_before_the_loop(n):
    a, b = plain_pair(BOTH_DIRECTIONS, "both_directions", "BothDirections", n=n, d_in=2, d=3)
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)
    source = generated(BOTH_DIRECTIONS, "both_directions")
    assert "grad_stacked_finals_parts[2 * k + 2]" in source  # after the first member's two


def test_the_flip_and_the_first_items_save_nothing_of_their_own():
    """Putting the list back in order saves what the loop alone does; so does starting a list with the
    first member's item (the stacked list is never kept)."""
    kept = REVERSED.replace("cat([x, y], dim = -1)", "y * 2")  # (cat keeps y for its size)
    in_order, _ = plain_pair(kept.replace("Reordered(", "Flipped("), "flipped", "Flipped", d=3)
    as_filled = kept.replace("Reordered(", "AsFilled(").replace("stack(in_order,", "stack(backwards,")
    filled, _ = plain_pair(as_filled, "as_filled", "AsFilled", d=3)
    filled.load_state_dict(in_order.state_dict())
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    assert saved_bytes(lambda: in_order(x)) == saved_bytes(lambda: filled(x)) > 0
    finals, _ = plain_pair(LAST_DIM, "finals_last_dim", "FinalsLastDim", n=3, d_in=2, d=3)
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    # x, w_l0, the members from 1 on, the first member's sin input and h, the loop's per step (2 steps)
    # (its last h only as its shape): the stacked list is not kept
    d = 3
    assert saved_bytes(lambda: finals(x)) == 8 * (4 * 2 + 2 * d + 2 * d * d + 2 * 4 * d + 2 * 2 * 4 * d)


BATCHED_STEPS = """
@function
layer BatchedSteps(d: int) {
    param w: [d, d] = uniform(-0.5, 0.5)
    example(d = 3)
    forward(x: [..., T, d]) -> [..., d] {
        h = sum(x, dim = -2)
        for t in range(T) {
            h = tanh(x[..., t, :] @ w + h) + sin(x[..., T - 1 - t, :])
        }
        return h
    }
}
"""


@pytest.mark.parametrize("shape", [(1, 3), (2, 4, 3), (3, 2, 5, 3)])
def test_a_step_of_a_dim_after_the_ellipsis_forward_and_in_reverse_is_picked(shape):
    a, b = plain_pair(BATCHED_STEPS, "batched_steps", "BatchedSteps", d=3)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


def test_a_picked_steps_gradient_is_one_slice_per_step_not_a_full_size_select_backward():
    for text, stem in [(BATCHED_STEPS, "batched_steps"), (REVERSED, "reordered")]:
        source = generated(text, stem)
        assert "select_backward" not in source
    source = generated(BATCHED_STEPS, "batched_steps")
    assert "torch.stack(grad_part_steps[::-1], dim=-2)" in source  # x[..., t, :]: backward ran t = T - 1 first
    assert "torch.stack(grad_part1_steps, dim=-2)" in source  # x[..., T - 1 - t, :]: in the order it ran


SIN_MEMBER = """
@function
layer FamilySinMember(n: int, d: int, scaled: bool = true) {
    for k in range(n) {
        param w_l{k}: [d, d] = uniform(-0.5, 0.5)
        param s_l{k}: [d] = uniform(0.5, 1.5) if scaled
    }
    example(n = 2, d = 3)
    forward(x: [B, d]) -> [B, d] {
        h = x
        for k in range(n) {
            h = tanh(h @ w_l{k})
            if scaled {
                h = h * sin(s_l{k})
            }
        }
        return h
    }
}
"""


@pytest.mark.parametrize("scaled", [False, True])
def test_a_familys_optional_member_read_inside_the_if_that_builds_it(scaled):
    a, b = plain_pair(SIN_MEMBER, "family_sin_member", "FamilySinMember", n=3, d=3, scaled=scaled)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


def test_a_familys_optional_member_on_the_left_of_a_minus_is_refused_by_name():
    text = """
@function
layer FamilyLeftMinus(n: int, d: int, bias: bool = true) {
    for k in range(n) {
        param w_l{k}: [d, d]
        param b_l{k}: [d] if bias
    }
    example(n = 2, d = 3)
    forward(x: [B, d]) -> [B, d] {
        h = x
        for k in range(n) {
            h = b_l{k} - tanh(h @ w_l{k})
        }
        return h
    }
}
"""
    problems = problems_of(text, "family_left_minus")
    assert [(p.span.line, p.span.col) for p in problems] == [(12, 17)]
    assert "reads the optional member 'b_l' as the right operand of - and / only" in problems[0].message


BIDIRECTIONAL = """
@function
layer BiScan(d: int, bidirectional: bool = false) {
    param w: [d, d] = uniform(-0.5, 0.5)
    param w_rev: [d, d] = uniform(-0.5, 0.5) if bidirectional
    example(d = 3)
    forward(x: [B, T, d]) -> [...] {
        h = sum(x, dim = 1) * 0
        outs = []
        for t in range(T) {
            h = tanh(x[:, t] @ transpose(w, 0, 1) + h)
            outs.append(h)
        }
        y = stack(outs, dim = 1)
        if bidirectional {
            g = sum(x, dim = 1) * 0
            backs = []
            for s in range(T) {
                g = tanh(x[:, T - 1 - s] @ transpose(w_rev, 0, 1) + g)
                backs.append(g)
            }
            ordered = []
            for t in range(T) {
                ordered.append(backs[T - 1 - t])
            }
            y = cat([y, stack(ordered, dim = 1)], dim = -1)
        }
        return y
    }
}
"""


@pytest.mark.parametrize("length", [1, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_reverse_direction_reads_its_member_built_on_the_side_of_its_if(length, bidirectional):
    """`param w_rev: [d, d] if bidirectional` read in a loop inside `if bidirectional`: built on that side
    (not a side with it and one without), and the reverse loop's states put back in order."""
    a, b = plain_pair(BIDIRECTIONAL, "bi_scan", "BiScan", d=3, bidirectional=bidirectional)
    x = torch.randn(2, length, 3, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


GATED = """
@function
layer GatedScan(d: int, learned_start: bool = false) {
    param w: [d, d] = uniform(-0.5, 0.5)
    param s: [d] = uniform(-0.5, 0.5)
    example(d = 3)
    forward(x: [B, T, d]) -> [B, d] {
        if learned_start {
            h = sin(s)
        } else {
            h = new_zeros(x, [d])
        }
        for t in range(T) {
            z = sigmoid(x[:, t] @ w)
            h = (1 - z) * tanh(x[:, t]) + z * h
        }
        return h
    }
}
"""


@pytest.mark.parametrize("length", [1, 3])
@pytest.mark.parametrize("learned_start", [False, True])
def test_a_carried_value_kept_per_step_that_broadcasts_at_the_first_step(length, learned_start):
    """A GRU's `h = (1 - z) * n + z * h` keeps the h before each step; h starts as [d] (a state not given)
    and is [B, d] after the first step: its buffer takes the broadcast shape and backward reads the start
    itself at step 0 (its gradient summed back to [d])."""
    a, b = plain_pair(GATED, "gated_scan", "GatedScan", d=3, learned_start=learned_start)
    x = torch.randn(2, length, 3, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)
