"""Run-folder jobs for likelihood: the probability-flow ODE bits/dim and the plot of the bound's terms.

``difflab eval bpd --ode`` adds :func:`ode_bound`'s figures to ``metrics.json`` next to the
variational bound of :func:`difflab.jobs.bound`; ``difflab viz vlb`` draws :func:`vlb_figure`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import jobs
from .ode_likelihood import ode_bits_per_dim, ode_nll
from .vae import jobs as vae_jobs
from .viz.vlb import BoundCurve, continuous_curve, curve_from_terms, plot_vlb

LIKELIHOOD_PROCESSES = jobs.BOUND_PROCESSES  # the ODE likelihood needs a variance-preserving process


def _check_process(cfg, what: str) -> None:
    if vae_jobs.handles(cfg):  # autoencoder and latent runs: eval bpd gives their bounds (difflab.vae)
        raise ValueError(f"{what} is for pixel-space diffusion runs; this is an autoencoder or latent "
                         "diffusion run: `difflab eval bpd` gives its bound")
    if cfg.diffusion.process not in LIKELIHOOD_PROCESSES:
        raise ValueError(
            f"{what} needs a variance-preserving process ({', '.join(LIKELIHOOD_PROCESSES)}); this run "
            f"uses diffusion.process = {cfg.diffusion.process!r}"
        )


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
    cfg, diffusion, model, splits = jobs.load_run(run_dir)
    _check_process(cfg, "the ODE likelihood")
    jobs.set_threads(cfg)
    data, labels = jobs.split_data(cfg, splits, split, n)
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
        values.append(jobs.score_by_class(cfg, model, data[start : start + batch], y, score))
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
    return jobs.update_json(run_dir / "metrics.json", result)


def run_curve(run_dir: str | Path, split: str = "test", n: int | None = None, label: str | None = None,
              progress: bool = True) -> BoundCurve:
    """The bound of one run as a :class:`~difflab.viz.vlb.BoundCurve`: the ``T`` discrete terms of a
    DDPM run, or for a VDM run its continuous-time density over log-SNR with its prior and decoder."""
    run_dir = Path(run_dir)
    cfg, diffusion, model, splits = jobs.load_run(run_dir)
    _check_process(cfg, "the bound's plot")
    jobs.set_threads(cfg)
    data, labels = jobs.split_data(cfg, splits, split, n)
    kwargs = {"bins": splits.bins} if splits.is_image else {"decoder": "gaussian"}
    g = torch.Generator().manual_seed(7)
    label = label or run_dir.name

    def curve(net, x: torch.Tensor) -> BoundCurve:
        if cfg.diffusion.process == "vp":
            terms = diffusion.vlb_terms(net, x, generator=g, progress=progress, **kwargs)
            return curve_from_terms(label, diffusion.log_snr(torch.arange(float(diffusion.timesteps))), terms)
        # VDM: only the prior and decoder are taken from its bound (one t per example for the unused
        # Monte-Carlo diffusion part); the diffusion part is the curve itself
        terms = diffusion.vlb_terms(net, x, generator=g, progress=progress, t_samples=1, **kwargs)
        return continuous_curve(
            label, diffusion.ode_view(net), x, generator=g,
            prior=float(terms.prior.mean()), decoder=float(terms.decoder.mean()),
        )

    if cfg.model.num_classes == 0:
        return curve(model, data)
    # class-conditional: each class's curve given its label, averaged with the classes' shares
    curves, shares = [], []
    for k in labels.unique().tolist():
        mask = labels == k
        curves.append(curve(jobs.class_model(model, int(k)), data[mask]))
        shares.append(float(mask.double().mean()))
    return BoundCurve(
        label, curves[0].lam_edges, sum(w * c.bits for w, c in zip(shares, curves)),
        prior=sum(w * c.prior for w, c in zip(shares, curves)),
        decoder=sum(w * c.decoder for w, c in zip(shares, curves)),
    )


def vlb_figure(
    runs: Sequence[str | Path], out: str | Path | None = None, split: str = "test", n: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Plot the bounds of one or more runs against log-SNR (``difflab viz vlb``); the figure goes to
    ``out`` (default: ``vlb.png`` in the first run folder). Returns each run's parts in bits/dim."""
    if not runs:
        raise ValueError("give at least one run folder")
    curves = [run_curve(r, split, n, progress=progress) for r in runs]
    out = Path(out) if out else Path(runs[0]) / "vlb.png"
    plot_vlb(curves, out, title=f"variational bound on the {split} split")
    return {
        "figure": str(out),
        "runs": {
            c.label: {"total": c.total, "prior": c.prior, "diffusion": c.diffusion, "decoder": c.decoder}
            for c in curves
        },
    }
