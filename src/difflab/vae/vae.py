"""A convolutional VAE for images (Kingma & Welling 2014) and the latent-variable model interface the
hierarchical VAE and the KL autoencoder share.

``q(z|x) = N(mu(x), diag sigma^2(x))`` from a convolutional encoder, ``p(z) = N(0, I)``, and a decoder
``p(x|z)`` that is a factorised Gaussian ``N(m(z), s(z)^2)`` discretized on the data's grid, as the
diffusion decoder ``L_0`` is (DDPM eq. 13), so ``-ELBO`` is a bound on ``-log P(x)`` of the discrete
data in the same bits/dim as the diffusion bounds. Training minimises
``E_q[-log p(x|z)] + beta KL(q(z|x) || p(z))`` per dimension in bits (``beta = vae.kl_weight``, 1 for
the ELBO itself); evaluation always reports the ELBO with ``beta = 1`` and the importance-weighted
bound (Burda et al. 2016), :mod:`difflab.vae.elbo`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .elbo import (
    ELBOTerms,
    GaussianConditional,
    discretized_decoder_nll,
    iwae_bound,
    markov_elbo_terms,
    markov_log_weights,
)
from .nets import ConvDecoder, ConvEncoder

LOG_VAR_RANGE = (-14.0, 6.0)  # latent log-variances are clamped here (sigma from 1e-3 to 20)
LOG_SCALE_MIN = -6.0  # decoder log-scale floor: s >= 0.0025, under half an 8-bit grid step

__all__ = ["AutoencoderObjective", "ConvVAE", "LatentVariableModel", "NoTimesteps", "split_gaussian"]


def split_gaussian(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, log_var)`` from the two halves of ``h`` along dimension 1, ``log_var`` clamped to
    :data:`LOG_VAR_RANGE`."""
    mean, log_var = h.chunk(2, dim=1)
    return mean, log_var.clamp(*LOG_VAR_RANGE)


