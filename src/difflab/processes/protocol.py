"""The one contract every diffusion process of difflab meets (written out in ``docs/conventions.md``).

A process is a family of Gaussian marginals ``q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I)`` over a
*model time* ``t`` in ``[0, T-1]`` (``t = 0`` nearest the data, ``T-1`` nearest the prior), with
log-SNR ``lambda_t = log(alpha_t^2 / sigma_t^2)`` decreasing in ``t``, a training loss for a network
``model(x_t, t)``, and a way of reading that network as a denoiser ``(x_t, t) -> (x0_hat, eps_hat)``.
Everything else in the library (the samplers, the trainer, the bound's and the ODE's likelihood, the
oracles, guidance and the command line) is written against this contract and asks the process what it
supports rather than testing its type.

What a process **provides** (:class:`Process`):

=================== =========================================================================
``schedule``        what samplers read: ``timesteps``, ``lambdas`` (``[T]``, decreasing),
                    ``check_t``, ``log_snr(t)``, ``alpha_sigma(t)`` (float64); a continuous
                    schedule may add ``time_of_log_snr`` (exact inversion)
``timesteps``       ``T``: the number of model times of the sampling grid
``prediction``      what the network outputs: ``"eps"``, ``"x0"``, ``"v"`` or ``"flow"``
``variance``        the reverse variance ancestral sampling uses
``alpha_sigma``     ``(alpha_t, sigma_t)`` at model time ``t``, shaped to broadcast over a batch
``log_snr``         ``lambda_t``
``q_sample``        the closed-form forward draw ``x_t = alpha_t x_0 + sigma_t eps``
``sample_t``        training times from the process's own distribution
``loss``            the per-example training loss ``[B]``
``denoiser``        the network as ``(x_t, t) -> (x0_hat, eps_hat)`` (:class:`~difflab.Denoiser`)
``sample``          ``x_T ~ N(0, prior_std^2 I)`` run through any sampler of
                    :mod:`difflab.samplers`
``ode_view``        the process seen by the probability-flow ODE
                    (:class:`~difflab.ode_likelihood.ODEView`): exact likelihood by ``ode_nll``
=================== =========================================================================

What a process **declares** (attributes, read by the consumers):

=================== =========================================================================
``bound_parts``     the names of its variational bound's parts (``vlb_terms`` and
                    ``bits_per_dim`` exist); ``()`` when it has no bound
``discrete_steps``  ``T`` when training draws integer steps ``U{0..T-1}`` (importance sampling
                    of ``t`` applies), ``None`` when it draws its own continuous times
``preconditioning`` an EDM-style :class:`~difflab.processes.sigma.Precond` when the network ``F``
                    is wrapped as ``D = c_skip x + c_out F(c_in x)``, else ``None``
=================== =========================================================================
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from ..denoiser import Denoiser, Model


@runtime_checkable
class Process(Protocol):
    """The process contract (see the module docstring); :class:`~difflab.processes.base.ProcessBase`
    implements the shared part of it."""

    schedule: Any
    timesteps: int
    prediction: str
    variance: str
    bound_parts: tuple[str, ...]
    discrete_steps: int | None
    preconditioning: Any

    def alpha_sigma(self, t, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def log_snr(self, t) -> torch.Tensor: ...

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor | None = None) -> torch.Tensor: ...

    def sample_t(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor: ...

    def loss(self, model: Model, x0: torch.Tensor, t: torch.Tensor | None = None,
             noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor: ...

    def denoiser(self, model: Model, clip: tuple[float, float] | None = None) -> Denoiser: ...

    def sample(self, model: Model, shape: tuple[int, ...], sampler: str = "ancestral", **options): ...

    def ode_view(self, model: Model): ...


def has_bound(process: Process) -> bool:
    """Whether ``process`` declares a variational bound (``vlb_terms``, ``bits_per_dim``)."""
    return bool(getattr(process, "bound_parts", ()))


__all__ = ["Process", "has_bound"]
