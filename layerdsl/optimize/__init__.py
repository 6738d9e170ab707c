"""The optimisation stage (see `pipeline`): what the emitter uses from it."""

from layerdsl.optimize.contractions import einsum_operands_in_cheapest_order
from layerdsl.optimize.fusion import addcmul_form, explicit_sums, guarded_addcmul, mean_of_squares_as_norm, substitute
from layerdsl.optimize.inplace import unary_in_place
from layerdsl.optimize.masks import Mask, replaced
from layerdsl.optimize.masks import candidates as mask_candidates
from layerdsl.optimize.operations import dtype_sources, fresh_node
from layerdsl.optimize.pipeline import optimize, prepared, scheduled
from layerdsl.optimize.saving import Pricing, ReadGraph, SavingCost, chosen_saves, elements, walk_reads
from layerdsl.optimize.statements import Facts, Stmt

__all__ = [
    "Facts",
    "Mask",
    "Pricing",
    "ReadGraph",
    "SavingCost",
    "Stmt",
    "addcmul_form",
    "chosen_saves",
    "dtype_sources",
    "elements",
    "explicit_sums",
    "einsum_operands_in_cheapest_order",
    "fresh_node",
    "guarded_addcmul",
    "mask_candidates",
    "mean_of_squares_as_norm",
    "optimize",
    "prepared",
    "replaced",
    "scheduled",
    "substitute",
    "unary_in_place",
    "walk_reads",
]
