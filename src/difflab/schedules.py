"""Noise schedules of the discrete-time Gaussian diffusion.

Notation of the notes: ``alpha_t = 1 - beta_t`` and ``alpha_bar_t = prod_{s<=t} alpha_s``, so that
``q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)``. In code the step index ``i`` runs
over ``0 .. T-1``; index ``i`` is the notes' ``t = i + 1``.

All schedule math is done in float64; callers cast at the boundary.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

SCHEDULES = ("linear", "cosine", "sigmoid")


def linear_betas(timesteps: int, beta_1: float = 1e-4, beta_T: float = 0.02) -> torch.Tensor:
    """DDPM's linear schedule, ``beta_t`` from ``1e-4`` to ``0.02`` at ``T = 1000``.

    For other ``T`` both endpoints are scaled by ``1000 / T`` (improved DDPM), which keeps
    ``alpha_bar_T`` near ``e^-10`` (log within ~0.8 for ``T >= 100``); ``T <= 20`` is refused since
    ``beta_T`` would reach 1. (Seed 002 writes the end point as
    0.002; with that value ``alpha_bar_T`` would be ``e^-1``, far from pure noise.)
    """
    _check_timesteps(timesteps)
    scale = 1000.0 / timesteps
    if scale * beta_T >= 1:
        raise ValueError(
            f"the linear schedule rescaled to timesteps={timesteps} has beta_T = {scale * beta_T:g} >= 1; "
            f"use timesteps >= {int(1000 * beta_T) + 1} or pass betas explicitly"
        )
    return torch.linspace(scale * beta_1, scale * beta_T, timesteps, dtype=torch.float64)


def _betas_from_alpha_bar(
    alpha_bar: Callable[[torch.Tensor], torch.Tensor], timesteps: int, max_beta: float
) -> torch.Tensor:
    """``beta_t = 1 - alpha_bar(t/T) / alpha_bar((t-1)/T)``, clipped at ``max_beta``."""
    s = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    ab = alpha_bar(s)
    betas = 1.0 - ab[1:] / ab[:-1]
    return betas.clamp(min=0.0, max=max_beta)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM's cosine schedule ``alpha_bar(t) = cos^2(pi/2 (t/T + s)/(1 + s))``,
    normalised by its value at ``t = 0``; betas clipped at 0.999 near ``t = T``."""
    _check_timesteps(timesteps)

    def f(u: torch.Tensor) -> torch.Tensor:
        return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    return _betas_from_alpha_bar(lambda u: f(u) / f(torch.zeros(())), timesteps, max_beta)


def sigmoid_betas(
    timesteps: int,
    start: float = -3.0,
    end: float = 3.0,
    tau: float = 1.0,
    max_beta: float = 0.999,
) -> torch.Tensor:
    """Sigmoid schedule (Jabri et al. 2022): ``alpha_bar(u)`` falls as a shifted, scaled
    ``1 - sigmoid((u (end - start) + start) / tau)`` normalised to 1 at ``u = 0``."""
    _check_timesteps(timesteps)
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))

    def alpha_bar(u: torch.Tensor) -> torch.Tensor:
        return (v_end - torch.sigmoid((u * (end - start) + start) / tau)) / (v_end - v_start)

    return _betas_from_alpha_bar(alpha_bar, timesteps, max_beta)


def make_betas(schedule: str, timesteps: int) -> torch.Tensor:
    """Betas of a named schedule (``linear``, ``cosine`` or ``sigmoid``), float64 ``[T]``."""
    if schedule == "linear":
        return linear_betas(timesteps)
    if schedule == "cosine":
        return cosine_betas(timesteps)
    if schedule == "sigmoid":
        return sigmoid_betas(timesteps)
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def _check_timesteps(timesteps: int) -> None:
    if not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps < 1:
        raise ValueError(f"timesteps must be a positive integer, got {timesteps!r}")


def check_model_time(
    t, top: int, what: str = "model time", rule: str = "it must lie in", note: str = ""
) -> torch.Tensor:
    """``t`` as float64 (detached) when every entry lies in ``[0, top]``; otherwise a one-line
    ``ValueError`` naming the first bad entry (``"{what} {bad} is out of range: {rule} [0, top]{note}"``)."""
    t64 = torch.as_tensor(t).detach().to(torch.float64)
    if t64.numel() and (bool(torch.isnan(t64).any()) or float(t64.min()) < 0 or float(t64.max()) > top):
        bad = t64[(t64 < 0) | (t64 > top) | torch.isnan(t64)].flatten()[0].item()
        raise ValueError(f"{what} {bad} is out of range: {rule} [0, {top}]{note}")
    return t64


def check_log_snr(lam, lo: float, hi: float, ends: str = "") -> torch.Tensor:
    """``lam`` as float64 clamped to ``[lo, hi]`` when it lies within 1e-9 of the range's width of it;
    otherwise a one-line ``ValueError`` naming the first bad value and the range (``ends`` is appended,
    e.g. which model times the ends are)."""
    lam = torch.as_tensor(lam, dtype=torch.float64)
    slack = 1e-9 * (hi - lo)
    if lam.numel() and (
        bool(torch.isnan(lam).any()) or float(lam.min()) < lo - slack or float(lam.max()) > hi + slack
    ):
        bad = lam[(lam < lo - slack) | (lam > hi + slack) | torch.isnan(lam)].flatten()[0].item()
        raise ValueError(f"log-SNR {bad:g} is outside the schedule's range [{lo:g}, {hi:g}]{ends}")
    return lam.clamp(lo, hi)


class DiscreteSchedule:
    """The quantities of the notes for one beta schedule, all float64 tensors of length ``T``.

    ``betas[i]``, ``alphas[i] = 1 - betas[i]``, ``alpha_bar[i] = prod_{j<=i} alphas[j]``,
    ``alpha_bar_prev[i] = alpha_bar[i-1]`` (1 at ``i = 0``) and the log signal-to-noise ratio
    ``lambda[i] = log(alpha_bar[i] / (1 - alpha_bar[i]))``.
    """

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 1:
            raise ValueError("a schedule needs at least one beta")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta_t must lie in (0, 1)")
        self.betas = betas
        self.timesteps = int(betas.numel())
        self.alphas = 1.0 - betas
        # cumulative product through logs keeps full float64 precision near alpha_bar ~ e^-10.
        self.alpha_bar = torch.exp(torch.cumsum(torch.log1p(-betas), 0))
        self.alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        self.lambdas = torch.log(self.alpha_bar) - torch.log1p(-self.alpha_bar)

    @classmethod
    def named(cls, schedule: str, timesteps: int) -> DiscreteSchedule:
        return cls(make_betas(schedule, timesteps))

    def check_t(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` as float64, with a clear error if any entry lies outside ``[0, T-1]``."""
        return check_model_time(
            t, self.timesteps - 1, "timestep", "t must lie in", " (index 0 is the notes' t = 1)"
        )

    def log_snr(self, t: torch.Tensor | float) -> torch.Tensor:
        """``lambda(t)``; fractional ``t`` interpolates ``lambda`` linearly between steps."""
        t64 = self.check_t(torch.as_tensor(t, dtype=torch.float64))
        lam = self.lambdas.to(t64.device)
        lo = t64.floor().long().clamp(max=self.timesteps - 1)
        hi = (lo + 1).clamp(max=self.timesteps - 1)
        w = t64 - lo.to(torch.float64)
        return lam[lo] * (1 - w) + lam[hi] * w

    def alpha_sigma(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha_t, sigma_t) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t))`` from ``lambda(t)``."""
        lam = self.log_snr(t)
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
