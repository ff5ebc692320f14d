"""Matplotlib figures (imported lazily; the Agg backend needs no display)."""

from __future__ import annotations

from pathlib import Path

import torch


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scatter_compare(
    data: torch.Tensor, samples: torch.Tensor, path: str | Path, title: str = ""
) -> Path:
    """Side-by-side scatter plots of 2-D data and model samples on shared axes."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5), sharex=True, sharey=True)
    for ax, pts, name in ((axes[0], data, "data"), (axes[1], samples, "samples")):
        p = pts.detach().cpu().numpy()
        ax.scatter(p[:, 0], p[:, 1], s=1.5, alpha=0.5, linewidths=0)
        ax.set_title(f"{name} ({len(p)} points)")
        ax.set_aspect("equal")
    lim = float(torch.quantile(data.abs().flatten().float(), 0.999)) * 1.3
    axes[0].set_xlim(-lim, lim)
    axes[0].set_ylim(-lim, lim)
    return save_figure(fig, path, title)


def save_figure(fig, path: str | Path, title: str = "") -> Path:
    """Title, tighten, write as PNG and close a figure; returns the path."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
