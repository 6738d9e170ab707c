"""`codegen.function_branches`: what two sides of a branching Function share is written once, before or
after the `if`; a statement both sides run moves past plain reads (a size one side reads first) only when
that changes nothing it reads or binds; `else: if` becomes `elif` only where it goes on choosing."""

from __future__ import annotations

from layerdsl.codegen.function_branches import chosen_lines, common_start


def test_a_shared_statement_moves_past_a_size_read_of_one_side():
    then = ["exp = torch.exp(target)", "return exp"]
    orelse = ["n = input.shape[0]", "exp = torch.exp(target)", "return exp / n"]
    prefix, a, b = common_start(then, orelse)
    assert prefix == ["exp = torch.exp(target)"]
    assert a == ["return exp"] and b == ["n = input.shape[0]", "return exp / n"]


def test_several_shared_statements_move_in_order():
    then = ["a, b = ctx.saved_tensors", "grad_x = grad_y = None", "if g is not None:", "    grad_x = g * a"]
    orelse = [
        "n = ctx.n",
        "a, b = ctx.saved_tensors",
        "grad_x = grad_y = None",
        "if g is not None:",
        "    grad_x = g / n",
    ]
    prefix, a, b = common_start(then, orelse)
    assert prefix == ["a, b = ctx.saved_tensors", "grad_x = grad_y = None"]  # an `if` is not one line
    assert a == then[2:] and b == ["n = ctx.n", *orelse[3:]]


def test_a_statement_reading_what_a_skipped_read_binds_stays():
    then = ["y = x * 2", "return y"]
    orelse = ["x = input.shape[0]", "y = x * 2", "return y"]
    assert common_start(then, orelse) == ([], then, orelse)


def test_a_statement_binding_what_a_skipped_read_reads_stays():
    then = ["n = 3", "return n"]
    orelse = ["m = n", "n = 3", "return m + n"]
    assert common_start(then, orelse) == ([], then, orelse)


def test_only_plain_reads_are_skipped():
    then = ["h = torch.tanh(x)", "return h"]
    orelse = ["d = torch.rand_like(x)", "h = torch.tanh(x)", "return h * d"]  # a draw keeps its order
    assert common_start(then, orelse) == ([], then, orelse)


def test_a_statement_under_a_comment_keeps_its_comment():
    then = ["# saves x", "ctx.save_for_backward(x)"]
    orelse = ["ctx.n = x.shape[0]", "# saves x", "ctx.save_for_backward(x)"]
    prefix, _, _ = common_start(then, orelse)
    assert prefix == []


def test_chosen_lines_write_a_shared_start_once():
    lines = chosen_lines(
        "ctx.mean", ["a = ctx.a", "return a"], ["n = ctx.n", "a = ctx.a", "return a / n"], ends_in_return=True
    )
    assert lines == ["a = ctx.a", "if ctx.mean:", "    return a", "n = ctx.n", "return a / n"]


def test_else_if_on_the_same_value_is_elif_and_a_gradient_test_is_not():
    chain = chosen_lines(
        'ctx.reduction == "mean"',
        ["x = 1"],
        ['if ctx.reduction == "sum":', "    x = 2"],
        ends_in_return=False,
    )
    assert chain == ['if ctx.reduction == "mean":', "    x = 1", 'elif ctx.reduction == "sum":', "    x = 2"]
    given = chosen_lines('ctx.reduction == "mean"', ["x = 1"], ["if g is not None:", "    x = 2"], ends_in_return=False)
    assert given == ['if ctx.reduction == "mean":', "    x = 1", "else:", "    if g is not None:", "        x = 2"]


def test_a_shared_declaration_moves_past_the_restacked_members():
    """A held list's members stacked again (`function_members.unpacked_with_held`), after a comment, are
    read past: each side of a branching loop Function (DeepMLP under @function) does not declare its
    gradients again."""
    restacked = ["# stacked again", "w = torch.stack(m) if m else None", "grad_x = None", "return grad_x"]
    then = ["x, y, *m = ctx.saved_tensors", *restacked]
    orelse = ["x, *m = ctx.saved_tensors", *restacked]
    prefix, _, _ = common_start(then, orelse)
    assert prefix == ["grad_x = None"]
