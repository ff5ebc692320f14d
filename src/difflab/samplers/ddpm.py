"""Ancestral sampling (DDPM Algorithm 2) and DDIM on one list of noise levels.

Both are pure functions of ``(denoiser, x_T, levels)``. Respacing is exact: a step from level ``t``
to an earlier level ``s`` uses ``alpha_{t|s} = alpha_t/alpha_s`` and the respaced
``beta = 1 - alpha_t^2/alpha_s^2``, so the posterior variance is recomputed for the shorter chain.
A learned variance (improved DDPM, Nichol & Dhariwal 2021, sec. 3.1 and 4) interpolates, in the log
domain, between that respaced ``beta`` and the respaced posterior variance ``beta~``.
"""

from __future__ import annotations

import torch

from ..denoiser import Denoiser
from ..gaussian import learned_log_variance, posterior_coefficients, transition_variance
from .levels import Levels

#: reverse variances of ancestral sampling; ``learned`` needs a network with variance channels
VARIANCES = ("fixed_small", "fixed_large", "learned")
FIXED_VARIANCES = ("fixed_small", "fixed_large")


def progress_iter(it, total: int, enabled: bool, desc: str):
    """``it`` itself, or wrapped in a tqdm progress bar of ``total`` steps when ``enabled``."""
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, leave=False)


def noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise of ``x``'s shape, device and dtype, drawn with ``generator``."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)




@torch.no_grad()
def ancestral(
    denoiser: Denoiser,
    x: torch.Tensor,
    levels: Levels,
    *,
    variance: str = "fixed_small",
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback=None,
) -> torch.Tensor:
    """DDPM Algorithm 2: ``x_s = mu~(x_t, x0_hat) + sigma z`` for each step ``t -> s``.

    ``mu~`` is the posterior mean with the model's ``x0_hat``; ``sigma^2`` is ``beta~`` (fixed_small),
    the respaced ``beta`` (fixed_large) or, for a network with variance channels ``v`` (learned),
    improved DDPM's eq. 15 on the respaced chain: ``log sigma^2 = frac log beta + (1 - frac) log beta~``
    with ``frac = (v + 1)/2`` (per example and dimension). The noise is scaled by the standard
    deviation, not by the variance (seed 001 writes ``sigma_t^2 z``). No noise is added on the step
    to the data. ``callback(i, x)``, if given, sees the state after step ``i`` (1-based).
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
    learned = variance == "learned"
    if learned and not getattr(denoiser, "learned_variance", False):
        raise ValueError(
            "variance='learned' needs a network that outputs variance channels: a Denoiser with "
            "learned_variance=True, as GaussianDiffusion(variance='learned').denoiser(model) makes"
        )
    steps = progress_iter(levels.pairs(), len(levels), progress, "ancestral")
    for i, (t, a_t, s_t, a_s, s_s) in enumerate(steps, 1):
        if learned:
            x0, _, v = denoiser.predict(x, t)
        else:
            x0, _ = denoiser(x, t)
        c0, ct, post_var = posterior_coefficients(a_t, s_t, a_s, s_s)
        x = c0.to(x.dtype) * x0 + ct.to(x.dtype) * x
        if float(s_s) > 0:
            if learned:
                beta = transition_variance(a_t, s_t, a_s, s_s)
                log_var = learned_log_variance(
                    v, torch.log(post_var).to(x.dtype), torch.log(beta).to(x.dtype)
                )
                x = x + torch.exp(0.5 * log_var) * noise_like(x, generator)
            else:
                var = post_var if variance == "fixed_small" else transition_variance(a_t, s_t, a_s, s_s)
                x = x + var.sqrt().to(x.dtype) * noise_like(x, generator)
        if callback is not None:
            callback(i, x)
    return x


@torch.no_grad()
def ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    levels: Levels,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12): ``x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z``
    with ``c = eta sqrt(beta~)``; ``eta = 0`` is deterministic, ``eta = 1`` is ancestral sampling."""
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    for t, a_t, s_t, a_s, s_s in progress_iter(levels.pairs(), len(levels), progress, "ddim"):
        x0, eps = denoiser(x, t)
        c2 = eta**2 * posterior_coefficients(a_t, s_t, a_s, s_s)[2]
        if float(c2) > float(s_s**2):
            raise ValueError(f"eta={eta} gives more noise than the level holds; use eta <= 1")
        x = a_s.to(x.dtype) * x0 + (s_s**2 - c2).sqrt().to(x.dtype) * eps
        if float(c2) > 0:
            x = x + c2.sqrt().to(x.dtype) * noise_like(x, generator)
    return x
