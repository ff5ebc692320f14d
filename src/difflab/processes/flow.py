"""Flow matching on the straight path (Lipman et al. 2023, "Flow Matching for Generative Modeling";
Liu et al. 2023, "Flow Straight and Fast", rectified flow; Esser et al. 2024, SD3, for the time law).

**The path.** ``x_t = (1 - t) x_0 + t eps`` with ``eps ~ N(0, I)`` and ``t in [0, 1]``: a Gaussian
path with ``alpha_t = 1 - t``, ``sigma_t = t`` and log-SNR ``lambda_t = 2 log((1 - t)/t)``, neither
variance preserving nor exploding. Its conditional velocity is ``d x_t / dt = eps - x_0 = u``, and
conditional flow matching (Lipman et al. eq. 23; Liu et al. eq. 1) regresses the network on it:

    L_CFM = E_{t, x_0, eps} || u_theta(x_t, t) - (eps - x_0) ||^2                            (1)

(``prediction="flow"``; ``"eps"`` and ``"x0"`` regress those targets on the same path instead). The
minimiser is ``E[eps - x_0 | x_t]``, the velocity of the marginal probability-flow ODE, so this is a
process like the others: ``x0_hat = x_t - t u`` and ``eps_hat = x_t + (1 - t) u``
(:func:`difflab.gaussian.to_x0_eps`), and every sampler of :mod:`difflab.samplers` integrates the same
ODE ``dx/dt = u`` (Euler on uniform ``t`` is the rectified-flow sampler itself).

**Time law.** ``t`` is drawn ``uniform`` on ``[t_min, t_max]`` (Lipman et al., Liu et al.) or
``logit_normal``: ``t = sigmoid(m + s n)``, ``n ~ N(0, 1)``, clamped to ``[t_min, t_max]`` (SD3,
sec. 3.1, ``m = 0``, ``s = 1``), which spends training on the middle of the path.

**Model time.** The library's model time ``tau in [0, T-1]`` maps affinely onto
``t in [t_min, t_max]``: ``t = t_min + (t_max - t_min) tau / (T-1)``, so the ``uniform`` spacing is
uniform in ``t`` and the network sees ``tau`` on the ``[0, T-1]`` clock its time embedding expects.
The two ends stay off ``t = 0`` (``lambda = +inf``) and ``t = 1`` (``lambda = -inf``), where samplers
stepping in log-SNR and the ODE likelihood need finite values: by default ``t_min = 1e-3`` (noise
``sigma = 0.001``, below a grey level of 8-bit data) and ``t_max = 1 - 1e-3`` (``alpha = 0.001``);
sampling starts from ``x_T ~ N(0, t_max^2 I)``.

**Likelihood.** There is no discrete variational bound (``bound_parts = ()``). The exact likelihood is
the protocol's probability-flow one (:func:`difflab.ode_likelihood.ode_nll`): the state at log-SNR
``lambda`` is the variance-preserving one scaled by ``sqrt(alpha^2 + sigma^2)``, so the same ODE in
``lambda`` serves, with the Jacobian of the scale at the data end.
"""

from __future__ import annotations

import functools

import torch

from ..checks import check_choice, check_int, check_number, check_positive
from ..denoiser import Denoiser, Model
from ..gaussian import q_sample, target_of
from ..samplers import FIXED_VARIANCES
from ..schedules import check_log_snr, check_model_time
from .base import ProcessBase

T_LAWS = ("uniform", "logit_normal")
FLOW_PREDICTIONS = ("flow", "eps", "x0")
T_MIN, T_MAX = 1e-3, 1.0 - 1e-3


