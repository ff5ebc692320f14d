"""Adaptive step size DPM-Solver (Lu et al. 2022, "DPM-Solver", sec. 3.4 and Algorithm 4 of app. C),
in the data-prediction form of DPM-Solver++ and EDM's coordinates (:mod:`.ve`).

Each attempt from ``(x~, lambda)`` over ``h`` computes a lower- and a higher-order singlestep solution
that share their evaluations (:mod:`.singlestep`): ``order=2`` pairs DPM-Solver-1 with DPM-Solver-2
(``r1 = 1/2``), ``order=3`` pairs DPM-Solver-2 (``r1 = 1/3``, always in the paper's form, Algorithm 1
of Lu et al. 2022, ``solver_type="midpoint"``) with DPM-Solver-3 (``r1, r2 = 1/3, 2/3``).
The error estimate is the root mean square over every element of the batch of

    (x~_high - x~_low) / delta,      delta = max(atol, rtol max(|x~_low|, |x~_prev|)),

(``x~_prev`` the lower-order solution of the last accepted step). The step is accepted when ``E <= 1``
(the state moves to ``x~_high``); either way the next ``h`` is ``theta h E^(-1/order)`` (Algorithm 4),
capped at the end of the interval. ``D`` at the start of a step is computed once,
whatever the rejections.

Four defaults differ from Algorithm 4, all measured (``bench/samplers_peers.py``, ``docs/samplers.md``):
the growth of ``h`` per attempt is capped at ``max_growth = 2`` (the usual safeguard of adaptive
Runge-Kutta codes; uncapped, one very small error estimate lets the next step jump across the
transition from noise to data, where the two solutions of a pair can agree by chance), and the pair
integrates ``D`` in its ``"heun"`` (Taylor) form (:mod:`.singlestep`) for the accepted (higher-order)
solution, while the lower-order one that only measures the error keeps the paper's first-order weight
(with the Taylor form there too the estimate is larger at tight tolerances and k-diffusion's noise-
prediction solver was up to 1.23x more accurate at equal NFE on the mixture oracle; with the paper's
lower solution at most 1.04x, see ``bench/RESULTS.md``); ``theta = 0.7`` instead of 0.9
(fewer rejected attempts: 1.3-2x less error at equal NFE on the mixture oracle at tight tolerances)
and ``h_init = 0.5`` (the paper's 0.05 spends the first evaluations on steps far below what the
tolerance allows at high noise).

The integration runs from the first to the last level in ``lambda = -log sigma~`` (the levels between
do not matter), evaluating the model at the model times of the points it picks; the step from the
last level to the data is ``x~ = x0_hat`` there, one more evaluation, as for :func:`.ode.ode`. The
evaluation count is whatever the tolerance needs: every attempt, rejected or not, counts.
"""

from __future__ import annotations

import math

import torch

from ..denoiser import Denoiser
from .dpmsolver import SOLVER_TYPES
from .levels import Levels
from .singlestep import first_order_step, second_order_step, third_order_step
from .ve import VEDenoiser, check_choice, check_count, check_order, check_positive

#: the safety factor of the step update (Algorithm 4 has 0.9; 0.7 measured more accurate per NFE)
THETA = 0.7
#: the most a step may grow after one attempt (see the module docstring)
MAX_GROWTH = 2.0


def error_ratio(
    x_high: torch.Tensor, x_low: torch.Tensor, x_prev: torch.Tensor, rtol: float, atol: float
) -> float:
    """``E``: RMS of ``(x_high - x_low)/delta`` with ``delta = max(atol, rtol max(|x_low|, |x_prev|))``."""
    delta = torch.clamp(rtol * torch.maximum(x_low.abs(), x_prev.abs()), min=atol)
    return float(((x_high - x_low) / delta).pow(2).mean().sqrt())


@torch.no_grad()
def dpm_adaptive(
    denoiser: Denoiser,
    x: torch.Tensor,
    levels: Levels,
    *,
    order: int = 3,
    rtol: float = 1e-3,
    atol: float = 1e-3,
    h_init: float = 0.5,
    theta: float = THETA,
    max_growth: float = MAX_GROWTH,
    solver_type: str = "heun",
    max_steps: int = 10_000,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DPM-Solver-12 (``order=2``) or DPM-Solver-23 (``order=3``) with error control to ``rtol``/``atol``
    (in units of ``x~ = x/alpha``; the paper's 0.05 and 0.0078, set for 8-bit images, leave 3-5% errors
    on the oracles of ``docs/samplers.md``, where 1e-3 reaches about 1e-4 at 40-80 NFE), first step
    ``h_init`` in ``lambda``, safety ``theta``, growth cap ``max_growth``; ``solver_type`` of the
    singlestep pair. ``generator`` and ``progress`` are accepted for a uniform signature; the solver is
    deterministic and silent. ``max_steps`` bounds the attempts (a ``RuntimeError`` past it)."""
    check_order(order, (2, 3))
    check_positive(rtol=rtol, atol=atol, h_init=h_init, theta=theta, max_growth=max_growth)
    check_choice("solver_type", solver_type, SOLVER_TYPES)
    check_count(max_steps=max_steps)
    ve = VEDenoiser(denoiser, levels)
    n = len(levels)
    x = ve.to_ve(x)
    if n > 1:
        ell, ell_end = -math.log(float(ve.sigmas[0])), -math.log(float(ve.sigmas[n - 1]))
        x_prev, h, d0 = x, min(h_init, ell_end - ell), ve.at_level(x, 0)
        for _ in range(max_steps):
            if order == 2:
                x_low = first_order_step(x, h, d0)
                x_high, _ = second_order_step(ve, x, ell, h, d0, 0.5, solver_type)
            else:
                x_low, d1 = second_order_step(ve, x, ell, h, d0, 1 / 3, "midpoint")
                x_high = third_order_step(ve, x, ell, h, d0, d1, 1 / 3, 2 / 3, solver_type)
            err = error_ratio(x_high, x_low, x_prev, rtol, atol)
            if err <= 1.0:
                x_prev, x, ell = x_low, x_high, ell + h
                if ell >= ell_end - 1e-12 * max(1.0, abs(ell_end)):
                    break
                d0 = ve.at_sigma(x, math.exp(-ell))
            h = min(min(theta * max(err, 1e-10) ** (-1.0 / order), max_growth) * h, ell_end - ell)
        else:
            raise RuntimeError(f"dpm_adaptive took more than max_steps={max_steps} attempts; raise rtol/atol")
    return ve.at_level(x, n - 1)
