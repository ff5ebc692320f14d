"""iPNDM: the improved pseudo numerical method of Zhang & Chen (2022, "Fast Sampling of Diffusion Models
with Exponential Integrator", sec. 5 / app. "iPNDM"), after PNDM (Liu et al. 2022, eq. 12).

PNDM's linear multistep combination of noise predictions, taken with the DDIM transfer (the exponential
integrator's first-order step), which in EDM's coordinates (:mod:`.ve`) is an Euler step in
``rho = sigma~``:

    x~_{i+1} = x~_i + (rho_{i+1} - rho_i) eps',
    eps' = (55 e_i - 59 e_{i-1} + 37 e_{i-2} - 9 e_{i-3}) / 24             (order 4)
           (23 e_i - 16 e_{i-1} + 5 e_{i-2}) / 12,  (3 e_i - e_{i-1}) / 2,  e_i     (orders 3, 2, 1),

the Adams-Bashforth weights for equal steps, ``e_i = eps_hat = (x~_i - x0_hat)/rho_i``. Unlike PNDM, the
first steps use the lower-order combinations instead of Runge-Kutta warm-up steps, so ``N`` levels cost
``N`` evaluations. The step to the data is ``x~ = x0_hat``.
"""

from __future__ import annotations

import torch

from ..denoiser import Denoiser
from .ddpm import progress_iter
from .levels import Levels
from .ve import VEDenoiser, check_order

#: Adams-Bashforth weights of equal steps, newest output first, by order
ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


@torch.no_grad()
def ipndm(
    denoiser: Denoiser,
    x: torch.Tensor,
    levels: Levels,
    *,
    order: int = 3,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """iPNDM with Adams-Bashforth combinations up to ``order`` (1-4; the paper's 4, the default 3 is the
    most accurate measured over 5-20 NFE, ``docs/samplers.md``); ``N`` evaluations.
    ``generator`` is accepted for a uniform signature (the sampler is deterministic)."""
    check_order(order, tuple(ADAMS_BASHFORTH))
    ve = VEDenoiser(denoiser, levels)
    sig, n = ve.sigmas, len(levels)
    x = ve.to_ve(x)
    eps: list[torch.Tensor] = []  # newest first
    for i in progress_iter(range(n), n, progress, "ipndm"):
        x0 = ve.at_level(x, i)
        if float(sig[i + 1]) == 0.0:
            x = x0
            continue
        eps = [(x - x0) / float(sig[i]), *eps[: order - 1]]
        weights = ADAMS_BASHFORTH[len(eps)]
        x = x + float(sig[i + 1] - sig[i]) * sum(w * e for w, e in zip(weights, eps))
    return x
