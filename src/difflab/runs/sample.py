"""``difflab sample``: draw samples from a run's EMA weights with any sampler, class or guidance scale;
writes ``samples.npy`` (in the data's range) and ``samples.png``."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import guidance as guidance_mod
from ..config import Config
from ..train.checkpoint import atomic_write
from .common import IMAGE_CLIP, check_count_of, labels_for, sampling_model, set_threads, write_json
from .load import load_run

ETA_SAMPLERS = ("ddim", "dpm++3m", "dpm++2m-sde")


def sample(
    run_dir: str | Path,
    sampler: str | None = None,
    steps: int | None = None,
    n: int | None = None,
    seed: int | None = None,
    spacing: str | None = None,
    eta: float | None = None,
    progress: bool = True,
    label: int | None = None,
    guidance: float | None = None,
) -> dict[str, Any]:
    """Draw samples with the EMA weights; writes ``samples.npy`` and ``samples.png``.

    A class-conditional model draws class ``label`` for every sample, or cycles through the classes
    (sample ``i`` has class ``i % num_classes``) when ``label`` is None; ``guidance`` is the
    classifier-free guidance scale (:mod:`difflab.guidance`; 1 = the conditional model)."""
    run_dir = Path(run_dir)
    cfg, diffusion, model, splits = load_run(run_dir)
    set_threads(cfg)
    s = cfg.sample
    sampler = sampler or s.sampler
    if eta is not None and not 0 <= eta < math.inf:
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    eta = s.eta if eta is None else eta
    kwargs = {"eta": eta} if sampler in ETA_SAMPLERS and eta >= 0 else {}
    n = s.n if n is None else n
    check_count_of("the number of samples", n)
    if steps is not None:
        check_count_of("steps", steps)
    net = guided_model(cfg, model, n, label, guidance)
    t0 = time.perf_counter()
    x, nfe = diffusion.sample(
        net,
        (n, *splits.shape),
        sampler=sampler,
        steps=(steps or s.steps) or None,
        spacing=spacing or s.spacing or None,
        generator=torch.Generator().manual_seed(s.seed if seed is None else seed),
        clip=IMAGE_CLIP if splits.is_image else None,
        progress=progress,
        return_nfe=True,
        **kwargs,
    )
    seconds = time.perf_counter() - t0
    if not bool(torch.isfinite(x).all()):
        raise RuntimeError(f"sampling produced NaN or inf values ({sampler}, {nfe} steps)")
    atomic_write(run_dir / "samples.npy", lambda tmp: np.save(open(tmp, "wb"), x.numpy()))
    if splits.is_image:
        from ..viz.images import save_grid

        save_grid(x[:100], run_dir / "samples.png", nrow=10)
    else:
        from ..viz import scatter_compare

        title = f"{cfg.data.name}: {sampler}, {nfe} NFE"
        scatter_compare(splits.test, x, run_dir / "samples.png", title)
    out = {"sampler": sampler, "nfe": nfe, "n": n, "seconds": round(seconds, 2)}
    out |= {k: v for k, v in (("class", label), ("guidance", guidance)) if v is not None}
    # what drew samples.npy, so that a metric computed from it later can say so
    write_json(run_dir / "samples.json", out | {"seed": s.seed if seed is None else seed, **kwargs})
    return out

def guided_model(cfg: Config, model: torch.nn.Module, n: int, label: int | None, scale: float | None):
    """The model :func:`sample` calls: unconditional, conditional on ``label`` (or cycling classes), or
    classifier-free guided with ``scale``."""
    k = cfg.model.num_classes
    if label is None and scale is None:
        return sampling_model(cfg, model, n)
    if k == 0:
        raise ValueError("--class and --guidance need a class-conditional model (model.num_classes > 0)")
    if label is not None and not 0 <= label < k:
        raise ValueError(f"class {label} is out of range: this model has classes 0..{k - 1}")
    y = labels_for(cfg, n) if label is None else torch.full((n,), label, dtype=torch.long)
    if scale is not None and scale != 1 and cfg.train.label_dropout <= 0:
        raise ValueError(
            "guidance needs the unconditional model, learnt only with train.label_dropout > 0; "
            "this run was trained without it (use --guidance 1 or retrain)"
        )
    return guidance_mod.cfg(model, y, 1.0 if scale is None else scale, null_class=k)


__all__ = ["ETA_SAMPLERS", "guided_model", "sample"]
