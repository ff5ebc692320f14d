"""Euler and Heun on the probability-flow ODE in EDM's coordinates (Karras et al. 2022, Alg. 1-2).

With ``x~ = x/alpha`` and ``sigma~ = sigma/alpha`` (see :mod:`.ve`) the ODE is
``dx~/dsigma~ = d(x~, sigma~) = (x~ - D(x~; sigma~)) / sigma~``. One step from ``sigma~_i`` to
``sigma~_{i+1}``:

* Euler: ``x~_{i+1} = x~_i + (sigma~_{i+1} - sigma~_i) d_i`` (first order, one evaluation);
* Heun (Algorithm 2): the Euler point is corrected with the slope there,
  ``x~_{i+1} = x~_i + (sigma~_{i+1} - sigma~_i) (d_i + d'_{i+1}) / 2`` (second order, two
  evaluations), except on the last step to ``sigma~ = 0`` where ``d'`` is undefined and the Euler step
  (which lands exactly on ``D``) is kept. ``N`` levels therefore cost ``2N - 1`` evaluations.

Stochastic churn (Algorithm 2, lines 4-6): at levels with ``s_tmin <= sigma~_i <= s_tmax`` the noise is
first raised to ``sigma~^ = (1 + gamma) sigma~_i`` with ``gamma = min(s_churn / N, sqrt(2) - 1)`` by
adding ``sqrt(sigma~^2 - sigma~_i^2) s_noise z``, and the step starts from ``sigma~^``. ``sigma~^`` is
capped at ``sigma~`` of model time ``T-1`` (the network knows no larger noise), so the first level of a
full-range list is never churned. ``s_churn = 0`` (the default) is the deterministic ODE solver.
"""

from __future__ import annotations

import math

import torch

from ..denoiser import Denoiser
from .ddpm import noise_like, progress_iter
from .levels import Levels
from .ve import VEDenoiser, check_nonnegative


def _edm_sampler(
    denoiser: Denoiser,
    x: torch.Tensor,
    levels: Levels,
    *,
    second_order: bool,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    generator: torch.Generator | None,
    progress: bool,
    name: str,
) -> torch.Tensor:
    check_nonnegative(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    ve = VEDenoiser(denoiser, levels)
    sig, n = ve.sigmas, len(levels)
    gamma_max = min(s_churn / n, math.sqrt(2.0) - 1.0)
    x = ve.to_ve(x)
    for i in progress_iter(range(n), n, progress, name):
        s_i, s_next = float(sig[i]), float(sig[i + 1])
        s_hat = min(s_i * (1.0 + gamma_max), ve.sigma_max) if s_tmin <= s_i <= s_tmax else s_i
        if s_hat > s_i:
            x = x + s_noise * math.sqrt(s_hat**2 - s_i**2) * noise_like(x, generator)
            x0 = ve.at_sigma(x, s_hat)
        else:
            s_hat, x0 = s_i, ve.at_level(x, i)
        if s_next == 0.0:  # the Euler step to the data is the denoised point itself
            x = x0
            continue
        d = (x - x0) / s_hat
        x_next = x + (s_next - s_hat) * d
        if second_order:
            d_next = (x_next - ve.at_level(x_next, i + 1)) / s_next
            x_next = x + (s_next - s_hat) * 0.5 * (d + d_next)
        x = x_next
    return x


@torch.no_grad()
def euler(
    denoiser: Denoiser,
    x: torch.Tensor,
    levels: Levels,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Euler on ``dx~/dsigma~ = (x~ - x0_hat)/sigma~`` (EDM Alg. 1 with Euler steps): ``N`` evaluations,
    first order in the step. The churn options are those of :func:`heun`."""
    return _edm_sampler(
        denoiser, x, levels, second_order=False, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax,
        s_noise=s_noise, generator=generator, progress=progress, name="euler",
    )


@torch.no_grad()
def heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    levels: Levels,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """EDM Algorithm 2: Heun's second-order method with optional stochastic churn.

    ``N`` levels cost ``2N - 1`` evaluations (the last step, to the data, is an Euler step).
    ``s_churn`` (total churn, EDM's ``S_churn``), ``s_tmin``/``s_tmax`` (the ``sigma~`` window in which
    noise is added) and ``s_noise`` (noise inflation, ``S_noise``) as in the paper; ``sigma~`` is the
    variance-exploding noise level ``sigma/alpha``.
    """
    return _edm_sampler(
        denoiser, x, levels, second_order=True, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax,
        s_noise=s_noise, generator=generator, progress=progress, name="heun",
    )
