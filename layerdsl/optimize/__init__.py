"""The optimisation stage (see `pipeline`): what the emitter uses from it."""

from layerdsl.optimize.contractions import einsum_operands_in_cheapest_order
from layerdsl.optimize.fusion import addcmul_form, guarded_addcmul, substitute
from layerdsl.optimize.inplace import unary_in_place
from layerdsl.optimize.operations import dtype_sources, fresh_node
from layerdsl.optimize.pipeline import optimize
from layerdsl.optimize.statements import Facts, Stmt

__all__ = [
    "Facts",
    "Stmt",
    "addcmul_form",
    "dtype_sources",
    "einsum_operands_in_cheapest_order",
    "fresh_node",
    "guarded_addcmul",
    "optimize",
    "substitute",
    "unary_in_place",
]
