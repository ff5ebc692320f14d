"""Continuous-time noise schedules of Variational Diffusion Models (Kingma et al. 2021), as ``nn.Module``.

VDM writes the schedule through ``gamma(t) = -log SNR(t) = -lambda(t)`` on ``t in [0, 1]``, strictly
increasing, with (sec. 3.2, eqs. 3-5; equation numbers of the arXiv version)::

    sigma_t^2 = sigmoid(gamma(t)),   alpha_t^2 = sigmoid(-gamma(t)),   SNR(t) = exp(-gamma(t)).

Every schedule here is ``gamma(t) = gamma_0 + (gamma_1 - gamma_0) s(t)`` between its two endpoints
``gamma_0 = gamma(0)`` (the data end, least noise) and ``gamma_1 = gamma(1)`` (the prior end):

* :class:`LinearSchedule`: ``s(t) = t`` (VDM's ``fixed`` / ``learnable_scalar`` schedules).
* :class:`CosineSchedule`: the cosine schedule of improved DDPM without offset, ``alpha = cos(pi u/2)``,
  ``sigma = sin(pi u/2)``, so ``gamma = 2 log tan(pi u / 2)``, with ``u = u_0 + (u_1 - u_0) t`` and
  ``u_i = (2/pi) atan(exp(gamma_i / 2))`` chosen so that ``gamma`` hits both endpoints exactly.
* :class:`LearnedSchedule`: the monotone network of VDM's appendix H,
  ``gamma~(t) = l1(t) + l3(phi(l2(l1(t))))`` (``l1``: 1 -> 1, ``l2``: 1 -> 1024 sigmoid units ``phi``,
  ``l3``: 1024 -> 1, weights made non-negative by ``abs`` as in the official code), normalised to
  ``s(t) = (gamma~(t) - gamma~(0)) / (gamma~(1) - gamma~(0))`` (appendix I.2, eq. 59).

The endpoints are learnable (``learn_endpoints=True``: ``gamma_0`` and ``span``, with
``gamma_1 = gamma_0 + |span|`` as in VDM's ``learnable_scalar``) or fixed buffers. Monotonicity holds
by construction: ``s'(t) >= |w1| / (gamma~(1) - gamma~(0)) > 0`` for the network. The derivative
``gamma'(t)``, needed by the continuous-time loss (eq. 17), is computed in closed form next to
``gamma`` (:meth:`LogSNRSchedule.evaluate`).

Schedule math runs in float64 whatever the parameters' dtype (they are cast at use, gradients flow
back through the cast) and outside autocast, so a bf16 training run never rounds ``gamma``. ``t`` is a
tensor of any shape (or a number) in ``[0, 1]``; the result has its shape and device.

Also here: :class:`ContinuousScheduleView`, the schedule as samplers see it at model time
``tau = (T-1) t``. The network that carries its schedule is :class:`~difflab.processes.vdm.model.VDMModel`.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import nn

from ...checks import check_int, check_number
from ...schedules import check_log_snr, check_model_time

SCHEDULE_KINDS = ("linear", "cosine", "learned")
GAMMA_MIN, GAMMA_MAX = -13.3, 5.0  # VDM's defaults: SNR from e^13.3 (data end) to e^-5 (prior end)

__all__ = [
    "GAMMA_MAX",
    "GAMMA_MIN",
    "SCHEDULE_KINDS",
    "ContinuousScheduleView",
    "CosineSchedule",
    "LearnedSchedule",
    "LinearSchedule",
    "LogSNRSchedule",
    "ScheduleEval",
    "make_schedule",
]


class ScheduleEval(NamedTuple):
    """``gamma(t)`` and ``gamma'(t)`` (float64, with gradients) and the tensors through which alone the
    schedule's shape parameters (not its endpoints) are reached: the normalised ``s(t)`` and ``s'(t)``
    of a learned shape, empty for a fixed shape. The variance-minimising gradient of
    :class:`difflab.processes.vdm.VDMDiffusion` rescales the gradient flowing into these."""

    gamma: torch.Tensor
    dgamma: torch.Tensor
    shape_tensors: tuple[torch.Tensor, ...]


class LogSNRSchedule(nn.Module):
    """``gamma(t) = gamma_0 + (gamma_1 - gamma_0) s(t)``, increasing on ``[0, 1]`` (see the module).

    Args:
        gamma_min: ``gamma_0`` at initialisation (``-log SNR`` of the data end), VDM's ``-13.3``.
        gamma_max: ``gamma_1`` at initialisation (the prior end), VDM's ``5``; ``> gamma_min``.
        learn_endpoints: make ``gamma_0`` and ``gamma_1`` trainable parameters (else fixed buffers).

    ``gamma_min`` / ``gamma_max`` also stay fixed attributes: :class:`difflab.processes.vdm.VDMModel`
    scales the network's noise input by them, so that input does not move when learned endpoints do.
    """

    kind = "base"
    # the trainer leaves these parameters out of AdamW's weight decay: decay would pull the endpoints
    # gamma_0, gamma_1 toward 0 (a noisier data end, a less noisy prior end) whatever the loss says
    weight_decay_exempt = True

    def __init__(
        self, gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX, learn_endpoints: bool = False
    ):
        super().__init__()
        gamma_min, gamma_max = check_number("gamma_min", gamma_min), check_number("gamma_max", gamma_max)
        if not gamma_min < gamma_max:
            raise ValueError(
                f"a schedule needs gamma_min < gamma_max (gamma = -log SNR increases from the data to the "
                f"prior), got gamma_min={gamma_min:g}, gamma_max={gamma_max:g}"
            )
        if not isinstance(learn_endpoints, bool):
            raise ValueError(f"learn_endpoints must be True or False, got {learn_endpoints!r}")
        self.gamma_min, self.gamma_max, self.learn_endpoints = gamma_min, gamma_max, learn_endpoints
        start = torch.tensor(gamma_min, dtype=torch.float32)
        span = torch.tensor(gamma_max - gamma_min, dtype=torch.float32)
        if learn_endpoints:
            self.gamma_0 = nn.Parameter(start)
            self.span = nn.Parameter(span)
        else:
            self.register_buffer("gamma_0", start)
            self.register_buffer("span", span)

    def extra_repr(self) -> str:
        g0, g1 = (float(v.detach()) for v in self.endpoints())
        return f"gamma_0={g0:.4g}, gamma_1={g1:.4g}, learn_endpoints={self.learn_endpoints}"

    # ------------------------------------------------------------------ helpers
    def _time(self, t) -> torch.Tensor:
        if isinstance(t, torch.Tensor):
            return t.to(torch.float64)
        return torch.as_tensor(t, dtype=torch.float64, device=self.gamma_0.device)

    @staticmethod
    def _f64(p: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return p.to(device=like.device, dtype=torch.float64)

    def endpoints(self, like: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gamma_0, gamma_1)`` as float64 scalars (on ``like``'s device), with gradients when learned."""
        like = self.gamma_0 if like is None else like
        g0 = self._f64(self.gamma_0, like)
        return g0, g0 + self._f64(self.span, like).abs()

    def shape(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised shape ``s(t)`` (``s(0) = 0``, ``s(1) = 1``) and ``s'(t)``, float64."""
        raise NotImplementedError

    #: whether :meth:`shape` has trainable parameters of its own
    learned_shape = False

    # ------------------------------------------------------------------ public
    def evaluate(self, t) -> ScheduleEval:
        """``gamma(t)``, ``gamma'(t)`` and the shape tensors (see :class:`ScheduleEval`)."""
        t = self._time(t)
        with torch.autocast(t.device.type, enabled=False):
            s, ds = self.shape(t)
            g0, g1 = self.endpoints(t)
            parts = (s, ds) if self.learned_shape else ()
            return ScheduleEval(g0 + (g1 - g0) * s, (g1 - g0) * ds, parts)

    def forward(self, t) -> torch.Tensor:
        """``gamma(t) = -log SNR(t)``, float64 of ``t``'s shape."""
        return self.evaluate(t).gamma

    @torch.no_grad()
    def time_of_gamma(self, gamma, iterations: int = 64) -> torch.Tensor:
        """``t`` with ``gamma(t) = gamma`` by bisection (the schedule is strictly increasing); values
        outside ``[gamma_0, gamma_1]`` give the nearer end. Float64, ``gamma``'s shape."""
        gamma = self._time(gamma)
        lo, hi = torch.zeros_like(gamma), torch.ones_like(gamma)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            above = self.forward(mid) >= gamma
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
        return 0.5 * (lo + hi)


class LinearSchedule(LogSNRSchedule):
    """``gamma(t) = gamma_0 + (gamma_1 - gamma_0) t`` (VDM's fixed linear schedule; with learned endpoints
    its ``learnable_scalar`` one)."""

    kind = "linear"

    def shape(self, t):
        return t, torch.ones_like(t)


class CosineSchedule(LogSNRSchedule):
    """The cosine schedule's log-SNR as a function of ``t``, pinned to the endpoints (see the module):
    ``gamma(t) = 2 log tan(pi u / 2)``, ``u = u_0 + (u_1 - u_0) t``, ``u_i = (2/pi) atan(exp(gamma_i/2))``;
    ``gamma'(t) = (u_1 - u_0) pi / (sin(pi u/2) cos(pi u/2))``. Its shape depends on the endpoints, so
    all of its parameters are endpoints."""

    kind = "cosine"

    def evaluate(self, t) -> ScheduleEval:
        t = self._time(t)
        with torch.autocast(t.device.type, enabled=False):
            g0, g1 = self.endpoints(t)
            u0 = (2 / math.pi) * torch.atan(torch.exp(0.5 * g0))
            u1 = (2 / math.pi) * torch.atan(torch.exp(0.5 * g1))
            angle = 0.5 * math.pi * (u0 + (u1 - u0) * t)
            gamma = 2.0 * torch.log(torch.tan(angle))
            dgamma = (u1 - u0) * math.pi / (torch.sin(angle) * torch.cos(angle))
            return ScheduleEval(gamma, dgamma, ())


class LearnedSchedule(LogSNRSchedule):
    """VDM's monotone network (appendix H), normalised between the endpoints (see the module).

    ``l1(t) = |w1| t + b1``, ``l2(h) = |w2| h + b2`` (``features`` units), ``phi = sigmoid``,
    ``l3(p) = sum_k |w3_k| p_k / features``, ``gamma~(t) = l1(t) + l3(phi(l2(l1(t))))`` and
    ``gamma~'(t) = |w1| (1 + sum_k |w3_k| |w2_k| phi'_k / features)``. Initialised as the official code
    does: ``l1`` to the linear schedule between ``gamma_min`` and ``gamma_max`` and ``w2``, ``w3`` from
    ``N(0, 0.01^2)``, so it starts out almost linear. Drawn from torch's global generator.
    """

    kind = "learned"
    learned_shape = True

    def __init__(
        self,
        gamma_min: float = GAMMA_MIN,
        gamma_max: float = GAMMA_MAX,
        learn_endpoints: bool = True,
        features: int = 1024,
        init_std: float = 0.01,
    ):
        super().__init__(gamma_min, gamma_max, learn_endpoints)
        check_int("features", features, 1)
        self.features = features
        self.w1 = nn.Parameter(torch.tensor(self.gamma_max - self.gamma_min))
        self.b1 = nn.Parameter(torch.tensor(self.gamma_min))
        self.w2 = nn.Parameter(torch.randn(features) * init_std)
        self.b2 = nn.Parameter(torch.zeros(features))
        self.w3 = nn.Parameter(torch.randn(features) * init_std)

    def unnormalised(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``gamma~(t)`` and ``gamma~'(t)`` of the raw network, float64."""
        w1, b1 = self._f64(self.w1, t).abs(), self._f64(self.b1, t)
        w2, b2, w3 = self._f64(self.w2, t).abs(), self._f64(self.b2, t), self._f64(self.w3, t).abs()
        h1 = w1 * t + b1
        p = torch.sigmoid(torch.addcmul(b2, h1.unsqueeze(-1), w2))  # [..., features]
        h = h1 + (p @ w3) / self.features
        dh = w1 * (1.0 + ((p - p * p) @ (w2 * w3)) / self.features)
        return h, dh

    def shape(self, t):
        h, dh = self.unnormalised(t)
        ends, _ = self.unnormalised(torch.tensor([0.0, 1.0], dtype=torch.float64, device=t.device))
        span = ends[1] - ends[0]
        return (h - ends[0]) / span, dh / span


def make_schedule(
    kind: str = "learned",
    gamma_min: float = GAMMA_MIN,
    gamma_max: float = GAMMA_MAX,
    learn_endpoints: bool = True,
    **options,
) -> LogSNRSchedule:
    """The schedule called ``kind`` (``"linear"``, ``"cosine"`` or ``"learned"``); ``options`` go to
    :class:`LearnedSchedule` (``features``, ``init_std``)."""
    classes = {"linear": LinearSchedule, "cosine": CosineSchedule, "learned": LearnedSchedule}
    if kind not in classes:
        raise ValueError(f"unknown VDM schedule {kind!r}; choose one of {', '.join(SCHEDULE_KINDS)}")
    if options and kind != "learned":
        raise ValueError(f"options {sorted(options)} apply to the learned schedule only, not {kind!r}")
    return classes[kind](gamma_min, gamma_max, learn_endpoints, **options)


class ContinuousScheduleView:
    """What samplers, the :class:`~difflab.Denoiser` and the oracles read from a schedule
    (``timesteps``, ``lambdas``, ``check_t``, ``log_snr``, ``alpha_sigma``), for the continuous
    ``lambda(tau) = -gamma(tau / (T-1))``, evaluated exactly at any fractional ``tau`` (float64, no
    gradients). :meth:`time_of_log_snr` inverts it exactly (by bisection);
    :func:`difflab.samplers.time_of_log_snr` defers to it."""

    def __init__(self, schedule: LogSNRSchedule, timesteps: int):
        self.gamma_schedule = schedule
        self.timesteps = check_int("timesteps", timesteps, 2)

    def check_t(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (model time ``tau``) as float64, with a clear error outside ``[0, T-1]``."""
        top = self.timesteps - 1
        return check_model_time(t, top, note=f" (tau = {top} t)")

    def log_snr(self, t) -> torch.Tensor:
        """``lambda(tau) = -gamma(tau / (T-1))``, float64 on ``t``'s device."""
        tau = self.check_t(t)
        with torch.no_grad():
            return -self.gamma_schedule(tau / (self.timesteps - 1))

    def alpha_sigma(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha, sigma) = (sqrt(sigmoid(lambda)), sqrt(sigmoid(-lambda)))``, float64."""
        lam = self.log_snr(t)
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()

    @functools.cached_property
    def lambdas(self) -> torch.Tensor:
        """``lambda`` at the integer model times ``0..T-1``, float64 ``[T]``, decreasing."""
        return self.log_snr(torch.arange(self.timesteps, dtype=torch.float64))

    def time_of_log_snr(self, lam) -> torch.Tensor:
        """Model time ``tau`` with ``lambda(tau) = lam`` exactly (bisection on the monotone schedule);
        ``lam`` must lie in ``[lambda(T-1), lambda(0)]`` (1e-9 of the range past an end is clamped)."""
        g0, g1 = (float(v.detach()) for v in self.gamma_schedule.endpoints())
        lam = check_log_snr(lam, -g1, -g0, " (t = 1 .. 0)")
        t = self.gamma_schedule.time_of_gamma(-lam)
        return t * (self.timesteps - 1)
