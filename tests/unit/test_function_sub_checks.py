"""`codegen.function_sub_checks`: a composed Function's module's checks as records. A check repeating an
earlier one's terms (under guards: theirs too) goes unless a name it tests was bound again in between; an
unknown statement forgets what was checked; a guard left with no check goes with the comment before it; an
alias goes where nothing after reads it (a name's mention in a message's text, or as an attribute, is no
read)."""

from __future__ import annotations

from layerdsl.codegen.function_sub_checks import (
    Binding,
    Check,
    Comment,
    Guarded,
    Other,
    binds,
    guarded,
    printed,
    records,
    unread_bindings_dropped,
    without_repeated_checks,
)

DIM = ["if x.dim() != 2:", '    raise ValueError("x must be 2-d")']
SIZE = ["if len(self.blocks) and x.shape[-1] != self.blocks[0].d:", '    raise ValueError("size")']


def test_each_statement_is_read_into_its_record():
    read = records(["# said", *DIM, "d = x.shape[-1]", "if m is not None:", *("    " + l for l in DIM), "del m"])
    assert [type(r) for r in read] == [Comment, Check, Binding, Guarded, Other]
    check, binding, block = read[1], read[2], read[3]
    assert isinstance(check, Check) and check.tested == {"x"} and len(check.terms) == 1
    assert isinstance(binding, Binding) and binding.binds == {"d"} and binding.reads == {"x"} and not binding.alias
    assert isinstance(block, Guarded) and block.tested == {"m"} and [type(r) for r in block.body] == [Check]
    assert printed(read) == [
        "# said",
        *DIM,
        "d = x.shape[-1]",
        "if m is not None:",
        *("    " + l for l in DIM),
        "del m",
    ]


def test_a_check_under_a_guard_repeating_an_earlier_one_goes_with_its_guard_and_comment():
    first = records(SIZE)
    second = [
        Comment("# Block's checks"),
        guarded("len(self.blocks)", records(["if x.shape[-1] != self.blocks[0].d:", '    raise ValueError("again")'])),
    ]
    assert printed(without_repeated_checks([*first, *second])) == SIZE


def test_a_check_is_kept_where_a_name_it_tests_was_bound_again():
    again = records([*DIM, "x = h", *DIM])
    assert printed(without_repeated_checks(again)) == [*DIM, "x = h", *DIM]
    unrelated = records([*DIM, "y = h", *DIM])
    assert printed(without_repeated_checks(unrelated)) == [*DIM, "y = h"]


def test_an_unknown_statement_forgets_what_was_checked():
    checks = records([*DIM, "if c:", "    pass", "else:", "    pass", *DIM])
    assert isinstance(checks[1], Other)
    assert printed(without_repeated_checks(checks)).count(DIM[0]) == 2


def test_an_alias_goes_where_nothing_after_reads_it():
    checks = records(["x = src", "# said", "if len(self.x):", '    raise ValueError("x is wrong")'])
    assert isinstance(checks[0], Binding) and checks[0].alias
    assert printed(unread_bindings_dropped(checks, set())) == printed(checks)[1:]
    assert printed(unread_bindings_dropped(checks, {"x"})) == printed(checks)  # what runs after reads it
    read = records(["x = src", *DIM])
    assert printed(unread_bindings_dropped(read, set())) == ["x = src", *DIM]


def test_a_guard_left_with_only_its_aliases_unread_goes():
    checks = [Comment("# said"), guarded("len(self.blocks)", records(["x = src"]))]
    assert unread_bindings_dropped(checks, set()) == []
    assert binds(checks) == {"x"}
