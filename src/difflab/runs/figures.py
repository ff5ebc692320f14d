"""``difflab viz``: the figures of a run folder: the forward and reverse strips of an image run, and
the bound's density over log-SNR of one or more runs (``vlb.png``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..processes.protocol import has_bound
from ..vae import jobs as vae_jobs
from ..viz.vlb import BoundCurve, continuous_curve, curve_from_terms, plot_vlb
from .common import class_model, run_config, sampling_model, set_threads, split_data
from .load import load_run


def run_curve(run_dir: str | Path, split: str = "test", n: int | None = None, label: str | None = None,
              progress: bool = True) -> BoundCurve:
    """The bound of one run as a :class:`~difflab.viz.vlb.BoundCurve`: the ``T`` discrete terms of a
    DDPM run, or for a VDM run its continuous-time density over log-SNR with its prior and decoder."""
    run_dir = Path(run_dir)
    vae_jobs.refuse(run_config(run_dir), "the bound's plot")  # autoencoder / latent runs (difflab.vae)
    cfg, diffusion, model, splits = load_run(run_dir)
    if not has_bound(diffusion):
        raise ValueError(
            f"the bound's plot needs a process with a variational bound; this run uses diffusion.process = "
            f"{cfg.diffusion.process!r}"
        )
    set_threads(cfg)
    data, labels = split_data(cfg, splits, split, n)
    kwargs = {"bins": splits.bins} if splits.is_image else {"decoder": "gaussian"}
    g = torch.Generator().manual_seed(7)
    label = label or run_dir.name

    def curve(net, x: torch.Tensor) -> BoundCurve:
        if diffusion.discrete_steps is not None:  # the chain's T terms
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
        curves.append(curve(class_model(model, int(k)), data[mask]))
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


def strips(run_dir: str | Path, rows: int = 6, columns: int = 10) -> list[str]:
    """``forward.png`` (test images noised at increasing t) and ``reverse.png`` (ancestral chains from
    noise to images), one row per image."""
    from ..viz.images import forward_strip, reverse_strip

    run_dir = Path(run_dir)
    if vae_jobs.handles(run_config(run_dir)):  # reconstructions (difflab.vae)
        return vae_jobs.strips(run_dir)
    cfg, diffusion, model, splits = load_run(run_dir)
    forward_strip(diffusion, splits.test[:rows], run_dir / "forward.png", columns)
    reverse_strip(
        diffusion, sampling_model(cfg, model, rows), (rows, *splits.shape), run_dir / "reverse.png", columns
    )
    return ["forward.png", "reverse.png"]


__all__ = ["run_curve", "strips", "vlb_figure"]
