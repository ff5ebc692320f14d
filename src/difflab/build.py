"""Objects from a :class:`~difflab.config.Config`: the diffusion, the network, the data splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .config import Config
from .data import TOY2D, make_toy2d
from .diffusion import GaussianDiffusion
from .nets import MLPDenoiser
from .processes import PROCESSES, EDMDiffusion, VEDiffusion

MODELS = ("mlp", "unet")
IMAGE_DATA = ("digits", "mnist", "folder", "array")


@dataclass
class Splits:
    """Training and held-out data; labels are ``None`` for unlabelled (toy) data."""

    train: torch.Tensor
    test: torch.Tensor
    train_y: torch.Tensor | None = None
    test_y: torch.Tensor | None = None
    bins: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.train.dim() == 4


def build_diffusion(cfg: Config) -> GaussianDiffusion:
    """The configured process: ``GaussianDiffusion`` (vp), ``VEDiffusion`` (ve) or ``EDMDiffusion``
    (edm); a ``sigma_min``/``sigma_max`` of 0 takes the process's default."""
    d = cfg.diffusion
    if d.process == "vp":
        return GaussianDiffusion(d.schedule, d.timesteps, d.prediction, d.variance)
    sigmas = {k: v for k, v in (("sigma_min", d.sigma_min), ("sigma_max", d.sigma_max)) if v != 0}
    if d.process == "ve":
        if d.prediction != "eps":
            raise ValueError(
                f"diffusion.process='ve' trains an eps-predicting network; got diffusion.prediction="
                f"{d.prediction!r} (set it to 'eps')"
            )
        return VEDiffusion(timesteps=d.timesteps, variance=d.variance, **sigmas)
    if d.process == "edm":
        return EDMDiffusion(
            timesteps=d.timesteps, sigma_data=d.sigma_data, p_mean=d.p_mean, p_std=d.p_std,
            variance=d.variance, **sigmas,
        )
    raise ValueError(f"unknown diffusion.process {d.process!r}; choose one of {', '.join(PROCESSES)}")


def build_model(cfg: Config, data_shape: tuple[int, ...]) -> nn.Module:
    m = cfg.model
    if m.kind == "mlp":
        if len(data_shape) != 1:
            raise ValueError(f"model.kind='mlp' needs vector data [N, D], got rows of shape {data_shape}")
        return MLPDenoiser(data_shape[0], m.hidden, m.depth, m.emb_dim, cfg.diffusion.timesteps)
    if m.kind == "unet":
        if len(data_shape) != 3:
            raise ValueError(f"model.kind='unet' needs images [N, C, H, W], got rows of shape {data_shape}")
        from .nets.unet import unet_from_config

        return unet_from_config(m, data_shape, cfg.diffusion.timesteps)
    raise ValueError(f"unknown model.kind {m.kind!r}; choose one of {', '.join(MODELS)}")


def build_splits(cfg: Config) -> Splits:
    """The fixed train / test split of the configured data (toy: two seeds; images: a recorded
    permutation, see :func:`difflab.data.images.train_test_split`)."""
    d = cfg.data
    if d.name in TOY2D:
        return Splits(
            make_toy2d(d.name, d.n_train, seed=d.seed), make_toy2d(d.name, d.n_test, seed=d.seed + 1)
        )
    if d.name in IMAGE_DATA:
        from .data.images import load_images

        train, test, info = load_images(d)
        return Splits(train.x, test.x, train.y, test.y, train.bins, info)
    raise ValueError(f"unknown data.name {d.name!r}; choose one of {', '.join(TOY2D + IMAGE_DATA)}")


def fresh_data(cfg: Config, n: int, draw: int) -> torch.Tensor:
    """An independent draw of ``n`` toy points, used to measure distances against new data."""
    return make_toy2d(cfg.data.name, n, seed=10_000 + 7919 * cfg.data.seed + draw)


def conditional(model: nn.Module, y: torch.Tensor):
    """``model(x, t, y=y)`` as a plain ``(x, t)`` callable for samplers and the bound."""

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x, t, y=y.to(x.device))

    return call
