"""The variance-exploding view every ODE/SDE sampler here steps in (Karras et al. 2022, sec. 2).

Dividing ``x_t = alpha_t x_0 + sigma_t eps`` by ``alpha_t`` gives ``x~ = x/alpha = x_0 + sigma~ eps``
with ``sigma~ = sigma/alpha = exp(-lambda/2)``. In these coordinates the probability-flow ODE of any
Gaussian diffusion, variance preserving or exploding, is EDM's eq. 3 with ``s = 1``:

    dx~/dsigma~ = (x~ - D(x~; sigma~)) / sigma~,     D = E[x_0 | x~] = x0_hat,

and the data (``alpha = 1, sigma = 0``) is ``x~ = x``. A sampler divides ``x_T`` by ``alpha`` of the
first level, steps on ``sigma~`` and returns ``x~`` at ``sigma~ = 0``. The network is still called
in its own coordinates: ``D(x~; sigma~)`` is ``x0_hat`` of ``denoiser(alpha x~, t)``.
"""

from __future__ import annotations

import math

import torch

from ..checks import check_choice, check_count, check_nonnegative, check_order, check_positive
from ..denoiser import Denoiser
from .levels import Levels, time_of_sigma_ve


class VEDenoiser:
    """``D(x~; sigma~)`` on one list of levels: :meth:`at_level` for the listed levels (the model
    time is read from ``levels.t``), :meth:`at_sigma` for any ``sigma~`` in between (the model time
    is found by inverting the schedule's piecewise-linear ``lambda``; fractional ``t`` is fine).

    ``sigmas`` is ``sigma~`` of every level followed by the data's 0, float64 ``[N+1]``.
    """

    def __init__(self, denoiser: Denoiser, levels: Levels):
        self.denoiser = denoiser
        self.levels = levels
        self.sigmas = levels.sigma_ve_to_data()

    def to_ve(self, x: torch.Tensor) -> torch.Tensor:
        """``x_T -> x~_T = x_T / alpha`` of the first level."""
        return x / float(self.levels.alpha[0])

    def at_level(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """``x0_hat`` at level ``i`` for ``x~`` (the network sees ``alpha_i x~``)."""
        x0, _ = self.denoiser(float(self.levels.alpha[i]) * x, self.levels.t[i])
        return x0

    def at_sigma(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """``x0_hat`` at an arbitrary ``sigma~`` within the schedule's range."""
        schedule = getattr(self.denoiser, "schedule", None)
        if schedule is None:
            raise TypeError(
                "this sampler evaluates the model between the listed levels and needs the noise "
                "schedule to find their model times: pass a difflab.Denoiser (it has .schedule)"
            )
        t = time_of_sigma_ve(schedule, sigma)
        alpha, _ = schedule.alpha_sigma(t)
        x0, _ = self.denoiser(float(alpha) * x, t)
        return x0

    @property
    def sigma_max(self) -> float:
        """``sigma~`` at model time ``T-1``: the most noise the network has seen."""
        schedule = getattr(self.denoiser, "schedule", None)
        return float(self.sigmas[0]) if schedule is None else math.exp(-0.5 * float(schedule.lambdas[-1]))

    @property
    def sigma_min(self) -> float:
        """``sigma~`` at model time ``0``: the least noise the network has seen."""
        schedule = getattr(self.denoiser, "schedule", None)
        return float(self.sigmas[-2]) if schedule is None else math.exp(-0.5 * float(schedule.lambdas[0]))


__all__ = ["VEDenoiser", "check_choice", "check_count", "check_nonnegative", "check_order", "check_positive"]
