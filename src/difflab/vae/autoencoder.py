"""The KL-regularized autoencoder of latent diffusion (Rombach et al. 2022, sec. 3.1 and app. G).

A convolutional encoder maps an image ``[C, H, W]`` to a diagonal Gaussian ``q(z|x)`` over a spatial
latent ``[c, H/f, W/f]`` (downsampling factor ``f = 2`` or ``4``); the decoder maps ``z`` back to a
discretized Gaussian over pixels. Training minimises ``E_q[-log p(x|z)] + beta KL(q(z|x) || N(0, I))``
with a small ``beta`` (``vae.kl_weight``; LDM's "KL-reg" uses ``10^-6`` beside perceptual and
adversarial losses, which difflab does not use): the KL only keeps the latent from drifting to
arbitrary scales, and the latent diffusion model, not ``N(0, I)``, becomes the prior. The latent is then
rescaled by ``1 / std(z)`` measured on the data (:func:`difflab.vae.latent.latent_scale`), as LDM
does, before a diffusion is trained on it.
"""

from __future__ import annotations

import math

import torch

from .elbo import GaussianConditional
from .nets import ConvDecoder, ConvEncoder
from .vae import LatentVariableModel, split_gaussian

DOWNSAMPLE = (2, 4)

__all__ = ["DOWNSAMPLE", "KLAutoencoder"]


class KLAutoencoder(LatentVariableModel):
    """``q(z|x)`` over spatial latents ``[latent_channels, H/f, W/f]`` and a discretized decoder."""

    def __init__(self, data_shape: tuple[int, ...], bins: int, latent_channels: int = 4, downsample: int = 2,
                 channels: int = 32, kl_weight: float = 1e-3):
        super().__init__(data_shape, bins, kl_weight)
        if downsample not in DOWNSAMPLE:
            raise ValueError(f"vae.downsample must be one of {DOWNSAMPLE}, got {downsample!r}")
        c, h, w = data_shape
        if h % downsample or w % downsample:
            raise ValueError(f"images of {h}x{w} cannot be downsampled by vae.downsample = {downsample}")
        if latent_channels < 1:
            raise ValueError(f"vae.latent_channels must be >= 1, got {latent_channels}")
        n = int(math.log2(downsample))
        self.downsample = downsample
        self.latent_shape = (latent_channels, h // downsample, w // downsample)
        self.enc = ConvEncoder(c, channels, n, 2 * latent_channels)
        self.dec = ConvDecoder(latent_channels, channels, n, 2 * c)

    def q_z(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(z|x)``: ``(mean, log_var)``, each ``[B, c, H/f, W/f]``."""
        return split_gaussian(self.enc(x))

    def encoders(self) -> list[GaussianConditional]:
        return [self.q_z]

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_scale = self.dec(z).chunk(2, dim=1)
        return mean, log_scale
