"""Noise levels shared by every sampler: one decreasing list of model times with their
``(alpha, sigma)``; the step after the last level lands on the data (``alpha = 1, sigma = 0``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..schedules import DiscreteSchedule

SPACINGS = ("uniform", "quadratic", "logsnr")


@dataclass(frozen=True)
class Levels:
    """Decreasing model times ``t`` (float64 ``[N]``) and their ``alpha_t``, ``sigma_t``.

    Samplers walk ``t[0] -> t[1] -> ... -> t[N-1] -> data``; every stride is read from this one
    list, never computed apart from it.
    """

    t: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor

    def __len__(self) -> int:
        return int(self.t.numel())

    def pairs(self):
        """Yield ``(t, alpha_t, sigma_t, alpha_s, sigma_s)`` for each step, the last ``s`` being the
        data itself (``alpha_s = 1``, ``sigma_s = 0``)."""
        n = len(self)
        for i in range(n):
            if i + 1 < n:
                a_s, s_s = self.alpha[i + 1], self.sigma[i + 1]
            else:
                a_s, s_s = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
            yield self.t[i], self.alpha[i], self.sigma[i], a_s, s_s


def make_timesteps(schedule: DiscreteSchedule, steps: int, spacing: str = "uniform") -> torch.Tensor:
    """``steps`` decreasing model times from ``T-1`` down to ``0``.

    ``uniform``: evenly spaced indices (rounded to integers, so ``steps = T`` is the full chain);
    ``quadratic``: ``t = (T-1) u^2`` for evenly spaced ``u`` (DDIM's quadratic stride, finer near the
    data); ``logsnr``: evenly spaced in ``lambda``, mapped back to fractional ``t``.
    """
    T = schedule.timesteps
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in [1, {T}], got {steps!r}")
    if steps == 1:
        return torch.tensor([T - 1.0], dtype=torch.float64)
    u = torch.linspace(1.0, 0.0, steps, dtype=torch.float64)
    if spacing == "uniform":
        return torch.round(u * (T - 1))
    if spacing == "quadratic":
        return u**2 * (T - 1)
    if spacing == "logsnr":
        lam = schedule.lambdas
        targets = lam[-1] + (1 - u) * (lam[0] - lam[-1])
        return _invert_decreasing(lam, targets)
    raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")


def _invert_decreasing(lam: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fractional ``t`` with ``lambda(t) = target`` for the piecewise-linear, decreasing ``lambda``."""
    asc = lam.flip(0)  # increasing in reversed index
    idx = torch.searchsorted(asc, targets).clamp(1, lam.numel() - 1)
    lo, hi = asc[idx - 1], asc[idx]
    w = ((targets - lo) / (hi - lo)).clamp(0, 1)
    rev = (idx - 1).to(torch.float64) + w  # position in asc
    return (lam.numel() - 1) - rev


def make_levels(schedule: DiscreteSchedule, timesteps: torch.Tensor) -> Levels:
    t = schedule.check_t(torch.as_tensor(timesteps, dtype=torch.float64).flatten())
    if t.numel() > 1 and not bool((t[1:] < t[:-1]).all()):
        raise ValueError("sampler timesteps must be strictly decreasing")
    alpha, sigma = schedule.alpha_sigma(t)
    return Levels(t=t, alpha=alpha, sigma=sigma)
