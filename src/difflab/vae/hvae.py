"""The Markovian hierarchical VAE of the notes (Sønderby et al. 2016; Vahdat & Kautz 2020) with ``L``
learned latent levels.

Encoder ``q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1})``; generative model ``p(z_L) = N(0, I)``,
``p(z_{l}|z_{l+1})`` and ``p(x|z_1)``; every conditional a diagonal Gaussian. ``z_1`` comes from the
convolutional encoder of :class:`~difflab.vae.vae.ConvVAE`, the levels above from small MLPs. The bound
is eq. (1) of :mod:`difflab.vae.elbo`, term by term: reconstruction, one consistency term per level
``l < L`` and the prior matching KL of ``z_L``. A diffusion model is this chain with ``L = T``
levels and fixed linear-Gaussian encoders (the notes' "unified perspective").
"""

from __future__ import annotations

import torch
from torch import nn

from .elbo import GaussianConditional
from .nets import mlp
from .vae import ConvVAE, split_gaussian

__all__ = ["HierarchicalVAE"]


class HierarchicalVAE(ConvVAE):
    """:class:`~difflab.vae.vae.ConvVAE` with ``levels - 1`` more latent levels of ``latent_dim`` each."""

    def __init__(self, data_shape: tuple[int, ...], bins: int, latent_dim: int = 16, levels: int = 2,
                 channels: int = 32, kl_weight: float = 1.0, hidden: int = 128):
        super().__init__(data_shape, bins, latent_dim, channels, kl_weight)
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(f"vae.levels must be a whole number >= 1, got {levels!r}")
        self.levels = levels
        self.up = nn.ModuleList(mlp(latent_dim, hidden, 2 * latent_dim) for _ in range(levels - 1))
        self.down = nn.ModuleList(mlp(latent_dim, hidden, 2 * latent_dim) for _ in range(levels - 1))

    def _conditional(self, net: nn.Module) -> GaussianConditional:
        def call(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return split_gaussian(net(z))

        return call

    def encoders(self) -> list[GaussianConditional]:
        """``q(z_1|x)``, then ``q(z_{l+1}|z_l)`` for ``l = 1 .. L-1``."""
        return [self.q_z1, *(self._conditional(n) for n in self.up)]

    def priors(self) -> list[GaussianConditional]:
        """``p(z_l|z_{l+1})`` for ``l = 1 .. L-1``."""
        return [self._conditional(n) for n in self.down]
