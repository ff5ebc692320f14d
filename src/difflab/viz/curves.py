"""Training curves of one or more runs from their ``log.csv``: loss, learning rate and gradient norm
against optimizer steps and against training seconds, as one PNG (for :mod:`difflab.report`)."""

from __future__ import annotations

import io
from collections.abc import Sequence

CURVES = (
    ("loss", "loss (mean since the previous row)", "log"),
    ("lr", "learning rate", "linear"),
    ("grad_norm", "gradient norm (before clipping)", "log"),
)


def training_curves_png(logs: Sequence[tuple[str, list[dict[str, float]]]], dpi: int = 90) -> bytes:
    """A 2 x 3 grid (rows: against steps, against seconds; columns: loss, lr, grad norm) with one line
    per run, ``logs`` being ``(label, rows of log.csv)`` pairs. Returns the PNG's bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.4), squeeze=False)
    for row, (xkey, xlabel) in enumerate((("step", "optimizer step"), ("seconds", "training seconds"))):
        for col, (key, title, scale) in enumerate(CURVES):
            ax = axes[row][col]
            for label, rows in logs:
                pts = [(r[xkey], r[key]) for r in rows if key in r and xkey in r]
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, lw=1.3, label=label)
            positive = all(v > 0 for _, rows in logs for r in rows for v in [r.get(key, 1.0)])
            ax.set_yscale(scale if positive else "linear")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(xlabel, fontsize=9)
            ax.grid(alpha=0.3)
    if len(logs) > 1:
        axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


__all__ = ["training_curves_png"]
