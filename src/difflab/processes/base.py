"""What every process shares of the :class:`~difflab.processes.protocol.Process` contract, written once.

:class:`ProcessBase` holds the model-time check, the closed-form forward draw
``x_t = alpha_t x_0 + sigma_t eps`` (DDPM eq. 4; VDM eq. 1), sampling (``x_T ~ N(0, prior_std^2 I)``
run through a sampler of :mod:`difflab.samplers` on levels of the schedule that the process's
:class:`~difflab.Denoiser` carries; DDPM Algorithm 2 for ``"ancestral"``) and the probability-flow
likelihood (:mod:`difflab.ode_likelihood`), with the default declarations: no bound, continuous
training times, no preconditioning. A process supplies ``schedule`` (``check_t``, ``alpha_sigma``,
``lambdas``), ``timesteps``, ``prediction``, ``variance``, ``alpha_sigma(t, like)``, ``log_snr``,
``sample_t``, ``loss`` and ``denoiser(model, clip)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from .. import ode_likelihood
from ..checks import shape_of
from ..denoiser import Denoiser, Model, bcast
from ..gaussian import q_sample
from ..samplers import DEFAULT_SPACING, SAMPLERS, make_levels, make_timesteps


def check_output(out, x: torch.Tensor, rule: str) -> torch.Tensor:
    """``out`` when it is a tensor of ``x``'s shape; otherwise a ``ValueError`` that names what the model
    returned for ``x`` and ends with ``rule``."""
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise ValueError(f"model returned {shape_of(out)} for an input of shape {tuple(x.shape)}; {rule}")
    return out


def with_docstring(method: Callable, doc: str) -> Callable:
    """``method`` under another docstring, for a process whose notes on the same call differ. The call,
    the behaviour and the signature (``inspect.signature`` follows ``__wrapped__``) are ``method``'s."""

    @functools.wraps(method)
    def documented(*args, **kwargs):
        return method(*args, **kwargs)

    documented.__doc__ = doc
    return documented


