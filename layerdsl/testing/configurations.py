"""A layer's configuration space, and the checks of layer_checks.py run over it.

The example fixes one configuration; a layer's bugs hide in the others. Each of the layer's examples
(`example_seeds`: every `example(...)` line, every value of a list) has its own matrix, the product of:

- every combination of the `bool` arguments the example does not give (so every optional member present
  and absent); a `bool` the example gives is fixed (a spec narrows the matrix that way). Past
  MAX_FLAG_COMBINATIONS combinations (more than 6 such arguments), the defaults, all true, all false, and
  each argument flipped alone from its default: the matrix grows with their number, not exponentially;
- `training` true and false, where the forward reads `training`;
- 0, 1 and 2 leading dims for `...`, where an input is declared `[..., n]`;
- two sets of sizes for the symbolic dims (the example's, then other distinct small ones);
- float32 and float64 (gradcheck and gradgradcheck run in float64 only: float32 has too few digits for
  finite differences; the float32 configurations run the forward, agreement, reset and state_dict checks).

A configuration two examples' matrices share runs once. Each configuration runs MATRIX_CHECKS; `summary`
prints the configuration count per layer and every failure with the configuration that failed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.ir.visit import walk
from layerdsl.semantics.evaluate import example_seeds
from layerdsl.testing.layer_checks import SIZES, Case, Config, applicable, run_check

# The checks each configuration runs; hooks, repr and surrogate do not depend on it and run once per layer.
MATRIX_CHECKS = ("shapes", "gradcheck", "gradgradcheck", "function-vs-autograd", "reset_parameters", "state_dict")
DTYPES = (torch.float64, torch.float32)
LEAD_RANKS = (0, 1, 2)


@dataclass
class Outcome:
    """One check of one configuration of one layer."""

    case: Case
    check: str
    result: str  # "ok", "skip" or "FAIL"
    detail: str


def configurations(case: Case) -> list[Config]:
    """Every configuration of the matrix of the case's example (`Case.seed`), the example's own first."""
    example = case.example()
    flags = [a.name for a in case.layer.args if a.type == "bool" and a.name not in example]
    trainings: tuple[bool | None, ...] = (True, False) if reads_training(case.layer) else (None,)
    ranks = LEAD_RANKS if has_ellipsis_input(case.layer) else (1,)
    out = []
    for values, training, sizes, rank, dtype in itertools.product(
        flag_values(case, flags), trainings, size_sets(case), ranks, DTYPES
    ):
        lead = lead_sizes(rank, sizes, case.args())
        out.append(Config(dict(zip(flags, values)), sizes, lead, dtype, training))
    return out


MAX_FLAG_COMBINATIONS = 64


def flag_values(case: Case, flags: list[str]) -> list[tuple[bool, ...]]:
    """The values of `flags` the matrix takes: every combination, or past MAX_FLAG_COMBINATIONS the
    defaults, all true, all false and each flag flipped alone from its default (in that order, each once)."""
    if 2 ** len(flags) <= MAX_FLAG_COMBINATIONS:
        return list(itertools.product((True, False), repeat=len(flags)))
    defaults = tuple(bool(case.args().get(f, True)) for f in flags)
    flipped = [tuple(v != (k == i) for k, v in enumerate(defaults)) for i in range(len(flags))]
    return list(dict.fromkeys([defaults, (True,) * len(flags), (False,) * len(flags), *flipped]))


def reads_training(layer: N.Layer) -> bool:
    forward = layer.forward
    return forward is not None and any(
        isinstance(n, N.Name) and n.id == "training" for s in forward.body for n in walk(s)
    )


def has_ellipsis_input(layer: N.Layer) -> bool:
    forward = layer.forward
    return forward is not None and any(
        inp.shape is not None and any(isinstance(d, N.EllipsisItem) for d in inp.shape.dims) for inp in forward.inputs
    )


def size_sets(case: Case) -> list[dict[str, int]]:
    """The example's sizes, and a second set where every symbolic dim takes another size, distinct from
    the arguments' and from each other (so a transposition cannot hide)."""
    first = case.dims()
    if any(isinstance(v, N.Call) for v in case.args().values()):
        return [first]  # a layer argument's instance takes the sizes its example gives (its own arguments')
    taken = {v for v in case.args().values() if isinstance(v, int) and not isinstance(v, bool)}
    taken |= set(first.values())
    second = {}
    for d, size in first.items():
        other = next((s for s in SIZES if s not in taken), size + 1)
        second[d] = other
        taken.add(other)
    return [first, second]


def lead_sizes(rank: int, sizes: dict[str, int], args: dict) -> tuple[int, ...]:
    """`rank` sizes for `...`: its own size first, then one unlike every dim and argument."""
    if rank == 0:
        return ()
    taken = {*sizes.values(), *args.values()}
    spare = next(s for s in (*SIZES, 10, 11, 12, 13) if s not in taken)
    return (sizes["..."], spare)[:rank]


def seeded_cases(case: Case) -> list[Case]:
    """The layer once per configuration its `example(...)` lines give (`example_seeds`), the first's first."""
    return [replace(case, seed=k) for k in range(len(example_seeds(case.layer)))]


def configured_cases(case: Case) -> Iterator[Case]:
    """Every configuration of every example, each once (two examples' matrices may share configurations)."""
    seen = set()
    for seeded in seeded_cases(case):
        for config in configurations(seeded):
            configured = replace(seeded, config=config)
            key = _identity(configured)
            if key not in seen:
                seen.add(key)
                yield configured


def _identity(case: Case) -> tuple:
    """What a configured case runs with: equal for two that build and feed the layer alike."""
    inputs = tuple(spec_text(case.example()[i.name]) for i in case.forward.inputs if i.name in case.example())
    config = case.config
    assert config is not None  # only configured cases are compared
    return (
        repr(sorted(case.args().items())),
        repr(sorted(case.dims().items())),
        case.lead(),
        config.dtype,
        config.training,
        inputs,
    )


def run_matrix(cases: list[Case], package: str) -> list[Outcome]:
    outcomes = []
    for case in cases:
        for configured in configured_cases(case):
            for check in applicable(configured, MATRIX_CHECKS):
                outcomes.append(Outcome(configured, check, *run_check(check, configured, package)))
    return outcomes


def label(case: Case) -> str:
    """How a failure names its configuration: what its example gives differently from the first, then the
    configuration (`n=8, bias=False, B=4, ...=(3,), float32`)."""
    config = case.config.label() if case.config else "example"
    return f"{case.seed_label()}, {config}" if case.seed else config


def summary(outcomes: list[Outcome]) -> str:
    """A table of configuration counts and results per layer, then each failure with its configuration."""
    layers: dict[str, dict[str, int]] = {}
    configs: dict[str, set[int]] = {}
    for o in outcomes:
        counts = layers.setdefault(o.case.name, {"ok": 0, "skip": 0, "FAIL": 0})
        counts[o.result] += 1
        configs.setdefault(o.case.name, set()).add(id(o.case.config))
    width = max([len("layer"), *map(len, layers)])
    lines = [f"{'layer':<{width}}  configurations  passed  failed  skipped"]
    for name, counts in layers.items():
        lines.append(
            f"{name:<{width}}  {len(configs[name]):>14}  {counts['ok']:>6}  {counts['FAIL']:>6}  {counts['skip']:>7}"
        )
    failures = [o for o in outcomes if o.result == "FAIL"]
    if failures:
        lines += ["", "failures:"]
        for o in failures:
            lines.append(f"  {o.case.name} [{label(o.case)}] {o.check}: {o.detail[:160]}")
    return "\n".join(lines)
