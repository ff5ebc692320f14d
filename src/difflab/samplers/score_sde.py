"""Score-based samplers: the predictor-corrector sampler of Song et al. (2021, "Score-Based Generative
Modeling through SDEs", Alg. 2-3) and annealed Langevin dynamics of NCSN (Song & Ermon 2019, Alg. 1).

Both work in the network's own coordinates ``x_t = alpha_t x_0 + sigma_t eps`` with the score of the
noisy marginal, ``grad log p_t(x_t) = -eps_hat / sigma_t`` (Tweedie). Every score costs one network
evaluation; the evaluation counts are stated per sampler.
"""

from __future__ import annotations

import torch

from ..denoiser import Denoiser
from ..gaussian import transition_variance
from .ddpm import noise_like, progress_iter
from .levels import Levels
from .ve import check_count, check_positive


def _score(denoiser: Denoiser, x: torch.Tensor, t, sigma) -> torch.Tensor:
    """``-eps_hat / sigma_t``: the score of the noisy marginal at level ``t``."""
    _, eps = denoiser(x, t)
    return eps / -float(sigma)


def _batch_norm(v: torch.Tensor) -> float:
    """Mean over the batch of the per-example Euclidean norm (score_sde's ``||.||``)."""
    return float(v.flatten(1).norm(dim=1).mean())


# NCSN's annealed Langevin step at its last level, relative to that level's variance: 2e-5 / 0.01^2
NCSN_STEP_RATIO = 0.2


def _langevin_step(x: torch.Tensor, score: torch.Tensor, step: float, z: torch.Tensor) -> torch.Tensor:
    """One unadjusted Langevin update ``x + step * score + sqrt(2 step) z``."""
    return x + step * score + (2.0 * step) ** 0.5 * z


@torch.no_grad()
def pc(
    denoiser: Denoiser,
    x: torch.Tensor,
    levels: Levels,
    *,
    snr: float = 0.16,
    corrector_steps: int = 1,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Predictor-corrector sampling: at each level ``corrector_steps`` Langevin corrections, then one
    reverse-diffusion predictor step to the next level. ``N (corrector_steps + 1)`` evaluations.

    Corrector (score_sde's ``LangevinCorrector``): ``x <- x + e g + sqrt(2 e) z`` with ``g`` the score
    and the step ``e = 2 a^2 (snr ||z|| / ||g||)^2``, the norms averaged over the batch as in the
    paper (so the step size, not the samples' noise, is shared by the batch; per-example norms are
    unstable in low dimension), ``a^2 = alpha_t^2/alpha_s^2`` the one-step ``1 - beta`` of the respaced
    chain (``alpha_i`` of the paper's VP rule).

    Predictor (reverse diffusion, the discretized reverse SDE of the forward step
    ``x_t = a x_s + sqrt(b) z`` with ``a = alpha_t/alpha_s``, ``b = sigma_t^2 - a^2 sigma_s^2``):
    ``x_s = (2 - a) x_t + b g + sqrt(b) z`` (for VP ``b = beta`` and ``2 - a = 2 - sqrt(1 - beta)``,
    the paper's update). The step to the data adds no noise (score_sde's ``denoise``).
    """
    check_positive(snr=snr)
    if isinstance(corrector_steps, bool) or not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be an integer >= 0, got {corrector_steps!r}")
    for t, a_t, s_t, a_s, s_s in progress_iter(levels.pairs(), len(levels), progress, "pc"):
        a = float(a_t / a_s)
        for _ in range(corrector_steps):
            g = _score(denoiser, x, t, s_t)
            z = noise_like(x, generator)
            step = 2.0 * a**2 * (snr * _batch_norm(z) / max(_batch_norm(g), 1e-30)) ** 2
            x = _langevin_step(x, g, step, z)
        b = float(transition_variance(a_t, s_t, a_s, s_s))
        x = (2.0 - a) * x + b * _score(denoiser, x, t, s_t)
        if float(s_s) > 0:
            x = x + b**0.5 * noise_like(x, generator)
    return x


@torch.no_grad()
def langevin(
    denoiser: Denoiser,
    x: torch.Tensor,
    levels: Levels,
    *,
    n_steps_each: int = 100,
    epsilon: float | None = None,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Annealed Langevin dynamics (NCSN Alg. 1) over the levels, noisiest first.

    At level ``i`` take ``n_steps_each`` updates ``x <- x + (e_i/2) grad log p_i(x) + sqrt(e_i) z`` with
    ``e_i = epsilon (sigma_i / sigma_L)^2`` (``sigma_L`` the last level's) and the score
    ``-eps_hat/sigma_i`` of the marginal at that level (for a variance-preserving schedule the marginal
    of ``x_t`` itself, not of ``x_t/alpha``). With ``denoise`` a last evaluation returns ``x0_hat`` at the
    last level (Tweedie's denoising step of Jolicoeur-Martineau et al. 2021). Evaluations:
    ``N n_steps_each`` plus one with ``denoise``.

    The default ``epsilon`` is NCSN's step relative to the level, ``e_i = 0.2 sigma_i^2`` (NCSN: ``2e-5``
    at ``sigma_L = 0.01``, which is also DDPM's linear schedule's last level), for any schedule:
    Langevin on a level of variance about ``sigma_i^2`` is stable only for ``e_i < 2 sigma_i^2``, so
    NCSN's absolute ``2e-5`` diverges where ``sigma_L`` is far below 0.01 (VDM's learned schedule, EDM's
    0.002). 100 steps each as in NCSN.
    """
    check_count(n_steps_each=n_steps_each)
    sigma_last = float(levels.sigma[-1])
    if epsilon is None:
        epsilon = NCSN_STEP_RATIO * sigma_last**2
    check_positive(epsilon=epsilon)
    for i in progress_iter(range(len(levels)), len(levels), progress, "langevin"):
        t, sigma = levels.t[i], float(levels.sigma[i])
        half_step = 0.5 * epsilon * (sigma / sigma_last) ** 2
        for _ in range(n_steps_each):
            x = _langevin_step(x, _score(denoiser, x, t, sigma), half_step, noise_like(x, generator))
    if denoise:
        x, _ = denoiser(x, levels.t[-1])
    return x
