"""Seeing the bound: where along the noise levels a model spends its bits.

Every curve is drawn against the log-SNR ``lambda`` (data end on the right), so discrete models with
different schedules and continuous-time models share one axis. The height is the bound's density per
unit of log-SNR, in bits/dim:

* discrete DDPM: the term ``L_{t-1}`` at model index ``i`` (the notes' ``t = i + 1``) covers the step
  from ``lambda_i`` to ``lambda_{i-1}``, so its density is ``L_{t-1} / (lambda_{i-1} - lambda_i)``;
* continuous time (VDM eq. 17 with ``dgamma = -dlambda``): ``L_inf = 0.5 E int ||eps - eps_hat||^2
  dlambda``, so the density at ``lambda`` is ``0.5 E||eps - eps_hat(z_lambda)||^2 / (D ln 2)`` whatever
  the schedule (the VDM paper's invariance: only the endpoints of the schedule change the bound).

The area under a curve is the diffusion part of the bound; the second panel shows it accumulated from
the prior end. Prior ``L_T`` and decoder ``L_0`` are printed in the legend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .plots import pyplot, save_figure


@dataclass
class BoundCurve:
    """The diffusion part of a bound as bits/dim over log-SNR intervals.

    ``lam_edges`` ``[K+1]`` decreasing (data end first); ``bits`` ``[K]``: bits/dim spent between
    ``lam_edges[k]`` and ``lam_edges[k+1]``; ``prior`` and ``decoder`` in bits/dim (``nan`` if unknown).
    """

    label: str
    lam_edges: torch.Tensor
    bits: torch.Tensor
    prior: float = math.nan
    decoder: float = math.nan

    def __post_init__(self):
        self.lam_edges = torch.as_tensor(self.lam_edges, dtype=torch.float64).flatten()
        self.bits = torch.as_tensor(self.bits, dtype=torch.float64).flatten()
        if self.lam_edges.numel() != self.bits.numel() + 1:
            raise ValueError(
                f"lam_edges needs one more entry than bits, got {self.lam_edges.numel()} and "
                f"{self.bits.numel()}"
            )
        if not bool((self.lam_edges[1:] < self.lam_edges[:-1]).all()):
            raise ValueError("lam_edges must decrease strictly (data end first)")

    @property
    def diffusion(self) -> float:
        return float(self.bits.sum())

    @property
    def total(self) -> float:
        return self.prior + self.diffusion + self.decoder

    @property
    def density(self) -> torch.Tensor:
        """Bits/dim per unit of log-SNR on each interval."""
        return self.bits / (self.lam_edges[:-1] - self.lam_edges[1:])

    @property
    def midpoints(self) -> torch.Tensor:
        return 0.5 * (self.lam_edges[:-1] + self.lam_edges[1:])


def curve_from_terms(label: str, log_snr: torch.Tensor, terms) -> BoundCurve:
    """A discrete model's :class:`~difflab.processes.ddpm.bound.VLBTerms` as a :class:`BoundCurve`:
    ``log_snr`` ``[T]`` holds ``lambda`` at the model indices ``0 .. T-1``."""
    lam = torch.as_tensor(log_snr, dtype=torch.float64).flatten()
    per_t = terms.terms.double().mean(0)
    if per_t.numel() != lam.numel():
        raise ValueError(f"terms cover {per_t.numel()} timesteps but log_snr has {lam.numel()}")
    return BoundCurve(
        label,
        lam_edges=lam,
        bits=per_t[1:],
        prior=float(terms.prior.double().mean()),
        decoder=float(per_t[0]),
    )


@torch.no_grad()
def continuous_curve(
    label: str,
    view,
    x0: torch.Tensor,
    points: int = 64,
    generator: torch.Generator | None = None,
    prior: float = math.nan,
    decoder: float = math.nan,
) -> BoundCurve:
    """The continuous-time density ``0.5 E||eps - eps_hat(z_lambda)||^2 / (D ln 2)`` on ``points``
    intervals of equal width in ``lambda`` between ``view.lambda_start`` and ``view.lambda_end``
    (midpoint rule, one noise draw per example and point). ``view`` is an
    :class:`~difflab.ode_likelihood.ODEView` (``diffusion.ode_view(model)``)."""
    if points < 1:
        raise ValueError(f"points must be >= 1, got {points!r}")
    edges = torch.linspace(view.lambda_start, view.lambda_end, points + 1, dtype=torch.float64)
    mids = 0.5 * (edges[:-1] + edges[1:])
    dims = x0[0].numel()
    bits = torch.empty(points, dtype=torch.float64)
    for k, lam in enumerate(mids.tolist()):
        alpha, sigma = math.sqrt(_sigmoid(lam)), math.sqrt(_sigmoid(-lam))
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        eps_hat = view.eps(alpha * x0 + sigma * eps, lam)
        mse = (eps - eps_hat).double().pow(2).flatten(1).sum(1).mean()
        bits[k] = 0.5 * mse / (dims * math.log(2.0)) * float(edges[k] - edges[k + 1])
    return BoundCurve(label, edges, bits, prior=prior, decoder=decoder)


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def plot_vlb(curves: Sequence[BoundCurve], path: str | Path, title: str = "") -> Path:
    """Two panels against ``lambda``: the bound's density (log scale) and its running sum from the
    prior end. Returns the written path."""
    if not curves:
        raise ValueError("plot_vlb needs at least one curve")
    plt = pyplot()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.2))
    for c in curves:
        parts = f"prior {c.prior:.3g}, diffusion {c.diffusion:.3f}, decoder {c.decoder:.3g}"
        label = f"{c.label}: {c.total:.3f} bits/dim ({parts})"
        ax0.plot(c.midpoints.numpy(), c.density.clamp_min(1e-12).numpy(), label=label, lw=1.2)
        running = torch.cat([torch.zeros(1, dtype=torch.float64), c.bits.flip(0).cumsum(0)])
        ax1.plot(c.lam_edges.flip(0).numpy(), running.numpy(), lw=1.2)
    ax0.set_yscale("log")
    ax0.set_xlabel("log-SNR lambda (data end on the right)")
    ax0.set_ylabel("bits/dim per unit lambda")
    ax0.legend(fontsize=7, loc="upper left")
    ax1.set_xlabel("log-SNR lambda")
    ax1.set_ylabel("diffusion bits/dim accumulated from the prior end")
    for ax in (ax0, ax1):
        ax.grid(alpha=0.3)
    return save_figure(fig, path, title)
