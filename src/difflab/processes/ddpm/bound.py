"""The variational bound of the notes, term by term, in bits per dimension.

    -log p(x_0) <= L_T + sum_{t=2..T} L_{t-1} + L_0
    L_T     = KL(q(x_T | x_0) || p(x_T))
    L_{t-1} = E_q KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))
    L_0     = -E_q log p_theta(x_0 | x_1)            (discretized Gaussian decoder)

Each ``L_{t-1}`` is estimated with one draw ``x_t ~ q(x_t | x_0)`` per example and timestep; all
timesteps are evaluated in large batches (``max_batch`` rows per network call), never one by one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ...gaussian import check_grid, discretized_gaussian_log_likelihood, gaussian_log_density, normal_kl
from ...samplers.ddpm import progress_iter

if TYPE_CHECKING:
    from ...denoiser import Model
    from ..protocol import Process

DECODERS = ("discretized", "gaussian")


@dataclass
class VLBTerms:
    """The bound's parts in bits/dim (nats/dim for ``decoder="gaussian"`` is ``bits * ln 2``).

    ``prior``: ``L_T`` ``[B]``; ``diffusion``: ``[B, T]`` with column ``i`` holding the term at model
    index ``i`` (column 0 is the decoder ``L_0``, column ``i >= 1`` is the notes' ``L_{t-1}`` for
    ``t = i + 1``); ``decoder``: ``L_0`` ``[B]``; ``total``: their sum ``[B]``.
    """

    prior: torch.Tensor
    terms: torch.Tensor

    @property
    def decoder(self) -> torch.Tensor:
        return self.terms[:, 0]

    @property
    def diffusion(self) -> torch.Tensor:
        """``sum_{t>=2} L_{t-1}`` ``[B]``."""
        return self.terms[:, 1:].sum(1)

    @property
    def total(self) -> torch.Tensor:
        return self.prior + self.terms.sum(1)


def _dims(x0: torch.Tensor) -> int:
    return int(x0[0].numel())


def prior_kl(diffusion: Process, x0: torch.Tensor) -> torch.Tensor:
    """``L_T = KL(N(sqrt(alpha_bar_T) x_0, (1 - alpha_bar_T) I) || N(0, I))``, nats ``[B]``."""
    ab = diffusion.schedule.alpha_bar[-1]
    x = x0.to(torch.float64)
    mean = ab.sqrt() * x
    logvar = torch.log1p(-ab).expand_as(x)
    zero = torch.zeros_like(x)
    return normal_kl(mean, logvar, zero, zero).flatten(1).sum(1)


def term_nats(
    diffusion: Process,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    x0_hat: torch.Tensor,
    log_var: torch.Tensor,
    bins: int = 256,
    decoder: str = "discretized",
) -> torch.Tensor:
    """The bound's term at integer model index ``t`` (``[N]``) for one draw ``x_t``, nats ``[N]``.

    With ``p_theta(x_{t-1} | x_t) = N(mu~(x_t, x0_hat), e^log_var)`` (``log_var`` broadcast to
    ``x_t``): ``KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))`` summed over dimensions for
    ``t >= 1`` (the notes' ``L_{t-1}``), and the decoder ``-log p_theta(x_0 | x_1)`` (``L_0``,
    discretized on ``bins`` levels or a Gaussian density) at ``t = 0``. Gradients flow through
    ``x0_hat`` and ``log_var``.
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    true_mean, _, true_log_var = diffusion.q_posterior(x0, x_t, t)
    model_mean, _, _ = diffusion.q_posterior(x0_hat, x_t, t)
    log_var = log_var.expand_as(x_t)
    kl = normal_kl(true_mean, true_log_var.to(x_t.dtype), model_mean, log_var)
    if decoder == "discretized":
        nll0 = -discretized_gaussian_log_likelihood(x0, model_mean, log_var, bins)
    else:
        nll0 = -gaussian_log_density(x0, model_mean, log_var)
    at_zero = (torch.as_tensor(t) == 0).to(x_t.device).reshape(-1, *([1] * (x_t.dim() - 1)))
    return torch.where(at_zero, nll0, kl).flatten(1).sum(1)


@torch.no_grad()
def vlb_terms(
    diffusion: Process,
    model: Model,
    x0: torch.Tensor,
    bins: int = 256,
    decoder: str = "discretized",
    max_batch: int = 4096,
    clip: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> VLBTerms:
    """All ``T + 1`` terms of the bound for each example of ``x0``, in bits/dim.

    Args:
        bins: grid levels of the data over ``[-1, 1]`` for the discretized decoder (256 for 8-bit
            images, 17 for the 8x8 digits).
        decoder: ``"discretized"`` (data on a grid; a bound on ``-log P`` of a discrete variable) or
            ``"gaussian"`` (continuous data; a bound on ``-log p``, a density).
        max_batch: rows per network call; timesteps are packed into each call.
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    if x0.dim() < 2:
        raise ValueError(f"x0 must be a batch [B, ...], got shape {tuple(x0.shape)}")
    check_grid(x0, bins if decoder == "discretized" else None)
    B, T = x0.shape[0], diffusion.timesteps
    den = diffusion.denoiser(model, clip)
    chunk = max(1, max_batch // B)
    terms = torch.empty(B, T, dtype=torch.float64)
    starts = range(0, T, chunk)
    for start in progress_iter(starts, len(starts), progress, "bound"):
        idx = torch.arange(start, min(start + chunk, T))
        n = idx.numel()
        t = idx.repeat_interleave(B)  # [n*B], timestep-major
        x = x0.repeat(n, *([1] * (x0.dim() - 1)))
        noise = torch.randn(x.shape, generator=generator, device="cpu", dtype=x.dtype).to(x.device)
        x_t = diffusion.q_sample(x, t, noise)
        x0_hat, _, v = den.predict(x_t, t.to(torch.float64))
        log_var = diffusion.model_log_variance(t, x_t, v)  # per example (and dimension if learned)
        per = term_nats(diffusion, x.double(), x_t.double(), t, x0_hat.double(), log_var.double(),
                        bins=bins, decoder=decoder)
        terms[:, start : start + n] = per.reshape(n, B).T.cpu()
    scale = 1.0 / (_dims(x0) * math.log(2.0))
    prior = prior_kl(diffusion, x0).cpu() * scale
    return VLBTerms(prior=prior, terms=terms * scale)


def entropy_bits_per_dim(probs: torch.Tensor) -> float:
    """Entropy of a categorical distribution in bits (a lower bound of any bits/dim on that data)."""
    p = torch.as_tensor(probs, dtype=torch.float64)
    p = p[p > 0]
    return float(-(p * torch.log2(p)).sum())
