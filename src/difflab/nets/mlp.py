"""A residual MLP denoiser for vector data ``[B, D]`` (2-D toys and other low-dimensional data)."""

from __future__ import annotations

import torch
from torch import nn

from ..checks import check_int
from .embeddings import TimestepEmbedding

__all__ = ["MLPDenoiser", "ResidualBlock"]


class ResidualBlock(nn.Module):
    """``h + Linear(SiLU(Linear(LayerNorm(h)) + P(SiLU(emb))))``: pre-norm MLP block with a per-block
    projection ``P`` of the time embedding added before the nonlinearity."""

    def __init__(self, hidden: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb_proj = nn.Linear(emb_dim, hidden)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        a = self.fc1(self.norm(h)) + self.emb_proj(self.act(emb))
        return h + self.fc2(self.act(a))


class MLPDenoiser(nn.Module):
    """Residual MLP ``model(x_t, t) -> [B, dim]`` following the ``model(x_t, t)`` contract.

    ``x_t`` is ``[B, dim]``; ``t`` is a float tensor ``[B]`` of timestep indices in ``[0, T-1]``
    (fractional values allowed; a scalar is broadcast over the batch). The index is rescaled to a
    1000-step clock, ``t * 1000 / timesteps``, and embedded with the sinusoidal code, so the same
    network width suits any ``T``.

    Architecture: ``Linear(dim, hidden)`` -> ``depth`` x :class:`ResidualBlock` -> ``LayerNorm`` ->
    ``SiLU`` -> ``Linear(hidden, dim)``. The output layer is zero-initialised, so an untrained model
    predicts 0 (for eps-prediction: the prior mean of the noise).

    Args:
        dim: data dimension ``D``.
        hidden: width of the residual stream.
        depth: number of residual blocks (``>= 0``).
        emb_dim: width of the time embedding.
        timesteps: ``T``, the number of discrete diffusion steps the model is trained with.
        learn_sigma: also predict the variance interpolation ``v`` (output ``[B, 2 dim]``, improved
            DDPM; use with ``GaussianDiffusion(variance="learned")``).
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 256,
        depth: int = 4,
        emb_dim: int = 128,
        timesteps: int = 1000,
        learn_sigma: bool = False,
    ):
        super().__init__()
        for label, value, low in (
            ("dim", dim, 1),
            ("hidden", hidden, 1),
            ("depth", depth, 0),
            ("emb_dim", emb_dim, 1),
            ("timesteps", timesteps, 1),
        ):
            check_int(label, value, low)
        self.dim = dim
        self.timesteps = timesteps
        self.learn_sigma = bool(learn_sigma)
        self.time_embed = TimestepEmbedding(emb_dim, out_dim=emb_dim, hidden=emb_dim)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, emb_dim) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, 2 * dim if learn_sigma else dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Predict ``[B, dim]`` (``[B, 2 dim]`` with ``learn_sigma``) from ``x_t`` ``[B, dim]`` and
        timestep indices ``t`` ``[B]``."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [B, {self.dim}], got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.dim() != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(
                f"t must be a scalar or a [B] tensor with B = {x.shape[0]}, got shape {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            t = t.float()
        t = t * (1000.0 / self.timesteps)
        emb = self.time_embed(t)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(torch.nn.functional.silu(self.out_norm(h)))
