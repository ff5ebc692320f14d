"""``GaussianDiffusion``: a schedule, a parameterization and a reverse variance, tied together.

This is the public entry point of difflab's process contract::

    diffusion = GaussianDiffusion(schedule="linear", timesteps=1000, prediction="eps",
                                  variance="fixed_small")
    x_t = diffusion.q_sample(x0, t, noise)
    loss = diffusion.loss(model, x0)            # L_simple, shape [B] (objective=: see objectives)
    x0 = diffusion.sample(model, shape, sampler="ddim", steps=50, generator=g)
    bpd = diffusion.bits_per_dim(model, x0)     # the variational bound, bits/dim
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ...denoiser import Denoiser, Model, bcast
from ...gaussian import (
    check_prediction,
    learned_log_variance,
    posterior_coefficients,
    transition_variance,
)
from ...samplers import VARIANCES
from ...schedules import DiscreteSchedule
from ..base import ProcessBase
from . import bound, objectives
from .objectives import Objective


class GaussianDiffusion(ProcessBase):
    """Discrete-time DDPM with ``T`` steps; model time index ``i`` in ``[0, T-1]`` is the notes' ``t = i+1``.

    Args:
        schedule: ``"linear"``, ``"cosine"``, ``"sigmoid"`` or a 1-D tensor of betas.
        timesteps: ``T`` (ignored when betas are given).
        prediction: what the network predicts: ``"eps"``, ``"x0"`` or ``"v"``.
        variance: reverse-process variance, ``"fixed_small"`` (``beta~_t``), ``"fixed_large"``
            (``beta_t``) or ``"learned"`` (improved DDPM eq. 15: the network returns ``2 C`` channels
            ``[prediction, v]`` and ``log sigma_t^2 = frac log beta_t + (1 - frac) log beta~_t``,
            ``frac = (v + 1)/2``).
        objective: what :meth:`loss` minimises: ``"simple"`` (``L_simple``, the default), ``"hybrid"``
            or ``"vlb"``, or an :class:`~difflab.processes.ddpm.objectives.Objective` with a weighting
            (min-SNR, P2) and its options. See :mod:`difflab.processes.ddpm.objectives`.
    """

    bound_parts = ("prior L_T", "diffusion L_1 + ... + L_{T-1}", "decoder L_0")

    def __init__(
        self,
        schedule: str | torch.Tensor = "linear",
        timesteps: int = 1000,
        prediction: str = "eps",
        variance: str = "fixed_small",
        objective: str | Objective = "simple",
    ):
        if isinstance(schedule, str):
            self.schedule = DiscreteSchedule.named(schedule, timesteps)
            self.schedule_name = schedule
        else:
            self.schedule = DiscreteSchedule(schedule)
            self.schedule_name = "custom"
        self.timesteps = self.schedule.timesteps
        self.prediction = check_prediction(prediction)
        if variance not in VARIANCES:
            raise ValueError(
                f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}"
            )
        self.variance = variance
        self.objective = Objective.of(objective)
        self.discrete_steps = self.timesteps  # Algorithm 1's t ~ U{0..T-1}: importance sampling applies

    def __repr__(self) -> str:
        extra = "" if self.objective == Objective() else f", objective={self.objective!r}"
        return (
            f"GaussianDiffusion(schedule={self.schedule_name!r}, timesteps={self.timesteps}, "
            f"prediction={self.prediction!r}, variance={self.variance!r}{extra})"
        )

    # ----------------------------------------------------------------- forward process
    # (``q_sample`` and the model-time check ``model_time`` come from ProcessBase)
    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)`` (DDPM eqs. 6-7).

        Returns ``(mean, variance, log_variance)`` broadcast to ``x_t``. At index 0 (the notes'
        ``t = 1``) ``beta~`` is 0; its log is clipped to ``log beta~`` of index 1, as in improved DDPM.
        """
        if x0.shape != x_t.shape:
            raise ValueError(f"x0 shape {tuple(x0.shape)} differs from x_t {tuple(x_t.shape)}")
        idx = self.integer_t(x_t, t)
        s = self.schedule
        a_t, s_t = s.alpha_bar[idx].sqrt(), (1 - s.alpha_bar[idx]).sqrt()
        a_s, s_s = s.alpha_bar_prev[idx].sqrt(), (1 - s.alpha_bar_prev[idx]).sqrt()
        c0, ct, var = posterior_coefficients(a_t, s_t, a_s, s_s)
        mean = bcast(c0, x_t) * x0 + bcast(ct, x_t) * x_t
        log_var = torch.log(self._clipped_posterior_variance()[idx])
        return mean, bcast(var, x_t).expand_as(x_t), bcast(log_var, x_t).expand_as(x_t)

    def integer_t(self, x: torch.Tensor, t) -> torch.Tensor:
        """``t`` as int64 ``[B]`` indices on the CPU for the batch ``x``; a ``ValueError`` unless every
        model time is a whole step of the chain (the posteriors and the bound's terms live there)."""
        t64 = self.model_time(x, t)
        if not bool((t64 == t64.round()).all()):
            raise ValueError("this quantity is defined on integer timesteps only")
        return t64.long().cpu()

    def _clipped_posterior_variance(self) -> torch.Tensor:
        s = self.schedule
        var = s.betas * (1 - s.alpha_bar_prev) / (1 - s.alpha_bar)
        if self.timesteps > 1:
            var = torch.cat([var[1:2], var[1:]])
        else:
            var = s.betas.clone()
        return var

    def reverse_log_variance(self) -> torch.Tensor:
        """``log sigma_t^2`` of ``p(x_{t-1} | x_t)`` for each index, float64 ``[T]``:
        ``beta~_t`` (fixed_small) or ``beta_t`` (fixed_large); index 0 uses ``beta~`` of index 1
        (DDPM's decoder variance, since ``beta~_1 = 0``). A learned variance depends on the network's
        output: see :meth:`model_log_variance`."""
        if self.variance == "learned":
            raise ValueError(
                "variance='learned' has no fixed reverse variance: it depends on the network's output; "
                "use model_log_variance(t, x_t, v) or p_mean_variance"
            )
        clipped = self._clipped_posterior_variance()
        if self.variance == "fixed_small":
            return torch.log(clipped)
        return torch.log(torch.cat([clipped[:1], self.schedule.betas[1:]]))

    def model_log_variance(self, t, x_t: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        """``log sigma_t^2`` of ``p_theta(x_{t-1} | x_t)`` at integer ``t``, broadcast against ``x_t``.

        Fixed variances: :meth:`reverse_log_variance` at ``t``. Learned (improved DDPM eq. 15):
        ``frac log beta_t + (1 - frac) log beta~_t`` with ``frac = (v + 1)/2`` per example and
        dimension, ``v`` the network's variance channels; ``log beta~`` is clipped at index 0 (to its
        value at index 1) as in :meth:`q_posterior`.
        """
        idx = self.integer_t(x_t, t)
        if self.variance != "learned":
            return bcast(self.reverse_log_variance()[idx], x_t)
        if v is None or v.shape != x_t.shape:
            got = None if v is None else tuple(v.shape)
            raise ValueError(
                f"variance='learned' needs the network's variance channels v of shape {tuple(x_t.shape)}, "
                f"got {got}"
            )
        log_small = bcast(torch.log(self._clipped_posterior_variance()[idx]), x_t)
        log_large = bcast(torch.log(self.schedule.betas[idx]), x_t)
        return learned_log_variance(v, log_small, log_large)

    # ----------------------------------------------------------------- reverse process
    def denoiser(self, model: Model, clip: tuple[float, float] | None = None) -> Denoiser:
        """``model`` seen as ``(x_t, t) -> (x0_hat, eps_hat)``; with ``variance="learned"`` it splits the
        ``2 C`` output channels into the prediction and ``v`` (:meth:`Denoiser.predict`)."""
        return Denoiser(model, self.schedule, self.prediction, clip, self.variance == "learned")

    def p_mean_variance(
        self, model: Model, x_t: torch.Tensor, t, clip: tuple[float, float] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``p_theta(x_{t-1} | x_t) = N(mu_theta, sigma_t^2 I)`` with ``mu_theta = mu~(x_t, x0_hat)``.

        Returns ``(mean, log_variance, x0_hat)``; ``log_variance`` is :meth:`model_log_variance`.
        """
        idx = self.integer_t(x_t, t)
        x0_hat, _, v = self.denoiser(model, clip).predict(x_t, idx.to(torch.float64))
        mean, _, _ = self.q_posterior(x0_hat, x_t, idx)
        log_var = self.model_log_variance(idx, x_t, v).expand_as(x_t)
        return mean, log_var, x0_hat

    # ----------------------------------------------------------------- training
    def loss(
        self,
        model: Model,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        objective: str | Objective | None = None,
        weighting: str | None = None,
    ) -> torch.Tensor:
        """The per-example training loss, shape ``[B]``.

        By default ``L_simple``: ``|| target - model(x_t, t) ||^2`` averaged over dimensions, the
        target being ``eps``, ``x0`` or ``v`` as the prediction says. ``objective`` (default: the
        diffusion's) may name ``"simple"``, ``"hybrid"`` or ``"vlb"`` or be an
        :class:`~difflab.processes.ddpm.objectives.Objective`; ``weighting`` (``"none"``,
        ``"min_snr"``, ``"p2"``) replaces its weighting. Definitions, units and equations:
        :mod:`difflab.processes.ddpm.objectives`.
        ``t`` is drawn uniformly from ``{0, ..., T-1}`` (Algorithm 1) unless given.
        """
        obj = Objective.of(objective, self.objective)
        if weighting is not None:
            obj = replace(obj, weighting=weighting)
        t, noise = self.training_draws(x0, t, noise, generator)
        return objectives.loss(self, model, x0, t, noise, obj)

    def sample_t(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training times ``t ~ U{0, ..., T-1}`` (Algorithm 1), int64 ``[batch]`` on the CPU; the
        trainer and :meth:`loss` draw ``t`` here."""
        return torch.randint(0, self.timesteps, (batch,), generator=generator, device="cpu")

    # ----------------------------------------------------------------- sampling
    # (``prior_std``, ``timesteps_for`` and ``sample`` come from ProcessBase)

    # ----------------------------------------------------------------- the bound
    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """``L_T = KL(q(x_T | x_0) || N(0, I))`` summed over dimensions, nats ``[B]``."""
        return bound.prior_kl(self, x0)

    def vlb_terms(self, model: Model, x0: torch.Tensor, **kwargs) -> bound.VLBTerms:
        """Every term of the bound in bits/dim: prior ``L_T``, ``L_{t-1}`` for each ``t`` and the
        decoder ``L_0``. See :func:`difflab.processes.ddpm.bound.vlb_terms` for the options."""
        return bound.vlb_terms(self, model, x0, **kwargs)

    def bits_per_dim(self, model: Model, x0: torch.Tensor, **kwargs) -> torch.Tensor:
        """The variational bound ``L_T + sum L_{t-1} + L_0`` in bits per dimension, ``[B]``."""
        return self.vlb_terms(model, x0, **kwargs).total


__all__ = ["GaussianDiffusion", "transition_variance"]
