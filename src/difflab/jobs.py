"""The jobs behind the command line, each reading and writing one run folder::

    RUN/config.toml        resolved configuration
    RUN/checkpoint.pt      full training state (atomic)
    RUN/model.safetensors  EMA weights (atomic)
    RUN/log.csv            step, loss, lr, seconds
    RUN/train.json         training summary
    RUN/samples.npy/.png   samples and a scatter plot of data vs samples
    RUN/metrics.json       evaluation
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import config as config_mod
from .build import build_data, build_diffusion, build_model, fresh_data
from .config import Config
from .metrics import sliced_wasserstein
from .train.checkpoint import atomic_write, load_weights
from .train.trainer import Trainer


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def _set_threads(cfg: Config) -> None:
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)


def train(cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train a model as ``cfg`` says; with ``resume`` continue from the run folder's checkpoint."""
    run_dir = Path(run_dir)
    _set_threads(cfg)
    torch.manual_seed(cfg.train.seed)
    data = build_data(cfg, "train")
    diffusion = build_diffusion(cfg)
    model = build_model(cfg, tuple(data.shape[1:]))
    trainer = Trainer(diffusion, model, data, cfg.train, run_dir, config=cfg.to_dict())
    if resume:
        trainer.resume()
    run_dir.mkdir(parents=True, exist_ok=True)
    config_mod.save(cfg, run_dir / "config.toml")
    summary = trainer.fit(progress_bar=progress)
    summary["parameters"] = sum(p.numel() for p in model.parameters())
    _write_json(run_dir / "train.json", summary)
    return summary


def load_run(run_dir: str | Path) -> tuple[Config, Any, torch.nn.Module]:
    """``(config, diffusion, EMA model)`` of a trained run folder."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.toml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.toml); train one first")
    cfg = config_mod.load(str(cfg_path))
    data = build_data(cfg, "test")
    model = build_model(cfg, tuple(data.shape[1:]))
    model.load_state_dict(load_weights(run_dir))
    return cfg, build_diffusion(cfg), model.eval()


def sample(
    run_dir: str | Path,
    sampler: str | None = None,
    steps: int | None = None,
    n: int | None = None,
    seed: int | None = None,
    spacing: str | None = None,
    eta: float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Draw samples with the EMA weights; writes ``samples.npy`` and ``samples.png``."""
    run_dir = Path(run_dir)
    cfg, diffusion, model = load_run(run_dir)
    _set_threads(cfg)
    s = cfg.sample
    sampler = sampler or s.sampler
    kwargs = {"eta": s.eta if eta is None else eta} if sampler == "ddim" else {}
    n = n or s.n
    t0 = time.perf_counter()
    x, nfe = diffusion.sample(
        model,
        (n, *build_data(cfg, "test").shape[1:]),
        sampler=sampler,
        steps=(steps or s.steps) or None,
        spacing=spacing or s.spacing,
        generator=torch.Generator().manual_seed(s.seed if seed is None else seed),
        progress=progress,
        return_nfe=True,
        **kwargs,
    )
    seconds = time.perf_counter() - t0
    if not bool(torch.isfinite(x).all()):
        raise RuntimeError(f"sampling produced NaN or inf values ({sampler}, {nfe} steps)")
    atomic_write(run_dir / "samples.npy", lambda tmp: np.save(open(tmp, "wb"), x.numpy()))
    from .viz import scatter_compare

    scatter_compare(
        build_data(cfg, "test"), x, run_dir / "samples.png", f"{cfg.data.name}: {sampler}, {nfe} NFE"
    )
    return {"sampler": sampler, "nfe": nfe, "n": n, "seconds": round(seconds, 2)}


def evaluate(run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Sliced Wasserstein-2 of the saved samples against fresh data (and its noise floor), and the
    variational bound on held-out points in nats per dimension."""
    run_dir = Path(run_dir)
    cfg, diffusion, model = load_run(run_dir)
    _set_threads(cfg)
    e = cfg.eval
    samples_path = run_dir / "samples.npy"
    if not samples_path.is_file():
        raise FileNotFoundError(f"no samples in {run_dir}; run `difflab sample --run {run_dir}` first")
    samples = torch.from_numpy(np.load(samples_path))[: e.n]
    g = torch.Generator().manual_seed(12345)
    sw = sliced_wasserstein(samples, fresh_data(cfg, len(samples), 0), e.projections, generator=g)
    floors = [
        sliced_wasserstein(
            fresh_data(cfg, len(samples), 2 * i + 1), fresh_data(cfg, len(samples), 2 * i + 2),
            e.projections, generator=g,
        )
        for i in range(e.floor_pairs)
    ]
    floor = float(np.mean(floors))
    test = build_data(cfg, "test")[: e.bound_n]
    t0 = time.perf_counter()
    terms = diffusion.vlb_terms(
        model, test, decoder="gaussian", generator=torch.Generator().manual_seed(7), progress=progress
    )
    ln2 = math.log(2.0)
    metrics = {
        "data": cfg.data.name,
        "samples": len(samples),
        "sliced_w2": sw,
        "sliced_w2_floor": floor,
        "sliced_w2_floor_pairs": floors,
        "sliced_w2_ratio": sw / floor,
        "bound_nats_per_dim": float(terms.total.mean()) * ln2,
        "bound_nats_per_dim_stderr": float(terms.total.std() * ln2 / math.sqrt(len(test))),
        "bound_parts_nats_per_dim": {
            "prior_L_T": float(terms.prior.mean()) * ln2,
            "diffusion_L_1..L_T-1": float(terms.diffusion.mean()) * ln2,
            "decoder_L_0": float(terms.decoder.mean()) * ln2,
        },
        "bound_points": len(test),
        "bound_seconds": round(time.perf_counter() - t0, 2),
    }
    _write_json(run_dir / "metrics.json", metrics)
    return metrics
