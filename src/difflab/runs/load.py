"""A run folder read back as a :class:`~difflab.runs.common.Run`: its configuration, process, EMA
model and data splits, whatever kind of run it holds (a diffusion run, an autoencoder or latent
diffusion run of :mod:`difflab.vae`, or the output folder of a diffusers model)."""

from __future__ import annotations

from pathlib import Path

from ..processes.protocol import Process
from ..train.checkpoint import load_weights
from ..vae import jobs as vae_jobs
from .build import build_diffusion, build_model, build_splits
from .common import Run, run_config
from .folder import check_split


def load_run(run_dir: str | Path) -> Run:
    """The :class:`Run` of a trained run folder: ``(config, diffusion, EMA model, data splits)``."""
    run_dir = Path(run_dir)
    if (run_dir / "diffusers.json").is_file():  # the output folder of a diffusers model (difflab.interop)
        from ..interop.linked_run import load_linked_run

        return Run(*load_linked_run(run_dir))
    cfg = run_config(run_dir)
    if vae_jobs.handles(cfg):  # autoencoder and latent diffusion runs (difflab.vae)
        return Run(*vae_jobs.load_run(cfg, run_dir))
    splits = build_splits(cfg)
    check_split(run_dir, splits.info)
    model = build_model(cfg, splits.shape)
    model.load_state_dict(load_weights(run_dir))
    diffusion = build_diffusion(cfg, splits)
    diffusion.bind(model)  # a schedule trained inside the model (VDM) becomes the process's own
    return Run(cfg, diffusion, model.eval(), splits)


def load_process(run_dir: str | Path) -> Process:
    """The process of a run folder, to ask what it declares (``bound_parts``, ...): built from the
    recorded config without loading weights or data, except for a diffusers output folder, whose
    process comes from the linked scheduler (:func:`load_run`)."""
    run_dir = Path(run_dir)
    if (run_dir / "diffusers.json").is_file():
        return load_run(run_dir).diffusion
    return build_diffusion(run_config(run_dir))


__all__ = ["Run", "load_process", "load_run"]
