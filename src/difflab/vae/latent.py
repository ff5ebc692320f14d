"""Latent diffusion (Rombach et al. 2022) and its bound on the data (Vahdat et al. 2021, LSGM).

A diffusion process is trained on the latents of a KL autoencoder (:mod:`difflab.vae.autoencoder`),
rescaled to unit variance: ``z' = s z`` with ``s = 1 / std(z)`` over latents of the training data
(LDM's "scale factor", their sec. 4.3.2 and app. G). Its samples are decoded to pixels by the
decoder's mean.

**A bound on the data.** With the encoder ``q(z|x)``, the decoder ``p(x|z)`` and the latent diffusion's
density ``p(z)``, Jensen's inequality gives (LSGM, eq. 2 with the diffusion's bound for ``-log p(z)``)

    -log p(x) <= E_q(z|x)[-log p(x|z)] + E_q(z|x)[-log p(z)] - H[q(z|x)]                      (1)
              <= decoder + E_q[L_diffusion(s z)] - D_z log s - H[q(z|x)],                     (2)

where ``L_diffusion(z')`` is the diffusion's variational bound on ``-log p'(z')`` for the continuous
``z'`` (its Gaussian decoder), and ``-D_z log s`` is the change of variables ``p(z) = s^{D_z} p'(s z)``.
(1) is tight when ``q(z|x)`` is the model's posterior ``p(z|x)``. With a discretized decoder ``p(x|z)``
it bounds ``-log P(x)`` of the discrete data, in the same bits/dim as the pixel-space bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..processes.protocol import Process, has_bound
from .elbo import GaussianConditional, gaussian_entropy, reparameterize
from .vae import LatentVariableModel

__all__ = ["LatentBound", "LatentDiffusion", "latent_scale", "lsgm_bound"]


def latent_scale(z: torch.Tensor) -> float:
    """LDM's scale factor ``s = 1 / std(z)`` over all entries of a batch of latent draws ``z``."""
    std = float(z.detach().double().std())
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"the latents have standard deviation {std!r}; cannot set the latent scale")
    return 1.0 / std


@dataclass
class LatentBound:
    """The parts of (1) in nats, each ``[B]``: ``decoder`` ``-log p(x|z)``, ``latent`` ``-log p(z)`` (or
    the diffusion's bound on it, (2)), ``entropy`` ``H[q(z|x)]``; ``total = decoder + latent - entropy``."""

    decoder: torch.Tensor
    latent: torch.Tensor
    entropy: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.decoder + self.latent - self.entropy


def lsgm_bound(
    x: torch.Tensor,
    encoder: GaussianConditional,
    decoder_nll: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    latent_nll: Callable[[torch.Tensor], torch.Tensor],
    generator: torch.Generator | None = None,
) -> LatentBound:
    """Eq. (1) with one draw ``z ~ q(z|x)`` per example and the entropy in closed form: an unbiased
    estimate of the bound. ``encoder(x) -> (mean, log_var)``; ``decoder_nll(x, z)`` and ``latent_nll(z)``
    are in nats ``[B]``."""
    mean, log_var = encoder(x)
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
    z = reparameterize(mean, log_var, eps)
    return LatentBound(decoder=decoder_nll(x, z), latent=latent_nll(z), entropy=gaussian_entropy(log_var))


class LatentDiffusion:
    """A diffusion ``process`` on the scaled latents of ``autoencoder``, seen from pixel space.

    * ``loss(net, stats, t, noise)``: the trainer's data are the encoder's ``(mean, log_var)`` stacked
      on the channel axis (``[B, 2c, h, w]``, :meth:`encode_stats`); every step draws ``z ~ q(z|x)``
      with the second half of ``noise``'s channels and trains the process on ``s z`` with the first
      half (so the trainer's generator drives both and a resumed run repeats itself).
    * ``sample(model, shape, ...)``: any sampler of the process on the latent shape, decoded; ``shape``
      is the pixel shape ``(n, C, H, W)``, ``clip`` applies to the decoded images.
    * ``bound_terms``: the bound (2) in nats.
    """

    def __init__(self, process: Process, autoencoder: LatentVariableModel, scale: float):
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"the latent scale must be a finite number > 0, got {scale!r}")
        self.process, self.autoencoder, self.scale = process, autoencoder.eval(), float(scale)
        self.latent_shape = tuple(autoencoder.latent_shape)
        for p in autoencoder.parameters():
            p.requires_grad_(False)

    def __repr__(self) -> str:
        return f"LatentDiffusion({self.process!r}, latent {self.latent_shape}, scale {self.scale:.4g})"

    @property
    def timesteps(self) -> int:
        return self.process.timesteps

    @torch.no_grad()
    def encode_stats(self, x: torch.Tensor, max_batch: int = 512) -> torch.Tensor:
        """``q(z|x)``'s ``(mean, log_var)`` of every image, stacked on the channel axis."""
        q = self.autoencoder.encoders()[0]
        return torch.cat([torch.cat(q(x[i:i + max_batch]), 1) for i in range(0, len(x), max_batch)])

    def loss(self, net, stats: torch.Tensor, t: torch.Tensor | None = None,
             noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        mean, log_var = stats.chunk(2, dim=1)
        if noise is None:
            noise = torch.randn(stats.shape, generator=generator, dtype=stats.dtype).to(stats.device)
        n_process, n_q = noise.chunk(2, dim=1)
        z = self.scale * reparameterize(mean, log_var, n_q)
        return self.process.loss(net, z, t=t, noise=n_process)

    @torch.no_grad()
    def decode(self, z_scaled: torch.Tensor) -> torch.Tensor:
        """Pixels: the decoder's mean at ``z = z' / s``."""
        return self.autoencoder.decode(z_scaled / self.scale)[0]

    @torch.no_grad()
    def sample(self, model, shape: tuple[int, ...], *, clip: tuple[float, float] | None = None,
               return_nfe: bool = False, **kwargs: Any):
        out = self.process.sample(model, (int(shape[0]), *self.latent_shape), return_nfe=True, **kwargs)
        z, nfe = out
        x = self.decode(z)
        if clip is not None:
            x = x.clamp(*clip)
        return (x, nfe) if return_nfe else x

    def latent_nll(self, model, z: torch.Tensor, **vlb_kwargs: Any) -> torch.Tensor:
        """The diffusion's bound on ``-log p(z)`` of unscaled latents, nats ``[B]``: its bound on
        ``s z`` (bits/dim with the Gaussian decoder) times ``D_z ln 2``, minus ``D_z log s``."""
        dims = int(math.prod(self.latent_shape))
        terms = self.process.vlb_terms(model, self.scale * z, decoder="gaussian", **vlb_kwargs)
        return terms.total.double().cpu() * dims * math.log(2.0) - dims * math.log(self.scale)

    @torch.no_grad()
    def bound_terms(self, model, x: torch.Tensor, generator: torch.Generator | None = None,
                    **vlb_kwargs: Any) -> LatentBound:
        """The bound (2) on ``-log P(x)`` of grid images ``x``, nats ``[B]`` (float64, CPU)."""
        if not has_bound(self.process):  # VE, EDM, flow
            raise ValueError(f"{type(self.process).__name__} has no variational bound; the latent bound "
                             "needs diffusion.process = 'vp' or 'vdm'")
        ae = self.autoencoder
        parts = lsgm_bound(
            x, ae.encoders()[0], lambda xx, z: ae.decoder_nll(xx, z).double().cpu(),
            lambda z: self.latent_nll(model, z, generator=generator, **vlb_kwargs), generator,
        )
        return LatentBound(parts.decoder, parts.latent, parts.entropy.double().cpu())
