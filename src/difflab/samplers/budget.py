"""A budget of network evaluations (NFE) turned into a sampler, its number of levels and its spacing.

:data:`RECOMMENDED` is the most accurate configuration measured per budget (``bench/samplers_peers.py``
and ``docs/samplers.md``, "Which sampler for a budget"); :func:`recommend` picks the row of a budget
and :func:`levels_for_nfe` the number of levels that spends at most the budget for any fixed-step
sampler. ``difflab sample --nfe N`` uses both.
"""

from __future__ import annotations

import argparse

#: smallest NFE of the row -> (sampler, spacing); the row of a budget is the last one it reaches.
#: Each sampler runs with its default options (see ``docs/samplers.md`` for the measurements).
#: Chosen per budget by the smallest worst case, over the two oracle families, of the error relative to
#: the best peer configuration (NFE 5, 6, 8, 10, 12, 15, 20, 50 measured; below 5 the row of 5 is kept).
#: The rows up to 13 NFE are at least as accurate as the best peer on both families at every measured
#: budget they cover: the lowest orders extrapolate least at the fewest steps (iPNDM), AB-DEIS across
#: edm-jump's short steps near the data in between. From 14 NFE the row is the fourth-order UniPC-3 on
#: quadratic steps, chosen on trained networks: the jump spacings' one step above sigma~ = 10 is never
#: refined there, and UniPC on logsnr-jump (2-8x the best peer on the oracles) gave FD 4.71 / 4.55 at
#: 15 / 20 NFE on the digits DDPM and 1.68 / 1.64 on the digits flow model, against 4.38 / 4.10 and
#: 1.45 / 1.55 on quadratic steps (docs/samplers.md). On the Gaussian oracle this row trails the best
#: peer configuration at 15 / 20 NFE (0.76x / 0.83x; the mixture: 3.96x / 2.81x), while difflab's best
#: configuration at those budgets leads the peers.
#: Below 5 NFE (not measured against the peers) the jump would spend one of 2-4 levels where x0_hat
#: barely moves, so plain logsnr is kept there (better than DDIM at 3 NFE: tested).
RECOMMENDED: dict[int, tuple[str, str]] = {
    1: ("ipndm", "logsnr"),
    5: ("ipndm", "logsnr-jump"),
    8: ("deis", "edm-jump"),
    14: ("unipc", "quadratic"),
}

#: NFE of ``N`` levels, for the samplers whose count is not ``N`` (``pc``: one corrector step)
NFE_OF_LEVELS = {
    "heun": lambda n: 2 * n - 1,
    "dpm++2s": lambda n: 2 * n - 1,
    "dpm++3s": lambda n: 3 * n - 2,
    "pc": lambda n: 2 * n,
    "restart": lambda n: 2 * n - 1 + 2 * 9,  # one restart of 9 Heun steps (the defaults)
}
#: samplers whose evaluation count is set by a tolerance or a per-level count, not by the levels
NOT_BY_LEVELS = ("ode", "dpm-adaptive", "langevin")


def levels_for_nfe(sampler: str, nfe: int) -> int:
    """The most levels whose evaluations (with the sampler's default options) fit in ``nfe``."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be an integer >= 1, got {nfe!r}")
    if sampler in NOT_BY_LEVELS:
        raise ValueError(
            f"sampler {sampler!r} does not spend a fixed NFE per level; choose one of the fixed-step samplers"
        )
    cost = NFE_OF_LEVELS.get(sampler, lambda n: n)
    if cost(1) > nfe:
        raise ValueError(f"sampler {sampler!r} needs at least {cost(1)} evaluations, got nfe={nfe}")
    n = 1
    while cost(n + 1) <= nfe:
        n += 1
    return n


def recommend(nfe: int) -> tuple[str, int, str]:
    """``(sampler, steps, spacing)`` of the recommended configuration for ``nfe`` evaluations."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be an integer >= 1, got {nfe!r}")
    sampler, spacing = RECOMMENDED[max(k for k in RECOMMENDED if k <= nfe)]
    return sampler, levels_for_nfe(sampler, nfe), spacing


def plan(
    nfe: int | None, sampler: str | None, steps: int | None, spacing: str | None
) -> tuple[str | None, int | None, str | None]:
    """``(sampler, steps, spacing)`` for ``difflab sample``: unchanged without ``nfe``; with it, the
    recommended configuration when no sampler is named (a given ``spacing`` is kept), else the levels
    of ``sampler`` that fit the budget. ``nfe`` and ``steps`` together are refused."""
    if nfe is None:
        return sampler, steps, spacing
    if steps is not None:
        raise ValueError(f"give --nfe or --steps, not both (got nfe={nfe}, steps={steps})")
    if sampler is None:
        sampler, steps, recommended_spacing = recommend(nfe)
        return sampler, steps, spacing or recommended_spacing
    return sampler, levels_for_nfe(sampler, nfe), spacing


def apply_nfe(args: argparse.Namespace) -> None:
    """:func:`plan` on a parsed ``difflab sample`` command line: sets its ``sampler``, ``steps`` and
    ``spacing`` from its ``nfe`` (a no-op when ``nfe`` is None)."""
    args.sampler, args.steps, args.spacing = plan(args.nfe, args.sampler, args.steps, args.spacing)
