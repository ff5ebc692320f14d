"""Adaptive Runge-Kutta on the probability-flow ODE (Song et al. 2021, sec. 4.3), via torchdiffeq.

In EDM's coordinates (:mod:`.ve`) and the variable ``u = log sigma~ = -lambda/2`` the ODE reads

    dx~/du = sigma~ dx~/dsigma~ = x~ - D(x~; sigma~),

smooth over the whole range (``x~`` grows like ``sigma~`` at high noise, where ``D`` is nearly
constant). It is integrated from the first level to the last with an adaptive solver (Dormand-Prince
RK45, ``dopri5``, by default), the model being evaluated at whatever fractional model times the
solver picks; the step from the last level to the data is the denoising step ``x0_hat``. For adaptive
methods only the first and last levels matter, so the spacing and number of levels do not change the
result; a fixed-step torchdiffeq method (``rk4``, ``midpoint``, ...) steps from level to level. The
evaluation count is what the solver actually used (the Denoiser counts every call, including the
adaptive solver's rejected steps and its initial-step probe), plus one for the last step.
"""

from __future__ import annotations

import math

import torch

from ..denoiser import Denoiser
from .levels import Levels
from .ve import VEDenoiser, check_positive

ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


@torch.no_grad()
def ode(
    denoiser: Denoiser,
    x: torch.Tensor,
    levels: Levels,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Solve the probability-flow ODE with torchdiffeq's adaptive ``method`` to ``rtol``/``atol``
    (``atol`` in units of ``x~ = x/alpha``), then denoise at the last level. ``generator`` and
    ``progress`` are accepted for a uniform signature; the solver is deterministic and silent."""
    check_positive(rtol=rtol, atol=atol)
    try:
        from torchdiffeq import odeint
    except ImportError as exc:
        raise ImportError(
            "the 'ode' sampler needs torchdiffeq: pip install 'difflab[ode]' (or pip install torchdiffeq)"
        ) from exc
    ve = VEDenoiser(denoiser, levels)
    x = ve.to_ve(x)
    n = len(levels)
    if n > 1:

        lo, hi = ve.sigma_min, ve.sigma_max

        def velocity(u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            # only the solver's initial-step probe can leave the schedule's range; steps never do
            return y - ve.at_sigma(y, min(max(math.exp(float(u)), lo), hi))

        if method in ADAPTIVE:  # the two ends; step_t lands on the last one instead of interpolating
            u = torch.log(ve.sigmas[[0, n - 1]]).to(x.device)
            options = {"step_t": u[1:]}
        else:  # a fixed-step method steps from level to level
            u, options = torch.log(ve.sigmas[:n]).to(x.device), None
        x = odeint(velocity, x, u, rtol=rtol, atol=atol, method=method, options=options)[-1]
    return ve.at_level(x, n - 1)
