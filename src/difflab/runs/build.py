"""Objects from a :class:`~difflab.config.Config`: the diffusion, the network, the data splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import DEFAULT_PREDICTION, Config
from ..data import TOY2D, make_toy2d
from ..nets import MLPDenoiser
from ..processes import (
    PROCESSES,
    EDMDiffusion,
    FlowMatching,
    GaussianDiffusion,
    Objective,
    Process,
    VDMDiffusion,
    VDMModel,
    VEDiffusion,
)
from ..processes.vdm import make_schedule

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


def build_diffusion(cfg: Config, splits: Splits | None = None) -> Process:
    """The configured process: ``GaussianDiffusion`` (vp), ``VEDiffusion`` (ve), ``EDMDiffusion``
    (edm), ``VDMDiffusion`` (vdm) or ``FlowMatching`` (flow, whose ``t_min``/``t_max`` are
    ``sigma_min``/``sigma_max``: ``sigma_t = t`` on its path); a ``sigma_min``/``sigma_max`` of 0 takes
    the process's default. With ``splits`` the
    ``L_vlb`` decoder of a ``hybrid``/``vlb`` objective follows the data as the bound does (images:
    discretized on their grid; vectors: a Gaussian density)."""
    d = cfg.diffusion
    _check_objective_keys(cfg)
    prediction = d.prediction or DEFAULT_PREDICTION.get(d.process, "eps")
    if d.process == "vdm":
        return _vdm_diffusion(cfg, splits, prediction)
    if d.process == "vp":
        return GaussianDiffusion(d.schedule, d.timesteps, prediction, d.variance, _objective(cfg, splits))
    sigmas = {k: v for k, v in (("sigma_min", d.sigma_min), ("sigma_max", d.sigma_max)) if v != 0}
    if d.process == "ve":
        if prediction != "eps":
            raise ValueError(
                f"diffusion.process='ve' trains an eps-predicting network; got diffusion.prediction="
                f"{prediction!r} (set it to 'eps')"
            )
        return VEDiffusion(timesteps=d.timesteps, variance=d.variance, **sigmas)
    if d.process == "edm":
        return EDMDiffusion(
            timesteps=d.timesteps, sigma_data=d.sigma_data, p_mean=d.p_mean, p_std=d.p_std,
            variance=d.variance, **sigmas,
        )
    if d.process == "flow":
        ends = {{"sigma_min": "t_min", "sigma_max": "t_max"}[k]: v for k, v in sigmas.items()}
        try:
            return FlowMatching(prediction, timesteps=d.timesteps, t_law=d.t_law, logit_mean=d.logit_mean,
                                logit_std=d.logit_std, variance=d.variance, **ends)
        except ValueError as exc:
            raise ValueError(f"[diffusion] {exc}") from None
    raise ValueError(f"unknown diffusion.process {d.process!r}; choose one of {', '.join(PROCESSES)}")


def _vdm_diffusion(cfg: Config, splits: Splits | None, prediction: str) -> VDMDiffusion:
    """Continuous-time VDM (:mod:`difflab.processes.vdm`); its training loss is the whole bound, whose decoder
    follows the data as the bound does (images: their grid of ``splits.bins`` levels; vectors or no
    ``splits``: a Gaussian density)."""
    d = cfg.diffusion
    bins = (splits.bins or 256) if splits is not None and splits.is_image else None
    try:
        return VDMDiffusion(
            d.vdm_schedule, d.timesteps, prediction, d.variance, gamma_min=d.gamma_min,
            gamma_max=d.gamma_max, learn_endpoints=d.learn_endpoints, bins=bins,
        )
    except ValueError as exc:
        raise ValueError(f"[diffusion] {exc}") from None


def _check_objective_keys(cfg: Config) -> None:
    """``diffusion.variance = 'learned'`` and ``model.learn_sigma`` go together; objectives and
    weightings belong to the DDPM chain, the time law to flow matching."""
    d, m = cfg.diffusion, cfg.model
    if d.process != "flow":
        for key, value, default in (("diffusion.t_law", d.t_law, "uniform"),
                                    ("diffusion.logit_mean", d.logit_mean, 0.0),
                                    ("diffusion.logit_std", d.logit_std, 1.0)):
            if value != default:
                raise ValueError(
                    f"{key}={value!r} applies to flow matching (diffusion.process = 'flow'), not to "
                    f"process {d.process!r}; leave it at {default!r}"
                )
    if d.process != "vp":
        for key, value, default in (("diffusion.objective", d.objective, "simple"),
                                    ("diffusion.weighting", d.weighting, "none"),
                                    ("model.learn_sigma", m.learn_sigma, False)):
            if value != default:
                raise ValueError(
                    f"{key}={value!r} applies to the DDPM chain (diffusion.process = 'vp'), not to "
                    f"process {d.process!r}; leave it at {default!r}"
                )
        return
    if d.variance == "learned" and not m.learn_sigma:
        raise ValueError(
            "diffusion.variance = 'learned' needs model.learn_sigma = true (the network must output the "
            "variance channels next to its prediction)"
        )
    if m.learn_sigma and d.variance != "learned":
        raise ValueError(
            f"model.learn_sigma = true makes the network output variance channels, but "
            f"diffusion.variance = {d.variance!r} would ignore them; set diffusion.variance = 'learned' "
            "(or model.learn_sigma = false)"
        )


def _objective(cfg: Config, splits: Splits | None) -> Objective:
    d = cfg.diffusion
    decoder: dict[str, Any] = {}
    if splits is not None:
        decoder = {"bins": splits.bins or 256} if splits.is_image else {"decoder": "gaussian"}
    try:
        return Objective(d.objective, d.weighting, d.min_snr_gamma, d.p2_gamma, d.p2_k, **decoder)
    except ValueError as exc:
        raise ValueError(f"[diffusion] {exc}") from None


def build_model(cfg: Config, data_shape: tuple[int, ...]) -> nn.Module:
    """The configured network; for ``diffusion.process = 'vdm'`` one on a 1000-step clock wrapped in a
    :class:`~difflab.processes.vdm.VDMModel` with the configured schedule (a submodule, trained and
    saved with it)."""
    if cfg.diffusion.process != "vdm":
        return _build_net(cfg, data_shape, cfg.diffusion.timesteps)
    d = cfg.diffusion
    try:
        schedule = make_schedule(d.vdm_schedule, d.gamma_min, d.gamma_max, d.learn_endpoints)
    except ValueError as exc:
        raise ValueError(f"[diffusion] {exc}") from None
    return VDMModel(_build_net(cfg, data_shape, 1000), schedule, d.timesteps)


def _build_net(cfg: Config, data_shape: tuple[int, ...], timesteps: int) -> nn.Module:
    m = cfg.model
    if m.kind == "mlp":
        if len(data_shape) != 1:
            raise ValueError(f"model.kind='mlp' needs vector data [N, D], got rows of shape {data_shape}")
        if m.fourier_features:
            raise ValueError(
                f"model.fourier_features={m.fourier_features!r} applies to model.kind='unet' (images); "
                "leave it [] for the mlp"
            )
        return MLPDenoiser(
            data_shape[0], m.hidden, m.depth, m.emb_dim, timesteps, learn_sigma=m.learn_sigma
        )
    if m.kind == "unet":
        if len(data_shape) != 3:
            raise ValueError(f"model.kind='unet' needs images [N, C, H, W], got rows of shape {data_shape}")
        from ..nets.unet import unet_from_config

        return unet_from_config(m, data_shape, timesteps)
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
        from ..data.images import load_images

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
