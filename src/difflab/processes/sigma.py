"""Variance-exploding processes: NCSN / score-SDE VE and EDM (Karras et al. 2022).

Both are ``x_t = x_0 + sigma_t eps`` (``alpha_t = 1``), so the samplers' variance-exploding view
(:mod:`difflab.samplers.ve`) is the process itself. A :class:`SigmaSchedule` puts ``T`` noise levels
on a geometric grid, ``sigma_i = sigma_min (sigma_max / sigma_min)^(i / (T-1))``: model time
``t in [0, T-1]`` indexes ``sigma`` increasing with ``t`` exactly as it indexes DDPM's steps, and
fractional ``t`` interpolates ``log sigma`` linearly (``lambda = -2 log sigma``). Every sampler, the
:class:`~difflab.Denoiser` and ``GaussianDiffusion.sample`` work unchanged; sampling starts from
``x_T ~ N(0, sigma_max^2 I)``.

The network ``F`` keeps the ``model(x, t)`` contract and is preconditioned (EDM eq. 7)::

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))

and trained with EDM's loss ``lambda(sigma) ||D(x_0 + sigma n; sigma) - x_0||^2``,
``lambda = 1/c_out^2``, computed in the equivalent form of EDM eq. 8,
``||F(c_in x; c_noise) - (x_0 - c_skip x) / c_out||^2`` (no difference of nearly equal numbers at
small ``sigma``). ``c_noise`` is passed to ``F`` as the model time ``t`` itself: ``t`` is an affine
function of ``log sigma`` (``t = (T-1) log(sigma/sigma_min) / log(sigma_max/sigma_min)``), so it
carries exactly EDM's ``c_noise = ln(sigma)/4`` on the ``[0, T-1]`` scale the networks' time
embeddings expect.

* :class:`VEDiffusion` (Song & Ermon 2019; Song et al. 2021, VE SDE): ``F`` predicts ``eps``
  (``c_skip = 1``, ``c_out = -sigma``), so the score is ``-F/sigma`` and the loss is denoising score
  matching with ``sigma^2`` weighting, ``||sigma s_theta(x, sigma) + eps||^2 = ||F - eps||^2``;
  ``c_in = 1/sqrt(1 + sigma^2)`` gives ``F`` unit-variance inputs for data of unit scale. Training
  ``t`` is uniform on the grid (``log sigma`` uniform). Defaults ``sigma_min = 0.01``,
  ``sigma_max = 50`` suit images in ``[-1, 1]``; the rule (Song & Ermon 2020, technique 1) is
  ``sigma_max ~ the largest distance between two training points`` (about 5-20 for the 2-D toys).
* :class:`EDMDiffusion` (Karras et al. 2022, Table 1 "ours"): ``c_skip = sd^2/(sigma^2 + sd^2)``,
  ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``, ``c_in = 1/sqrt(sigma^2 + sd^2)`` with
  ``sd = sigma_data = 0.5``; training ``ln sigma ~ N(P_mean, P_std^2) = N(-1.2, 1.2^2)`` (clamped to
  ``[sigma_min, sigma_max] = [0.002, 80]``); the loss weight is ``(sigma^2 + sd^2)/(sigma sd)^2``.

These processes declare no variational bound (``bound_parts = ()``): DDPM's posteriors and its bound
belong to the chain of :mod:`difflab.processes.ddpm`. Their probability-flow likelihood is the
protocol's: ``ode_nll`` rescales a state to the variance-preserving one of equal log-SNR.
Classifier-free guidance (:mod:`difflab.guidance`) combines ``F`` outputs, which is the same as
combining the denoisers ``D`` (``D`` is affine in ``F``).
"""

from __future__ import annotations

import math

import torch

from ..checks import check_int, check_number, check_positive
from ..denoiser import Denoiser, Model, bcast
from ..samplers import FIXED_VARIANCES
from ..samplers.levels import Levels, time_of_sigma_ve
from ..schedules import DiscreteSchedule
from .base import ProcessBase, check_output


