"""Load a local diffusers ``UNet2DModel`` (+ its scheduler config) as a difflab model and process.

Two folder layouts are read, nothing is downloaded:

* a pipeline folder: ``model_index.json`` with ``unet/`` (``config.json`` and
  ``diffusion_pytorch_model.safetensors``) and ``scheduler/scheduler_config.json`` (``DDPMPipeline``,
  ``DDIMPipeline``);
* a ``UNet2DModel`` folder (``config.json`` + safetensors weights) holding a
  ``scheduler_config.json`` itself or in ``scheduler/``.

Weights are read from safetensors only: a folder with nothing but pickled ``*.bin`` weights is
refused, since unpickling runs code. The network is diffusers' own ``UNet2DModel`` (any of its
architectures), wrapped by :class:`DiffusersUNet` into difflab's model contract ``model(x_t, t, y=None)``
with ``t`` float timestep indices ``[B]``; since both libraries index the chain alike (index 0 = the
first noise step, see :mod:`difflab.interop.schedule_map`), ``t`` is passed through unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..processes.ddpm import GaussianDiffusion
from .schedule_map import SchedulerMapping, map_scheduler

EXTRA_HINT = "pip install 'difflab[diffusers]'"
WEIGHTS = "diffusion_pytorch_model.safetensors"


def require_diffusers():
    """The ``diffusers`` module, or a one-line ``RuntimeError`` naming the extra that installs it."""
    try:
        import diffusers
    except ImportError:
        raise RuntimeError(f"reading diffusers models needs the diffusers package: {EXTRA_HINT}") from None
    return diffusers


@dataclass(frozen=True)
class DiffusersFolder:
    """Where a diffusers model's parts lie: the UNet folder and the scheduler config file."""

    root: Path
    unet_dir: Path
    scheduler_config: Path

    def unet_config(self) -> dict[str, Any]:
        return _read_json(self.unet_dir / "config.json")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None


def is_diffusers_folder(path: str | Path) -> bool:
    """Whether ``path`` looks like a diffusers pipeline or model folder (and not a difflab run)."""
    p = Path(path)
    if not p.is_dir() or (p / "config.toml").is_file():
        return False
    if (p / "model_index.json").is_file():
        return True
    cfg = p / "config.json"
    return cfg.is_file() and '"_class_name"' in cfg.read_text(errors="replace")


def locate(path: str | Path) -> DiffusersFolder:
    """The parts of a diffusers folder, refusing (one line) layouts that do not map onto difflab."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    if (root / "model_index.json").is_file():
        index = _read_json(root / "model_index.json")
        for latent in ("vqvae", "vae", "text_encoder"):
            if latent in index:
                raise ValueError(
                    f"{root} is a {index.get('_class_name', 'pipeline')} with a {latent!r}: latent or "
                    "text-conditioned pipelines do not map; difflab reads pixel-space UNet2DModel pipelines"
                )
        unet = index.get("unet")
        if not unet or list(unet)[-1] != "UNet2DModel":
            raise ValueError(f"{root}/model_index.json has unet={unet!r}; difflab reads a UNet2DModel")
        unet_dir = root / "unet"
    else:
        unet_dir = root
    cfg = _read_json(unet_dir / "config.json") if (unet_dir / "config.json").is_file() else None
    if cfg is None:
        raise FileNotFoundError(f"{unet_dir} has no config.json: not a diffusers model folder")
    if cfg.get("_class_name") != "UNet2DModel":
        raise ValueError(f"{unet_dir} holds a {cfg.get('_class_name')!r}; difflab reads UNet2DModel only")
    for cand in (
        root / "scheduler" / "scheduler_config.json",
        unet_dir / "scheduler_config.json",
        root / "scheduler_config.json",
    ):
        if cand.is_file():
            return DiffusersFolder(root, unet_dir, cand)
    raise FileNotFoundError(
        f"{root} has no scheduler config (scheduler/scheduler_config.json or scheduler_config.json); "
        "the training process cannot be known without it"
    )


def _check_weights(unet_dir: Path) -> None:
    if (unet_dir / WEIGHTS).is_file() or (unet_dir / f"{WEIGHTS}.index.json").is_file():
        return
    pickles = sorted(p.name for p in unet_dir.glob("*.bin"))
    if pickles:
        raise ValueError(
            f"{unet_dir} has only pickled weights ({', '.join(pickles)}); difflab loads safetensors only "
            "(unpickling runs code): convert them with diffusers' save_pretrained(safe_serialization=True)"
        )
    raise FileNotFoundError(f"{unet_dir} has no {WEIGHTS}")


class DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DModel`` under difflab's contract: ``forward(x_t, t, y=None)`` with ``t`` float
    timestep indices ``[B]`` in ``[0, T-1]`` (fractional allowed: the sinusoidal embedding is
    continuous) and ``y`` class labels ``[B]`` for a model with a class table (``num_class_embeds``)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        cfg = unet.config
        self.num_classes = int(cfg.num_class_embeds or 0)
        self.in_channels = int(cfg.in_channels)
        self.out_channels = int(cfg.out_channels)
        size = cfg.sample_size
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | float, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        t = (t if t.is_floating_point() else t.float()).expand(x.shape[0])
        if self.num_classes and y is None:
            raise ValueError(
                f"this diffusers UNet is class-conditional (num_class_embeds={self.num_classes}): pass y"
            )
        if not self.num_classes and y is not None:
            raise ValueError("y (class labels) given to an unconditional diffusers UNet; pass y=None")
        if y is not None:
            y = torch.as_tensor(y, device=x.device).long().expand(x.shape[0])
        return self.unet(x, t, class_labels=y).sample


def _check_unet_config(cfg: dict[str, Any], mapping: SchedulerMapping) -> None:
    if cfg.get("class_embed_type") is not None:
        raise ValueError(
            f"UNet class_embed_type={cfg['class_embed_type']!r} does not map; difflab reads a class table "
            "(num_class_embeds) or no classes"
        )
    c_in, c_out = cfg.get("in_channels", 3), cfg.get("out_channels", 3)
    want = 2 * c_in if mapping.variance == "learned" else c_in
    if c_out != want:
        raise ValueError(
            f"UNet out_channels={c_out} with in_channels={c_in} and variance {mapping.variance!r}: "
            f"difflab needs out_channels = {want} (2 x in_channels only for learned_range variances)"
        )


def from_diffusers(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[GaussianDiffusion, DiffusersUNet]:
    """``(process, model)`` of a local diffusers folder (a pipeline with ``unet/`` and ``scheduler/``,
    or a ``UNet2DModel`` folder with a scheduler config): the process is mapped from the scheduler
    config by :func:`~difflab.interop.schedule_map.map_scheduler` (its mapping is kept as
    ``process.diffusers``), the model is :class:`DiffusersUNet` in eval mode."""
    parts = locate(path)
    diffusion, mapping = map_scheduler(_read_json(parts.scheduler_config))
    _check_unet_config(parts.unet_config(), mapping)
    _check_weights(parts.unet_dir)
    diffusers = require_diffusers()
    unet = diffusers.UNet2DModel.from_pretrained(
        str(parts.unet_dir), use_safetensors=True, local_files_only=True, low_cpu_mem_usage=False
    )
    diffusion.diffusers = mapping
    return diffusion, DiffusersUNet(unet).to(device).eval()


__all__ = [
    "DiffusersFolder",
    "DiffusersUNet",
    "from_diffusers",
    "is_diffusers_folder",
    "locate",
    "require_diffusers",
]