class LatentVariableModel(nn.Module):
    """A Markovian latent-variable model of images on a grid of ``bins`` levels.

    Subclasses give ``encoders()`` (``q(z_1|x), q(z_2|z_1), ...``), ``priors()`` (``p(z_l|z_{l+1})``,
    ``L - 1`` of them), ``decode(z_1) -> (mean, log_scale)`` and ``latent_shape`` (of ``z_L``).
    ``forward(x)`` is the training loss per example in bits/dim."""

    latent_shape: tuple[int, ...]

    def __init__(self, data_shape: tuple[int, ...], bins: int, kl_weight: float = 1.0):
        super().__init__()
        if not (isinstance(bins, int) and bins >= 2):
            raise ValueError(f"bins must be an integer >= 2 (the data's grey levels), got {bins!r}")
        if not (math.isfinite(kl_weight) and kl_weight >= 0):
            raise ValueError(f"vae.kl_weight must be a finite number >= 0, got {kl_weight!r}")
        self.data_shape, self.bins, self.kl_weight = tuple(data_shape), bins, float(kl_weight)
        self.dims = int(math.prod(data_shape))

    # -- the model -------------------------------------------------------------------------------
    def encoders(self) -> list[GaussianConditional]:
        raise NotImplementedError

    def priors(self) -> list[GaussianConditional]:
        return []

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decoder_nll(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``-log p(x|z_1)`` in nats ``[B]``, discretized on the data's grid."""
        mean, log_scale = self.decode(z)
        return discretized_decoder_nll(x, mean, log_scale.clamp(min=LOG_SCALE_MIN), self.bins)

    # -- bounds ----------------------------------------------------------------------------------
    def elbo_terms(self, x: torch.Tensor, generator: torch.Generator | None = None) -> ELBOTerms:
        """``-ELBO``'s reconstruction and KL parts, nats (:func:`~difflab.vae.elbo.markov_elbo_terms`)."""
        return markov_elbo_terms(x, self.encoders(), self.priors(), self.decoder_nll, generator)

    def log_weights(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return markov_log_weights(x, self.encoders(), self.priors(), self.decoder_nll, generator)

    def iwae(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None,
             max_batch: int = 2048) -> torch.Tensor:
        """``-L_K`` in nats ``[B]`` (Burda et al. 2016, eq. 8)."""
        return iwae_bound(lambda rows: self.log_weights(rows, generator), x, k, max_batch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The training loss ``(E[-log p(x|z)] + kl_weight * KL) / (D ln 2)``, ``[B]`` bits/dim."""
        terms = self.elbo_terms(x)
        return (terms.reconstruction + self.kl_weight * terms.kl.sum(1)) / (self.dims * math.log(2.0))

    # -- generation ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images: ``z_L ~ N(0, I)``, ancestral draws down the priors, the decoder's mean clamped
        to ``[-1, 1]``."""
        device = next(self.parameters()).device
        z = torch.randn((n, *self.latent_shape), generator=generator).to(device)
        for prior in reversed(self.priors()):
            mean, log_var = prior(z)
            z = mean + torch.exp(0.5 * log_var) * torch.randn(mean.shape, generator=generator).to(device)
        return self.decode(z)[0].clamp(-1.0, 1.0)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder mean at the encoder mean of ``z_1``, clamped to ``[-1, 1]``."""
        return self.decode(self.encoders()[0](x)[0])[0].clamp(-1.0, 1.0)


class ConvVAE(LatentVariableModel):
    """The VAE: a :class:`~difflab.vae.nets.ConvEncoder` (two stride-2 convolutions) and a linear map
    to ``(mu, log sigma^2)`` of a ``latent_dim``-vector ``z``; the mirror decoder outputs the mean and
    log-scale of every pixel. Images must have sides divisible by 4."""

    def __init__(self, data_shape: tuple[int, ...], bins: int, latent_dim: int = 16, channels: int = 32,
                 kl_weight: float = 1.0):
        super().__init__(data_shape, bins, kl_weight)
        c, h, w = data_shape
        if h % 4 or w % 4:
            raise ValueError(f"the VAE needs image sides divisible by 4, got {h}x{w}")
        if latent_dim < 1:
            raise ValueError(f"vae.latent_dim must be >= 1, got {latent_dim}")
        self.latent_shape = (latent_dim,)
        self.enc = ConvEncoder(c, channels, 2, channels)
        self.feat = (channels, h // 4, w // 4)
        self.to_q = nn.Linear(math.prod(self.feat), 2 * latent_dim)
        self.from_z = nn.Linear(latent_dim, math.prod(self.feat))
        self.dec = ConvDecoder(channels, channels, 2, 2 * c)

    def q_z1(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(z_1|x)``: ``(mean, log_var)``."""
        return split_gaussian(self.to_q(self.enc(x).flatten(1)))

    def encoders(self) -> list[GaussianConditional]:
        return [self.q_z1]

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.dec(self.from_z(z).reshape(-1, *self.feat))
        mean, log_scale = h.chunk(2, dim=1)
        return mean, log_scale


class NoTimesteps:
    """The trainer's ``t_sampler`` for models without a time variable: ``t = 0``, weights 1."""

    learns = False

    def sample(self, batch: int, generator: torch.Generator | None = None):
        return torch.zeros(batch), torch.ones(batch)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "none"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class AutoencoderObjective:
    """What :class:`~difflab.train.trainer.Trainer` and :func:`difflab.runs.sample` ask of a process,
    for a :class:`LatentVariableModel`: ``loss(net, x0)`` is the model's own loss (``t`` and ``noise`` are
    unused: the reparameterization draws from the global RNG, which checkpoints restore), and
    ``sample`` draws from the prior and decodes (one network evaluation; samplers do not apply)."""

    def loss(self, net, x0: torch.Tensor, t=None, noise=None) -> torch.Tensor:
        return net(x0)

    def sample(self, model: LatentVariableModel, shape: tuple[int, ...], *, generator=None,
               return_nfe: bool = False, **unused: Any):
        x = model.sample(int(shape[0]), generator)
        return (x, 1) if return_nfe else x
