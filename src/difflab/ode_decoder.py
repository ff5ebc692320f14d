"""The probability-flow likelihood of discrete data, like with like: truncation at the model's smallest
noise level with a discretized decoder (Kingma et al. 2021, eq. 12-13; Song et al. 2021, "Maximum
likelihood training of score-based diffusion models", sec. 5; Zheng et al. 2023, sec. 4).

:func:`difflab.ode_likelihood.ode_bits_per_dim` scores ``x0 + u`` with ``u`` uniform over a grid cell.
That is a bound on ``-log P(x0)`` whose Jensen gap is small only when the model's density is smooth
across a cell; a model that resolves single grey levels (VDM's learned ``sigma_0 = 0.0016`` on 8-bit
MNIST, ``docs/likelihood.md``) has its density peaked on the grid, and the dequantized figure lies far
above its own variational bound. The variational bound instead treats ``x0`` through the first latent
``z_0 = alpha_0 x0 + sigma_0 eps`` and a decoder ``p(x0|z_0)``. Doing the same with the ODE's density
``p_ODE(z_0)`` at the data end ``lambda_0`` gives a bound on the same discrete ``-log P(x0)``:

    -log P(x0) <= E_{q(z_0|x0)}[-log p_ODE(z_0) - log p(x0|z_0) + log q(z_0|x0)],               (1)

(Jensen on ``P(x0) = int p(x0|z_0) p_ODE(z_0) dz_0``), with ``q(z_0|x0) = N(alpha_0 x0, sigma_0^2 I)``
(the diffusion's own first level, so ``log q = -0.5 |eps|^2 - D/2 log(2 pi sigma_0^2)`` in closed form)
and VDM's factorised decoder ``p(x0_i = c_k | z_0) = softmax_k(-(z_0,i/alpha_0 - c_k)^2 / (2 e^{gamma_0}))``
on the data's grid, ``gamma_0 = -lambda_0``
(:func:`difflab.processes.vdm.diffusion.categorical_decoder_nll`): the exact
posterior of a grid with equally likely levels. Where ``sigma_0`` is far below the grid step the
decoder costs almost nothing, ``p_ODE(z_0)`` is the model's density at the scale it was trained on, and
(1) is tight when the model is exact (the test: a grid oracle, where (1) recovers ``-log P`` and uniform
dequantization does not). Only the public ``ode_view`` / :func:`~difflab.ode_likelihood.ode_nll` API is
used, so (1) applies to every process the ODE likelihood does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .gaussian import check_grid, log_to_bits_per_dim
from .ode_likelihood import log_alpha2, ode_nll
from .processes.vdm.diffusion import categorical_decoder_nll

__all__ = ["TruncatedODEBound", "truncated_ode_bits_per_dim"]


@dataclass
class TruncatedODEBound:
    """The parts of (1) in bits/dim, each ``[B]``: ``ode`` ``-log p_ODE(z_0)``, ``decoder``
    ``-log p(x0|z_0)``, ``log_q`` ``log q(z_0|x0)``; ``total`` their sum."""

    ode: torch.Tensor
    decoder: torch.Tensor
    log_q: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.ode + self.decoder + self.log_q


def truncated_ode_bits_per_dim(
    diffusion, model, x0: torch.Tensor, *, bins: int = 256, generator: torch.Generator | None = None,
    **ode_kwargs: Any,
) -> TruncatedODEBound:
    """Eq. (1) with one draw ``z_0 ~ q(z_0|x0)`` per example (from ``generator``, before the ODE's
    probes), for ``x0`` on the grid of ``bins`` levels over ``[-1, 1]``. ``ode_kwargs`` go to
    :func:`~difflab.ode_likelihood.ode_nll` (``divergence``, ``rtol``, ``atol``, ``probes``, ...)."""
    check_grid(x0, bins)
    lam0 = float(diffusion.ode_view(model).lambda_start)
    alpha0 = math.exp(0.5 * log_alpha2(lam0))
    sigma0 = math.exp(0.5 * log_alpha2(-lam0))
    x = x0.detach().to(torch.float64)
    eps = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.device)
    z0 = alpha0 * x + sigma0 * eps
    nll = ode_nll(diffusion, model, z0.to(x0.dtype), generator=generator, **ode_kwargs)
    gamma0 = torch.tensor(-lam0, dtype=torch.float64)
    dec = categorical_decoder_nll(x, z0 / alpha0, gamma0, bins).flatten(1).sum(1)
    D = int(x[0].numel())
    log_q = -0.5 * eps.flatten(1).pow(2).sum(1) - 0.5 * D * math.log(2 * math.pi * sigma0**2)
    return TruncatedODEBound(
        ode=log_to_bits_per_dim(nll.cpu(), D),
        decoder=log_to_bits_per_dim(dec.cpu(), D),
        log_q=log_to_bits_per_dim(log_q.cpu(), D),
    )


def truncated_ode_bound(
    run_dir, split: str = "test", n: int | None = None, rtol: float = 1e-5, atol: float = 1e-5,
    batch: int = 64, progress: bool = True,
) -> dict[str, Any]:
    """``difflab eval bpd --ode-decoder``: eq. (1) in bits/dim on ``n`` images of a split (Hutchinson's
    divergence, one Rademacher probe), with its three parts; adds ``ode_decoder_*`` keys to
    ``metrics.json``. The standard error is over examples (it includes the draw of ``z_0`` and the probe)."""
    import time
    from pathlib import Path

    from .runs import common as jobs
    from .runs.load import load_run

    run_dir = Path(run_dir)
    cfg, diffusion, model, splits = load_run(run_dir)
    if not splits.is_image or not hasattr(diffusion, "ode_view"):
        raise ValueError("--ode-decoder scores grid images with a variance-preserving diffusion (vp or vdm)")
    jobs.set_threads(cfg)
    data, labels = jobs.split_data(cfg, splits, split, n)
    g = torch.Generator().manual_seed(11)
    t0, parts = time.perf_counter(), []
    for start in range(0, len(data), batch):
        y = None if labels is None else labels[start: start + batch]
        parts.append(jobs.score_by_class(
            cfg, model, data[start: start + batch], y,
            lambda net, x: truncated_ode_bits_per_dim(
                diffusion, net, x, bins=splits.bins, generator=g, rtol=rtol, atol=atol,
                divergence="hutchinson",
            ),
        ))
    keys = ("ode", "decoder", "log_q")
    b = TruncatedODEBound(*(torch.cat([getattr(p, k) for p in parts]) for k in keys))
    total = b.total
    se = float(total.std() / math.sqrt(len(total))) if len(total) > 1 else math.nan
    return jobs.update_json(run_dir / "metrics.json", {
        "ode_decoder_bits_per_dim": float(total.mean()),
        "ode_decoder_bits_per_dim_stderr": se,
        "ode_decoder_parts_bits_per_dim": {k: float(getattr(b, k).mean()) for k in keys},
        "ode_decoder_parts_are": "ode: -log p_ODE(z_0); decoder: -log p(x|z_0); log_q: log q(z_0|x)",
        "ode_decoder_points": len(total),
        "ode_decoder_seconds": round(time.perf_counter() - t0, 2),
    })
