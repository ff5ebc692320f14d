"""Image grids and strips as PNG files (Pillow only)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``[N, C, H, W]`` in ``[-1, 1]`` -> uint8 ``[N, H, W, C]``."""
    if x.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got {tuple(x.shape)}")
    y = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).numpy()


def grid(x: torch.Tensor, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile ``N`` images into rows of ``nrow`` (default about sqrt N) with a ``pad``-pixel border."""
    imgs = to_uint8(x)
    n, h, w, c = imgs.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = (
            imgs[i]
        )
    return out


def save_grid(x: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 0) -> Path:
    """Write a grid of images as PNG; ``scale`` (default: to about 512 px wide) enlarges pixels."""
    from PIL import Image

    g = grid(x, nrow)
    if scale <= 0:
        scale = max(1, 512 // g.shape[1])
    im = Image.fromarray(g[..., 0] if g.shape[2] == 1 else g)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


@torch.no_grad()
def forward_strip(diffusion, x0: torch.Tensor, path: str | Path, columns: int = 8, seed: int = 0) -> Path:
    """Each row one image of ``x0`` noised by ``q(x_t | x_0)`` at ``columns`` evenly spaced ``t``."""
    t = torch.linspace(0, diffusion.timesteps - 1, columns).round()
    g = torch.Generator().manual_seed(seed)
    rows = []
    for img in x0:
        batch = img.expand(columns, *img.shape)
        noise = torch.randn(batch.shape, generator=g)
        rows.append(diffusion.q_sample(batch, t, noise))
    return save_grid(torch.cat(rows), path, nrow=columns)


@torch.no_grad()
def reverse_strip(
    diffusion,
    model,
    shape: tuple[int, ...],
    path: str | Path,
    columns: int = 8,
    seed: int = 0,
    clip: tuple[float, float] | None = (-1.0, 1.0),
) -> Path:
    """Each row one ancestral chain, shown at ``columns`` points from ``x_T`` (left) to ``x_0``."""
    keep = set(torch.linspace(0, diffusion.timesteps, columns).round().long().tolist())
    frames: list[torch.Tensor] = []

    def record(i: int, x: torch.Tensor) -> None:
        if i in keep:
            frames.append(x.clone())

    from ..samplers import make_levels

    std = diffusion.prior_std(make_levels(diffusion.schedule, diffusion.timesteps_for()))
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std
    record(0, x_T)
    diffusion.sample(
        model,
        shape,
        sampler="ancestral",
        x_T=x_T,
        clip=clip,
        callback=record,
        generator=torch.Generator().manual_seed(seed + 1),
    )
    strip = torch.stack(frames, 1).flatten(0, 1)  # [rows * columns, C, H, W]
    return save_grid(strip, path, nrow=len(frames))