class SigmaSchedule:
    """``T`` geometric noise levels from ``sigma_min`` (``t = 0``) to ``sigma_max`` (``t = T-1``), with
    ``alpha = 1``. Exposes what samplers and the :class:`~difflab.Denoiser` read from a schedule:
    ``timesteps``, ``lambdas = -2 log sigma`` (float64 ``[T]``, decreasing), ``check_t``, ``log_snr``
    (shared with :class:`~difflab.DiscreteSchedule`) and ``alpha_sigma``."""

    check_t = DiscreteSchedule.check_t
    log_snr = DiscreteSchedule.log_snr

    def __init__(self, sigma_min: float, sigma_max: float, timesteps: int = 1000):
        if not (isinstance(sigma_min, (int, float)) and isinstance(sigma_max, (int, float))
                and 0 < sigma_min < sigma_max < math.inf):
            raise ValueError(
                f"noise levels need 0 < sigma_min < sigma_max, got sigma_min={sigma_min!r}, "
                f"sigma_max={sigma_max!r}"
            )
        check_int("timesteps", timesteps, 2)
        self.sigma_min, self.sigma_max, self.timesteps = float(sigma_min), float(sigma_max), timesteps
        log_sigma = torch.linspace(math.log(sigma_min), math.log(sigma_max), timesteps, dtype=torch.float64)
        self.lambdas = -2.0 * log_sigma

    def alpha_sigma(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1, sigma_t)`` with ``sigma_t = exp(-lambda_t / 2)``, float64."""
        lam = self.log_snr(t)
        return torch.ones_like(lam), torch.exp(-0.5 * lam)

    def sigma(self, t) -> torch.Tensor:
        return self.alpha_sigma(t)[1]

    def time_of_sigma(self, sigma) -> torch.Tensor:
        """Fractional model time of ``sigma``, clamped to ``[sigma_min, sigma_max]``."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return time_of_sigma_ve(self, sigma.clamp(self.sigma_min, self.sigma_max))


