"""Noise levels shared by every sampler: one decreasing list of model times with their
``(alpha, sigma)``; the step after the last level lands on the data (``alpha = 1, sigma = 0``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..schedules import DiscreteSchedule, check_log_snr

SPACINGS = ("uniform", "quadratic", "logsnr", "edm", "edm-jump", "logsnr-jump")
EDM_RHO = 7.0
#: ``edm-jump``, ``logsnr-jump``: the level the first step jumps to, in ``sigma~`` (ten times a unit data
#: scale)
JUMP_SIGMA = 10.0


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

    @property
    def sigma_ve(self) -> torch.Tensor:
        """EDM's noise level ``sigma~ = sigma/alpha = exp(-lambda/2)`` of each level, float64 ``[N]``:
        the noise scale of ``x~ = x/alpha = x_0 + sigma~ eps``, the variance-exploding view."""
        return self.sigma / self.alpha

    def sigma_ve_to_data(self) -> torch.Tensor:
        """``sigma~`` of every level followed by the data's ``0``, float64 ``[N+1]``."""
        return torch.cat([self.sigma_ve, torch.zeros(1, dtype=torch.float64)])

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
    data); ``logsnr``: evenly spaced in ``lambda``, mapped back to fractional ``t``; ``edm``: Karras et
    al. (2022) eq. 5, ``sigma~_i^(1/rho)`` evenly spaced between ``sigma~_max^(1/rho)`` and
    ``sigma~_min^(1/rho)`` with ``rho = 7`` and ``sigma~ = sigma/alpha`` of the schedule's two ends,
    mapped back to fractional ``t`` (much finer near the data than ``logsnr``); ``edm-jump``: the top
    level, then the ``edm`` ramp from ``sigma~ = 10`` (``JUMP_SIGMA``) down to model time 0 for the other
    ``steps - 1`` levels (``edm`` itself where the top level is at most 10). Far above the data's scale
    ``x0_hat`` hardly changes (by ``s^2/sigma~^2`` for data of scale ``s``), so one step spans that range
    accurately and the levels are spent below it (measured in ``docs/samplers.md``); ``logsnr-jump``:
    the same jump, then equal steps in ``lambda`` from ``sigma~ = 10`` down to model time 0 (the
    exponential integrators' own spacing below the jump).
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
    if spacing not in ("edm", "edm-jump", "logsnr-jump"):
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    ends = torch.exp(-0.5 * schedule.lambdas[[T - 1, 0]])  # sigma~_max, sigma~_min
    jump = spacing.endswith("-jump")
    if jump and float(ends[0]) <= JUMP_SIGMA * (1 + 1e-6):
        return make_timesteps(schedule, steps, spacing.removesuffix("-jump"))  # nothing above the jump
    if jump and steps == 2:
        return torch.tensor([T - 1.0, 0.0], dtype=torch.float64)
    if jump:
        ends[0], u = JUMP_SIGMA, u[1:] / u[1]
    if spacing == "logsnr-jump":  # equal steps in log sigma~ = -lambda/2
        sigma_ve = torch.exp(torch.log(ends[0]) + (1 - u) * torch.log(ends[1] / ends[0]))
    else:
        root = ends ** (1 / EDM_RHO)
        sigma_ve = (root[0] + (1 - u) * (root[1] - root[0])) ** EDM_RHO
    t = time_of_sigma_ve(schedule, sigma_ve.clamp(float(ends[1]), float(ends[0])))
    t[-1] = 0.0  # exact ends, free of rounding in the power and the inversion
    if jump:
        t = torch.cat([torch.tensor([T - 1.0], dtype=torch.float64), t])
    t[0] = T - 1.0
    return t


def _invert_decreasing(lam: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fractional ``t`` with ``lambda(t) = target`` for the piecewise-linear, decreasing ``lambda``."""
    asc = lam.flip(0)  # increasing in reversed index
    idx = torch.searchsorted(asc, targets).clamp(1, lam.numel() - 1)
    lo, hi = asc[idx - 1], asc[idx]
    w = ((targets - lo) / (hi - lo)).clamp(0, 1)
    rev = (idx - 1).to(torch.float64) + w  # position in asc
    return (lam.numel() - 1) - rev


def time_of_log_snr(schedule: DiscreteSchedule, lam) -> torch.Tensor:
    """Fractional model time ``t`` with ``lambda(t) = lam``, inverting the schedule's piecewise-linear
    ``lambda`` exactly (so ``schedule.log_snr(time_of_log_snr(schedule, lam)) == lam``).

    ``lam`` must lie in ``[lambda(T-1), lambda(0)]`` (1e-9 of the range past an end is clamped); outside it
    there is no model time to evaluate the network at, and a ``ValueError`` names the range. A schedule
    with a method of this name (continuous time:
    :class:`~difflab.processes.vdm.schedule.ContinuousScheduleView`, flow matching's ``FlowSchedule``)
    inverts its own ``lambda`` exactly.
    """
    exact = getattr(schedule, "time_of_log_snr", None)
    if callable(exact):
        return exact(lam)
    lam = check_log_snr(lam, float(schedule.lambdas[-1]), float(schedule.lambdas[0]), " (t = T-1 .. 0)")
    return _invert_decreasing(schedule.lambdas, lam.flatten()).reshape(lam.shape)


def time_of_sigma_ve(schedule: DiscreteSchedule, sigma_ve) -> torch.Tensor:
    """Fractional model time of EDM's noise level ``sigma~ = sigma/alpha``: since
    ``sigma~^2 = sigma^2/alpha^2 = exp(-lambda)``, this is ``time_of_log_snr(-2 log sigma~)``."""
    sigma_ve = torch.as_tensor(sigma_ve, dtype=torch.float64)
    if sigma_ve.numel() and not bool((sigma_ve > 0).all()):
        raise ValueError(f"sigma~ must be > 0 to have a model time, got {sigma_ve.min().item():g}")
    return time_of_log_snr(schedule, -2.0 * torch.log(sigma_ve))


def make_levels(schedule: DiscreteSchedule, timesteps: torch.Tensor) -> Levels:
    t = schedule.check_t(torch.as_tensor(timesteps, dtype=torch.float64).flatten())
    if t.numel() > 1 and not bool((t[1:] < t[:-1]).all()):
        raise ValueError("sampler timesteps must be strictly decreasing")
    alpha, sigma = schedule.alpha_sigma(t)
    return Levels(t=t, alpha=alpha, sigma=sigma)