class ProcessBase:
    """Model-time check, ``q_sample``, ``timesteps_for``, ``prior_std``, ``sample`` and the ODE
    likelihood over the hooks listed in the module docstring; ``draw_x_T`` says where the prior's
    noise is drawn."""

    schedule: object
    timesteps: int
    prediction: str
    variance: str
    #: the names of the variational bound's parts; ``()``: no bound (see the protocol)
    bound_parts: tuple[str, ...] = ()
    #: ``T`` when training draws integer steps ``U{0..T-1}``; ``None`` for continuous times
    discrete_steps: int | None = None
    #: an EDM-style preconditioning of the network, or ``None``
    preconditioning = None

    def alpha_sigma(self, t, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha_t, sigma_t)`` of the schedule at model time ``t``, shaped to broadcast over ``like``."""
        alpha, sigma = self.schedule.alpha_sigma(self.model_time(like, t))
        return bcast(alpha, like), bcast(sigma, like)

    def training_draws(
        self, x0: torch.Tensor, t, noise: torch.Tensor | None, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t, noise)`` for ``loss``: ``t`` from :meth:`sample_t` and ``noise ~ N(0, I)`` on ``x0``'s
        device unless given, both with ``generator``; refuses an ``x0`` that is not a batch."""
        if not isinstance(x0, torch.Tensor) or x0.dim() < 2:
            raise ValueError(f"x0 must be a batch [B, ...], got shape {shape_of(x0)}")
        if t is None:
            t = self.sample_t(x0.shape[0], generator)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} does not match x0 shape {tuple(x0.shape)}")
        return t, noise

    def denoiser(self, model: Model, clip: tuple[float, float] | None = None) -> Denoiser:
        """``model`` as ``(x_t, t) -> (x0_hat, eps_hat)`` on the schedule to sample on (the process's)."""
        raise NotImplementedError

    def bind(self, model: Model) -> ProcessBase:
        """Take from a trained ``model`` what the process keeps inside it (VDM's learned schedule); a
        process whose schedule is fixed has nothing to take. Returns ``self``."""
        return self

    # ----------------------------------------------------------------- forward process
    def log_snr(self, t) -> torch.Tensor:
        """``lambda_t = log(alpha_t^2 / sigma_t^2)`` at model time ``t`` (float64)."""
        return self.schedule.log_snr(t)

    def model_time(self, x: torch.Tensor, t) -> torch.Tensor:
        """``t`` as float64 ``[B]`` model times for the batch ``x`` (a scalar is broadcast), checked
        against the schedule's range; a one-line ``ValueError`` otherwise."""
        t = torch.as_tensor(t)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.dim() != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(
                f"t must be a scalar or a [B] tensor with B = {x.shape[0]} (the batch of x), "
                f"got shape {tuple(t.shape)}"
            )
        return self.schedule.check_t(t)

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Sample ``q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I)`` in closed form (DDPM eq. 4 with
        ``alpha_t = sqrt(alpha_bar_t)``, ``sigma_t = sqrt(1 - alpha_bar_t)``)."""
        if noise is None:
            noise = torch.randn_like(x0)
        elif noise.shape != x0.shape:
            raise ValueError(
                f"noise shape {tuple(noise.shape)} does not match x0 shape {tuple(x0.shape)}"
            )
        alpha, sigma = self.alpha_sigma(t, x0)
        return q_sample(x0, alpha, sigma, noise)

    # ----------------------------------------------------------------- sampling
    def prior_std(self, levels) -> float:
        """Standard deviation of ``x_T ~ N(0, prior_std^2 I)`` that sampling starts from: 1 for a
        variance-preserving process (a variance-exploding one overrides it)."""
        return 1.0

    def draw_x_T(self, shape: tuple[int, ...], generator, device, dtype: torch.dtype) -> torch.Tensor:
        """``N(0, I)`` noise of ``shape``, drawn on ``device`` with ``generator``."""
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def timesteps_for(self, steps: int | None = None, spacing: str = "uniform") -> torch.Tensor:
        """The decreasing model times a sampler walks (``steps`` defaults to ``T``)."""
        return make_timesteps(self.schedule, self.timesteps if steps is None else steps, spacing)

    @torch.no_grad()
    def sample(
        self,
        model: Model,
        shape: tuple[int, ...],
        sampler: str = "ancestral",
        steps: int | None = None,
        spacing: str | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        clip: tuple[float, float] | None = None,
        progress: bool = False,
        x_T: torch.Tensor | None = None,
        return_nfe: bool = False,
        **sampler_kwargs,
    ):
        """Draw ``x_0`` by running ``sampler`` from ``x_T ~ N(0, prior_std^2 I)`` over ``steps`` levels.

        ``sampler`` is ``"ancestral"`` (Algorithm 2, with the diffusion's variance unless
        ``variance=`` is passed), ``"ddim"`` (``eta=`` 0 by default) or any other name in
        ``difflab.samplers.SAMPLERS``; extra keyword arguments are that sampler's options.
        ``spacing=None`` uses the sampler's preferred spacing (``samplers.DEFAULT_SPACING``).
        ``steps`` is the number of levels, not of network evaluations (Heun uses ``2 steps - 1``).
        With ``return_nfe`` the number of network evaluations is returned as well.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if spacing is None:
            spacing = DEFAULT_SPACING.get(sampler, "uniform")
        den = self.denoiser(model, clip)
        schedule = den.schedule  # the process's own, or the one the model carries (VDM)
        timesteps = make_timesteps(schedule, self.timesteps if steps is None else steps, spacing)
        levels = make_levels(schedule, timesteps)
        if x_T is None:
            x_T = self.draw_x_T(tuple(shape), generator, device or "cpu", dtype) * self.prior_std(levels)
        elif tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T shape {tuple(x_T.shape)} does not match shape {tuple(shape)}")
        if sampler == "ancestral":
            sampler_kwargs.setdefault("variance", self.variance)
        x0 = SAMPLERS[sampler](den, x_T, levels, generator=generator, progress=progress, **sampler_kwargs)
        return (x0, den.nfe) if return_nfe else x0

    # ----------------------------------------------------------------- probability-flow likelihood
    def ode_view(self, model: Model) -> ode_likelihood.ODEView:
        """This process seen by the probability-flow ODE (:func:`difflab.ode_likelihood.denoiser_view`):
        the log-SNR of its two ends and ``eps(x, lam)`` evaluating the model at the model time of
        ``lam``, on any Gaussian path (a state is rescaled to the variance-preserving one of equal
        log-SNR, ``x / sqrt(alpha^2 + sigma^2)``)."""
        return ode_likelihood.denoiser_view(self, model)

    def ode_nll(self, model: Model, x: torch.Tensor, **kwargs) -> torch.Tensor | tuple:
        """``-log p(x)`` in nats ``[B]`` through the probability-flow ODE; see
        :func:`difflab.ode_likelihood.ode_nll` for the equations and options."""
        return ode_likelihood.ode_nll(self, model, x, **kwargs)

    def ode_bits_per_dim(self, model: Model, x0: torch.Tensor, **kwargs) -> torch.Tensor | tuple:
        """Bits/dim of grid data ``x0`` by dequantization and the probability-flow ODE (an upper bound
        on ``-log P(x0)``); see :func:`difflab.ode_likelihood.ode_bits_per_dim`."""
        return ode_likelihood.ode_bits_per_dim(self, model, x0, **kwargs)


__all__ = ["ProcessBase", "check_output", "with_docstring"]
