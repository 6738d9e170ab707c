"""`guarded_addcmul`: `v = a * b` then `v = v + m` (m optional) as one `addcmul`."""

from __future__ import annotations

from layerdsl.ir import build as B
from layerdsl.optimize.fusion import guarded_addcmul


def test_a_product_plus_the_member_is_one_addcmul():
    product = B.binop("*", B.name("a"), B.name("b"))
    merged = guarded_addcmul(product, B.binop("+", B.name("v"), B.name("m")), "v", "m")
    assert merged is not None and B.key(merged) == "addcmul(m, a, b)"


def test_an_update_that_is_not_the_value_plus_the_member_is_left_alone():
    product = B.binop("*", B.name("a"), B.name("b"))
    assert guarded_addcmul(product, B.binop("+", B.name("v"), B.name("w")), "v", "m") is None
    squared_member = B.binop("+", B.name("v"), B.binop("*", B.name("m"), B.name("m")))
    assert guarded_addcmul(product, squared_member, "v", "m") is None
