"""``difflab train``: train a model as a config says into a run folder, under the rules of
``docs/runs.md`` (one writer at a time, exact resume, refusal of a changed config or data)."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from .. import config as config_mod
from .. import threads as threads_mod
from ..config import Config
from ..train.checkpoint import checkpoint_path
from ..train.trainer import Trainer
from ..vae import jobs as vae_jobs
from .build import Splits, build_diffusion, build_model, build_splits
from .common import IMAGE_CLIP, main_rank, sampling_model, write_json
from .folder import RunFolderError, RunLock, check_split, clear_run, holds_run


def train(
    cfg: Config,
    run_dir: str | Path,
    resume: str | int | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a model as ``cfg`` says into ``run_dir`` under the rules of ``docs/runs.md``.

    ``resume``: ``None`` starts a fresh run (refused if the folder holds one, unless ``overwrite``);
    ``"latest"``, a step number or a checkpoint path continues exactly from that checkpoint (refused
    if it does not exist, or if the configuration differs in a key that changes the result). The
    folder is locked while training; SIGTERM / SIGINT save the current step and raise
    :class:`~difflab.train.trainer.Interrupted`."""
    run_dir = Path(run_dir)
    if resume is True:
        resume = "latest"
    if resume is not None and overwrite:
        raise ValueError("--resume continues the run in the folder and --overwrite deletes it: give one")
    main = main_rank()
    lock = RunLock(run_dir) if main else nullcontext()
    with lock:
        if main and resume is None and holds_run(run_dir):
            if not overwrite:
                raise RunFolderError(
                    f"{run_dir} already holds a run; continue it with --resume [latest|STEP|PATH] or "
                    "start it over with --overwrite (deletes its checkpoints, logs and samples)"
                )
            clear_run(run_dir)
        return train_locked(cfg, run_dir, resume, progress)

def train_locked(cfg: Config, run_dir: Path, resume, progress: bool) -> dict[str, Any]:
    if vae_jobs.handles(cfg):  # autoencoder and latent diffusion runs (difflab.vae)
        return vae_jobs.train_locked(cfg, run_dir, resume, progress)
    if resume is not None:
        checkpoint_path(run_dir, resume)  # refuses a step or path that does not exist, naming the choices
    torch.manual_seed(cfg.train.seed)
    splits = build_splits(cfg)
    if resume is not None:
        check_split(run_dir, splits.info)
    diffusion = build_diffusion(cfg, splits)
    model = build_model(cfg, splits.shape)
    governor = threads_mod.ThreadGovernor.for_training(cfg.train.threads, model, cfg.train.device)
    if cfg.train.precision == "bf16" and not cfg.train.device.startswith("cuda") and main_rank():
        slow = threads_mod.bf16_slowdown()
        if slow > 1.5:
            print(f"warning: bf16 is {slow:.0f}x slower than fp32 on this CPU (no native bf16 instructions); "
                  "set train.precision='fp32' to train faster", file=sys.stderr, flush=True)
    extra: dict[str, Any] = {}
    if cfg.model.num_classes > 0:
        if splits.train_y is None:
            raise ValueError(f"model.num_classes={cfg.model.num_classes} needs labelled data")
        extra.update(labels=splits.train_y, num_classes=cfg.model.num_classes)
    if splits.is_image and cfg.train.sample_every > 0:
        extra["on_sample"] = grid_callback(cfg, diffusion, splits, run_dir)
    trainer = Trainer(
        diffusion, model, splits.train, cfg.train, run_dir, config=cfg.to_dict(), on_step=governor.observe,
        **extra,
    )
    if resume is not None:
        trainer.resume(resume)
    config_mod.save(cfg, run_dir / "config.toml")
    if splits.info:
        write_json(run_dir / "split.json", splits.info)
    summary = trainer.fit(progress_bar=progress)
    summary["parameters"] = sum(p.numel() for p in model.parameters())
    write_json(run_dir / "train.json", summary)
    return summary

def grid_callback(cfg: Config, diffusion, splits: Splits, run_dir: Path):
    from ..viz.images import save_grid

    def on_sample(step: int, ema_model: torch.nn.Module) -> None:
        n = 36
        x = diffusion.sample(
            sampling_model(cfg, ema_model, n),
            (n, *splits.shape),
            sampler="ddim",
            steps=50,
            clip=IMAGE_CLIP,
            generator=torch.Generator().manual_seed(0),
        )
        save_grid(x, run_dir / "grids" / f"step-{step:07d}.png", nrow=6)

    return on_sample


__all__ = ["train"]