class FlowSchedule:
    """The straight path as samplers read a schedule: ``T`` model times ``tau`` over
    ``t in [t_min, t_max]``, ``alpha = 1 - t``, ``sigma = t``, ``lambda = 2 log((1-t)/t)`` (float64),
    with the exact inverse :meth:`time_of_log_snr` (``t = sigmoid(-lambda/2)``)."""

    def __init__(self, t_min: float = T_MIN, t_max: float = T_MAX, timesteps: int = 1000):
        t_min = check_number("t_min", t_min, 0.0, strict=True)
        t_max = check_number("t_max", t_max)
        if not t_min < t_max < 1.0:
            raise ValueError(
                f"the flow's times need 0 < t_min < t_max < 1, got t_min={t_min:g}, t_max={t_max:g}"
            )
        self.t_min, self.t_max = t_min, t_max
        self.timesteps = check_int("timesteps", timesteps, 2)

    def check_t(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (model time ``tau``) as float64, with a clear error outside ``[0, T-1]``."""
        return check_model_time(t, self.timesteps - 1)

    def path_time(self, tau) -> torch.Tensor:
        """The path's ``t`` at model time ``tau``, float64."""
        return self.t_min + (self.t_max - self.t_min) * self.check_t(tau) / (self.timesteps - 1)

    def model_time_of(self, t: torch.Tensor) -> torch.Tensor:
        """Model time ``tau`` of path times ``t`` in ``[t_min, t_max]``, float64."""
        t = torch.as_tensor(t, dtype=torch.float64)
        tau = (t - self.t_min) / (self.t_max - self.t_min) * (self.timesteps - 1)
        return tau.clamp(0, self.timesteps - 1)

    def alpha_sigma(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1 - t, t)`` at model time ``t`` (``tau``), float64."""
        s = self.path_time(t)
        return 1.0 - s, s

    def log_snr(self, t) -> torch.Tensor:
        """``lambda = 2 log((1 - t)/t)`` at model time ``t`` (``tau``), float64."""
        s = self.path_time(t)
        return 2.0 * (torch.log1p(-s) - torch.log(s))

    @functools.cached_property
    def lambdas(self) -> torch.Tensor:
        """``lambda`` at the integer model times ``0..T-1``, float64 ``[T]``, decreasing."""
        return self.log_snr(torch.arange(self.timesteps, dtype=torch.float64))

    def time_of_log_snr(self, lam) -> torch.Tensor:
        """Model time with ``lambda = lam`` exactly: ``t = sigmoid(-lam/2)``; ``lam`` must lie in
        ``[lambda(T-1), lambda(0)]`` (1e-9 of the range past an end is clamped)."""
        lam = check_log_snr(lam, float(self.lambdas[-1]), float(self.lambdas[0]))
        return self.model_time_of(torch.sigmoid(-0.5 * lam))


class FlowMatching(ProcessBase):
    """Flow matching / rectified flow on ``x_t = (1 - t) x_0 + t eps`` (see the module docstring).

    Args:
        prediction: ``"flow"`` (the velocity ``eps - x_0``, eq. 1), ``"eps"`` or ``"x0"``.
        t_min, t_max: the path's ends in ``t`` (``0 < t_min < t_max < 1``).
        timesteps: ``T``, the number of model times of the sampling grid.
        t_law: ``"uniform"`` or ``"logit_normal"`` training times.
        logit_mean, logit_std: ``m`` and ``s`` of the logit-normal law.
        variance: ancestral sampling's variance (``fixed_small`` or ``fixed_large``).
    """

    def __init__(
        self,
        prediction: str = "flow",
        t_min: float = T_MIN,
        t_max: float = T_MAX,
        timesteps: int = 1000,
        t_law: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        variance: str = "fixed_small",
    ):
        check_choice("prediction for flow matching", prediction, FLOW_PREDICTIONS)
        check_choice("t_law", t_law, T_LAWS)
        check_choice("variance", variance, FIXED_VARIANCES)
        self.logit_mean = check_number("logit_mean", logit_mean)
        check_positive(logit_std=logit_std)
        self.logit_std = float(logit_std)
        self.schedule = FlowSchedule(t_min, t_max, timesteps)
        self.timesteps = self.schedule.timesteps
        self.prediction, self.t_law, self.variance = prediction, t_law, variance

    def __repr__(self) -> str:
        s = self.schedule
        law = self.t_law
        if law == "logit_normal":
            law = f"logit_normal({self.logit_mean:g}, {self.logit_std:g})"
        return (
            f"FlowMatching(prediction={self.prediction!r}, t_min={s.t_min:g}, t_max={s.t_max:g}, "
            f"timesteps={self.timesteps}, t_law={law!r})"
        )

    def sample_t(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training model times, float64 ``[batch]``: ``t`` uniform on ``[t_min, t_max]`` or
        ``sigmoid(m + s n)`` clamped to it (``t_law``)."""
        s = self.schedule
        if self.t_law == "uniform":
            t = s.t_min + (s.t_max - s.t_min) * torch.rand(batch, generator=generator, dtype=torch.float64)
        else:
            n = torch.randn(batch, generator=generator, dtype=torch.float64)
            t = torch.sigmoid(self.logit_mean + self.logit_std * n).clamp(s.t_min, s.t_max)
        return s.model_time_of(t)

    def loss(
        self,
        model: Model,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Eq. (1) per example, ``[B]``: ``|| model(x_t, tau) - target ||^2`` averaged over dimensions
        (target ``eps - x_0`` for ``prediction="flow"``); ``t`` (model time) from :meth:`sample_t`
        and ``noise`` from ``N(0, I)`` unless given, both with ``generator``."""
        t, noise = self.training_draws(x0, t, noise, generator)
        t64 = self.model_time(x0, t).float().double()  # the very time the network sees
        alpha, sigma = (v.to(x0.dtype) for v in self.alpha_sigma(t64, x0))
        x_t = q_sample(x0, alpha, sigma, noise)
        pred = self.denoiser(model).output(x_t, t64)
        target = target_of(self.prediction, x0, noise, alpha, sigma)
        return (pred - target).pow(2).flatten(1).mean(1)

    def denoiser(self, model: Model, clip: tuple[float, float] | None = None) -> Denoiser:
        """``model`` as ``(x_t, tau) -> (x0_hat, eps_hat)``: ``x0 = x_t - t u``, ``eps = x_t + (1-t) u``."""
        return Denoiser(model, self.schedule, self.prediction, clip)

    def prior_std(self, levels) -> float:
        """``sigma`` of the first level (``t_max`` for a full-range list): ``x_T ~ N(0, t^2 I)``."""
        return float(levels.sigma[0])


__all__ = ["FLOW_PREDICTIONS", "T_LAWS", "FlowMatching", "FlowSchedule"]