class Precond:
    """``D(x; sigma) = c_skip x + c_out F(c_in x; t)`` for a network ``F`` and model time ``t``.

    Subclasses spell out :meth:`coefficients`; ``t`` (float ``[B]``) gives ``sigma`` through the
    schedule, and all coefficients are computed in float64 and cast to ``x``'s dtype.
    """

    def __init__(self, schedule: SigmaSchedule):
        self.schedule = schedule

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(c_skip, c_out, c_in)`` for float64 ``sigma``."""
        raise NotImplementedError

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """The loss weight ``lambda(sigma) = 1 / c_out^2`` on ``||D - x_0||^2`` (EDM eq. 8)."""
        return self.coefficients(sigma)[1] ** -2

    def _coefficients_for(self, x: torch.Tensor, t: torch.Tensor):
        sigma = self.schedule.sigma(torch.as_tensor(t, dtype=torch.float64).cpu().expand(x.shape[0]))
        return (bcast(c, x) for c in self.coefficients(sigma))

    def network(self, net: Model, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``F(c_in x; t)``, the raw network output, shape-checked against ``x``."""
        _, _, c_in = self._coefficients_for(x, t)
        t32 = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0]).to(x.device, torch.float32)
        rule = "a preconditioned network must return a tensor of the input's shape"
        return check_output(net(c_in * x, t32), x, rule)

    def denoise(self, net: Model, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``D(x; sigma_t) = c_skip x + c_out F(c_in x; t)``: the network as an ``x0_hat``."""
        c_skip, c_out, _ = self._coefficients_for(x, t)
        return c_skip * x + c_out * self.network(net, x, t)

    def target(self, x0: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``F``'s regression target ``(x_0 - c_skip x) / c_out``: the output that makes ``D = x_0``."""
        c_skip, c_out, _ = self._coefficients_for(x, t)
        return (x0 - c_skip * x) / c_out

    def wrap(self, net: Model) -> Model:
        """``(x, t) -> D(x; sigma_t)``, a ``model(x, t)`` that predicts ``x_0``."""
        return lambda x, t: self.denoise(net, x, t)


class VEPrecond(Precond):
    """NCSN / score-SDE VE: ``F`` predicts ``eps`` on unit-variance inputs, the score is ``-F/sigma``.

    ``c_skip = 1``, ``c_out = -sigma``, ``c_in = 1/sqrt(1 + sigma^2)``; ``lambda = 1/sigma^2`` makes
    the loss ``||F - eps||^2 = ||sigma s_theta + eps||^2``.
    """

    def coefficients(self, sigma):
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1.0 / torch.sqrt(1.0 + sigma**2)
        return c_skip, c_out, c_in


class EDMPrecond(Precond):
    """EDM's preconditioning (Karras et al. 2022, Table 1), ``sd = sigma_data``:

    ``c_skip = sd^2 / (sigma^2 + sd^2)``, ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``,
    ``c_in = 1 / sqrt(sigma^2 + sd^2)``, ``c_noise = ln(sigma) / 4`` (given to ``F`` as the model
    time, an affine function of it). For data of std ``sd`` both ``F``'s input and its training target
    ``(x_0 - c_skip x)/c_out`` have unit variance, and ``lambda = (sigma^2 + sd^2)/(sigma sd)^2``.
    """

    def __init__(self, schedule: SigmaSchedule, sigma_data: float = 0.5):
        super().__init__(schedule)
        check_positive(sigma_data=sigma_data)
        self.sigma_data = float(sigma_data)

    def coefficients(self, sigma):
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / torch.sqrt(sigma**2 + sd**2)
        c_in = 1.0 / torch.sqrt(sigma**2 + sd**2)
        return c_skip, c_out, c_in


class SigmaDiffusion(ProcessBase):
    """A preconditioned variance-exploding process (the protocol's ``preconditioning``), without a
    variational bound. ``prediction`` is ``"x0"``: the preconditioned network is a denoiser ``D``."""

    def __init__(self, precond: Precond, variance: str = "fixed_small"):
        if variance not in FIXED_VARIANCES:
            raise ValueError(
                f"unknown variance {variance!r} for a variance-exploding process; choose one of "
                f"{', '.join(FIXED_VARIANCES)} (learned variances belong to the DDPM chain, process 'vp')"
            )
        self.schedule = precond.schedule
        self.schedule_name = "geometric"
        self.timesteps = self.schedule.timesteps
        self.prediction = "x0"
        self.variance = variance
        self.preconditioning = precond

    def _repr_args(self) -> str:
        s = self.schedule
        return f"sigma_min={s.sigma_min:g}, sigma_max={s.sigma_max:g}, timesteps={self.timesteps}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._repr_args()})"

    def sample_t(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training times uniform on the ``T`` levels (``log sigma`` uniform), int64 ``[batch]``."""
        return torch.randint(0, self.timesteps, (batch,), generator=generator, device="cpu")

    def denoiser(self, model: Model, clip: tuple[float, float] | None = None) -> Denoiser:
        return Denoiser(self.preconditioning.wrap(model), self.schedule, "x0", clip)

    def prior_std(self, levels: Levels) -> float:
        """``sigma`` of the first level (``sigma_max`` for a full-range list): ``x_T ~ N(0, sigma^2 I)``."""
        return float(levels.sigma[0])

    def loss(
        self,
        model: Model,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``lambda(sigma) ||D(x_0 + sigma n; sigma) - x_0||^2`` averaged over dimensions, ``[B]``,
        computed as ``||F(c_in x; t) - (x_0 - c_skip x)/c_out||^2``. ``t`` (model time) is drawn by
        :meth:`sample_t` unless given, ``noise`` from ``N(0, I)``, both with ``generator``."""
        t, noise = self.training_draws(x0, t, noise, generator)
        t = self.model_time(x0, t).float().double()  # the very t (and sigma) the network sees
        x = self.q_sample(x0, t, noise)
        pre = self.preconditioning
        return (pre.network(model, x, t) - pre.target(x0, x, t)).pow(2).flatten(1).mean(1)


class VEDiffusion(SigmaDiffusion):
    """NCSN / score-SDE VE: ``x_t = x_0 + sigma_t eps``, ``F`` predicts ``eps``, training ``t`` uniform
    on the geometric grid (see :class:`VEPrecond` and the module docstring for ``sigma_max``)."""

    def __init__(
        self,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        timesteps: int = 1000,
        variance: str = "fixed_small",
    ):
        super().__init__(VEPrecond(SigmaSchedule(sigma_min, sigma_max, timesteps)), variance)


class EDMDiffusion(SigmaDiffusion):
    """EDM (Karras et al. 2022): :class:`EDMPrecond` and ``ln sigma ~ N(p_mean, p_std^2)`` in training."""

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        timesteps: int = 1000,
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        variance: str = "fixed_small",
    ):
        check_positive(p_std=p_std)
        check_number("p_mean", p_mean)
        super().__init__(EDMPrecond(SigmaSchedule(sigma_min, sigma_max, timesteps), sigma_data), variance)
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def _repr_args(self) -> str:
        return (
            f"{super()._repr_args()}, sigma_data={self.preconditioning.sigma_data:g}, "
            f"p_mean={self.p_mean:g}, p_std={self.p_std:g}"
        )

    def sample_t(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``ln sigma ~ N(P_mean, P_std^2)`` as fractional model time, float64 ``[batch]``; the rare
        ``sigma`` outside ``[sigma_min, sigma_max]`` is clamped to the nearer end."""
        log_sigma = self.p_mean + self.p_std * torch.randn(batch, generator=generator, dtype=torch.float64)
        return self.schedule.time_of_sigma(log_sigma.exp())


__all__ = [
    "EDMDiffusion",
    "EDMPrecond",
    "Precond",
    "SigmaDiffusion",
    "SigmaSchedule",
    "VEDiffusion",
    "VEPrecond",
]
