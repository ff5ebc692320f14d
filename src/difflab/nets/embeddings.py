"""Timestep embeddings: the transformer sinusoidal code and a small MLP on top of it."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..checks import check_int

__all__ = ["TimestepEmbedding", "sinusoidal_embedding"]


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sinusoidal embedding of (possibly fractional) times.

    With ``h = dim // 2`` and frequencies ``w_k = max_period^(-k/h)``, ``k = 0..h-1``::

        emb(t) = [cos(t w_0), ..., cos(t w_{h-1}), sin(t w_0), ..., sin(t w_{h-1})]

    and a trailing zero column when ``dim`` is odd.

    Args:
        t: times, a 1-D tensor ``[B]`` (a 0-d tensor or Python number is treated as ``[1]``);
            integer tensors are cast to float.
        dim: embedding width, ``>= 1``.
        max_period: the longest period ``2 pi max_period`` of the lowest frequency.

    Returns:
        ``[B, dim]`` tensor in ``t``'s floating dtype (float32 for integer ``t``).
    """
    check_int("dim", dim, 1)
    if max_period <= 0:
        raise ValueError(f"max_period must be positive, got {max_period!r}")
    t = torch.as_tensor(t)
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() != 1:
        raise ValueError(f"t must be a 1-D tensor [B], got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.float()
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=t.dtype)
    freqs = torch.exp(-math.log(max_period) * k / max(half, 1))
    args = t[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2 == 1:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], 1)], dim=1)
    return emb


class TimestepEmbedding(nn.Module):
    """``t -> Linear(SiLU(Linear(sinusoidal_embedding(t, dim))))``.

    Args:
        dim: width of the sinusoidal code.
        out_dim: output width (default ``dim``).
        hidden: width of the hidden layer (default ``out_dim``).
        max_period: passed to :func:`sinusoidal_embedding`.
    """

    def __init__(
        self, dim: int, out_dim: int | None = None, hidden: int | None = None, max_period: float = 10000.0
    ):
        super().__init__()
        out_dim = dim if out_dim is None else out_dim
        hidden = out_dim if hidden is None else hidden
        self.dim = dim
        self.max_period = max_period
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed times ``t`` ``[B]`` into ``[B, out_dim]``."""
        emb = sinusoidal_embedding(t, self.dim, self.max_period)
        w = self.net[0].weight
        return self.net(emb.to(device=w.device, dtype=w.dtype))
