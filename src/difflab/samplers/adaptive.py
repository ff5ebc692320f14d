"""Adaptive step size DPM-Solver (Lu et al. 2022, "DPM-Solver", sec. 3.4 and Algorithm 4 of app. C),
in EDM's coordinates (:mod:`.ve`), with the data prediction of DPM-Solver++ (default) or the paper's
noise prediction.

Each attempt from ``(x~, lambda)`` over ``h`` computes a lower- and a higher-order singlestep solution
that share their evaluations: ``order=2`` pairs DPM-Solver-1 with DPM-Solver-2 (``r1 = 1/2``),
``order=3`` pairs DPM-Solver-2 (``r1 = 1/3``) with DPM-Solver-3 (``r1, r2 = 1/3, 2/3``).

* ``prediction="data"`` (:mod:`.singlestep`): the higher solution integrates the polynomial through
  the ``D`` values exactly (``solver_type="heun"``, the default); the lower one of the 2-3 pair, which
  only measures the error, keeps the paper's first-order weight ``J_0/(2 r1)`` (with the exact form
  there too, the estimate is larger at tight tolerances: 1.1-1.2x more NFE at equal error on the
  mixture oracle of ``bench/samplers_peers.py``).
* ``prediction="noise"``: the paper's own DPM-Solver-1/2/3 (its Algorithms 1-2 with ``eps`` =
  ``(x~ - D)/sigma~``, :func:`noise_pair`), what Algorithm 4 and k-diffusion's ``dpm_adaptive`` run.

Measured on the oracles of ``docs/samplers.md`` (``bench/RESULTS.md``): data prediction is the more
accurate at equal NFE almost everywhere (10-100x on the 64-D Gaussian, whose coordinates with
``sigma~`` far above their scale have a nearly constant ``D``), noise prediction at tight tolerances
(below ~1e-4) on the 2-D mixture (1.3-1.5x less error at 130-160 NFE).

The error estimate is the root mean square over every element of the batch of

    (x~_high - x~_low) / delta,      delta = max(atol, rtol max(|x~_low|, |x~_prev|)),

(``x~_prev`` the lower-order solution of the last accepted step). The step is accepted when ``E <= 1``
(the state moves to ``x~_high``); either way the next ``h`` is ``theta h E^(-1/order)`` (Algorithm 4),
capped at the end of the interval. ``D`` at the start of a step is computed once,
whatever the rejections.

Three controller defaults differ from Algorithm 4, all measured (``bench/samplers_peers.py``,
``docs/samplers.md``): the growth of ``h`` per attempt is capped at ``max_growth = 2`` (the usual
safeguard of adaptive Runge-Kutta codes; uncapped, one very small error estimate lets the next step
jump across the transition from noise to data, where the two solutions of a pair can agree by chance),
``theta = 0.7`` instead of 0.9 (fewer rejected attempts: 1.3-2x less error at equal NFE on the mixture
oracle at tight tolerances; 0.8 and 0.9 measured worse, as did k-diffusion's controller, which accepts
``E`` up to 1.9 and limits the step change by ``1 + atan(f - 1)``) and ``h_init = 0.5`` (the paper's
0.05 spends the first evaluations on steps far below what the tolerance allows at high noise).

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

PREDICTIONS = ("data", "noise")
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


def noise_pair(
    ve: VEDenoiser, x: torch.Tensor, ell: float, h: float, d0: torch.Tensor, order: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x~_low, x~_high)`` of DPM-Solver-12 (``order=2``) or -23 (``order=3``) in the paper's noise
    form (Lu et al. 2022, Algorithms 1-2 and eq. 3.7-3.9 with ``eps = (x~ - D)/sigma~``; in ``x~`` the
    linear term vanishes and ``sigma~_t (e^h - 1) = sigma~_s - sigma~_t``): ``order - 1`` more
    evaluations. The first intermediate point is the DDIM step, the same as in the data form."""
    def sigma(lam: float) -> float:
        return math.exp(-lam)

    s_t, phi = sigma(ell + h), math.expm1(h)
    eps0 = (x - d0) / sigma(ell)
    r1 = 0.5 if order == 2 else 1 / 3
    u1 = first_order_step(x, r1 * h, d0)
    eps1 = (u1 - ve.at_sigma(u1, sigma(ell + r1 * h))) / sigma(ell + r1 * h)
    x_first = x - s_t * phi * eps0
    x_second = x_first - (s_t * phi / (2 * r1)) * (eps1 - eps0)
    if order == 2:
        return x_first, x_second
    r2 = 2 / 3
    s_2, phi_2 = sigma(ell + r2 * h), math.expm1(r2 * h)
    u2 = x - s_2 * phi_2 * eps0 - s_2 * (r2 / r1) * (phi_2 / (r2 * h) - 1.0) * (eps1 - eps0)
    eps2 = (u2 - ve.at_sigma(u2, s_2)) / s_2
    return x_second, x_first - (s_t / r2) * (phi / h - 1.0) * (eps2 - eps0)


def embedded_pair(
    ve: VEDenoiser, x: torch.Tensor, ell: float, h: float, d0: torch.Tensor, order: int, prediction: str,
    solver_type: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x~_low, x~_high)`` from ``(x~, lambda = ell)`` over ``h`` given ``D_0`` there: the solutions of
    order ``order - 1`` and ``order`` whose difference is the error estimate (``order - 1`` evaluations)."""
    if prediction == "noise":
        return noise_pair(ve, x, ell, h, d0, order)
    if order == 2:
        return first_order_step(x, h, d0), second_order_step(ve, x, ell, h, d0, 0.5, solver_type)[0]
    x_low, d1 = second_order_step(ve, x, ell, h, d0, 1 / 3, "midpoint")
    return x_low, third_order_step(ve, x, ell, h, d0, d1, 1 / 3, 2 / 3, solver_type)


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
    prediction: str = "data",
    max_steps: int = 10_000,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DPM-Solver-12 (``order=2``) or DPM-Solver-23 (``order=3``) with error control to ``rtol``/``atol``
    (in units of ``x~ = x/alpha``; the paper's 0.05 and 0.0078, set for 8-bit images, leave 3-5% errors
    on the oracles of ``docs/samplers.md``, where 1e-3 reaches about 1e-4 at 40-80 NFE), first step
    ``h_init`` in ``lambda``, safety ``theta``, growth cap ``max_growth``; ``solver_type`` of the
    singlestep pair of ``prediction="data"`` (``"noise"``: the paper's form, see the module docstring).
    ``generator`` and ``progress`` are accepted for a uniform signature; the solver is
    deterministic and silent. ``max_steps`` bounds the attempts (a ``RuntimeError`` past it)."""
    check_order(order, (2, 3))
    check_positive(rtol=rtol, atol=atol, h_init=h_init, theta=theta, max_growth=max_growth)
    check_choice("solver_type", solver_type, SOLVER_TYPES)
    check_choice("prediction", prediction, PREDICTIONS)
    check_count(max_steps=max_steps)
    ve = VEDenoiser(denoiser, levels)
    n = len(levels)
    x = ve.to_ve(x)
    if n > 1:
        ell, ell_end = -math.log(float(ve.sigmas[0])), -math.log(float(ve.sigmas[n - 1]))
        x_prev, h, d0 = x, min(h_init, ell_end - ell), ve.at_level(x, 0)
        for _ in range(max_steps):
            x_low, x_high = embedded_pair(ve, x, ell, h, d0, order, prediction, solver_type)
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
