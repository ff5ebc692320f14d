"""Objects from a :class:`~difflab.config.Config`: the diffusion, the network, the data splits."""

from __future__ import annotations

import torch
from torch import nn

from .config import Config
from .data import TOY2D, make_toy2d
from .diffusion import GaussianDiffusion
from .nets import MLPDenoiser

MODELS = ("mlp",)


def build_diffusion(cfg: Config) -> GaussianDiffusion:
    d = cfg.diffusion
    return GaussianDiffusion(d.schedule, d.timesteps, d.prediction, d.variance)


def build_model(cfg: Config, data_shape: tuple[int, ...]) -> nn.Module:
    m = cfg.model
    if m.kind == "mlp":
        if len(data_shape) != 1:
            raise ValueError(f"model.kind='mlp' needs vector data [N, D], got rows of shape {data_shape}")
        return MLPDenoiser(data_shape[0], m.hidden, m.depth, m.emb_dim, cfg.diffusion.timesteps)
    raise ValueError(f"unknown model.kind {m.kind!r}; choose one of {', '.join(MODELS)}")


def build_data(cfg: Config, split: str = "train") -> torch.Tensor:
    """The fixed train or test split (different seeds, so the test points are held out)."""
    d = cfg.data
    if d.name not in TOY2D:
        raise ValueError(f"unknown data.name {d.name!r}; choose one of {', '.join(TOY2D)}")
    if split == "train":
        return make_toy2d(d.name, d.n_train, seed=d.seed)
    if split == "test":
        return make_toy2d(d.name, d.n_test, seed=d.seed + 1)
    raise ValueError(f"unknown split {split!r}; choose train or test")


def fresh_data(cfg: Config, n: int, draw: int) -> torch.Tensor:
    """An independent draw of ``n`` points, used to measure distances against new data."""
    return make_toy2d(cfg.data.name, n, seed=10_000 + 7919 * cfg.data.seed + draw)
