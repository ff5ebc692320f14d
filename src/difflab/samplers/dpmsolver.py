"""Multistep DPM-Solver++ in data-prediction form (Lu et al. 2022, "DPM-Solver++"), ODE and SDE.

Written with ``x~ = x/alpha``, ``sigma~ = sigma/alpha`` and the half log-SNR ``l = -log sigma~ = lambda/2``
(see :mod:`.ve`). Over one step ``l_i -> l_{i+1} = l_i + h`` the exact solution of the probability-flow
ODE, and of its SDE family with noise share ``eta >= 0``, is a semi-linear integral in ``l``:

    x~_{i+1} = (sigma~_{i+1}/sigma~_i) e^{-eta h} x~_i + int_0^h k e^{k(tau - h)} D(l_i + tau) dtau
               [+ sigma~_{i+1} sqrt(1 - e^{-2 eta h}) z],                       k = 1 + eta.

``eta = 0`` is the ODE (DPM-Solver++), ``eta = 1`` the SDE whose first-order step is exactly DDPM's
posterior ``q(x_s | x_t, x0_hat)`` (SDE-DPM-Solver++). A ``q``-th order multistep method replaces ``D``
by the polynomial through the last ``q`` data predictions and integrates it exactly: with the Newton
form ``D ~ D_0 + tau [D_0, D_1] + tau (tau + h_1) [D_0, D_1, D_2]`` (``h_1`` the previous step) and
``J_n = int_0^h k e^{k(tau-h)} tau^n dtau`` (``J_0 = 1 - e^{-kh}``, ``J_n = h^n - (n/k) J_{n-1}``),

    x~_{i+1} = ... + J_0 D_0 + J_1 [D_0, D_1] + (J_2 + h_1 J_1) [D_0, D_1, D_2].

For order 2 the paper's Algorithm 2 ("2M") uses ``(h J_0 / 2) [D_0, D_1]`` in place of
``J_1 [D_0, D_1]`` (both equal ``h^2/2 [D_0, D_1]`` to leading order): ``solver_type="midpoint"``
(the default, as in the paper and k-diffusion); ``"heun"`` is the exact integral (DPM-Solver's
"taylor"). The first steps have fewer predictions and use lower orders; with ``lower_order_final``
the ``q``-th step from the end uses order at most ``q`` (the last step, to the data, is always the
first-order step ``x~ = D``, since ``h = inf`` there). One evaluation per level: ``N`` in all.
"""

from __future__ import annotations

import math

import torch

from ..denoiser import Denoiser
from .ddpm import noise_like, progress_iter
from .levels import Levels
from .ve import VEDenoiser, check_nonnegative

SOLVER_TYPES = ("midpoint", "heun")


def kernel_moments(h: float, k: float) -> tuple[float, float, float]:
    """``J_n = int_0^h k e^{k(tau-h)} tau^n dtau`` for ``n = 0, 1, 2``, by parts from ``J_0``."""
    j0 = -math.expm1(-k * h)
    j1 = h - j0 / k
    j2 = h * h - 2.0 * j1 / k
    return j0, j1, j2


def _multistep(
    denoiser: Denoiser,
    x: torch.Tensor,
    levels: Levels,
    *,
    order: int,
    eta: float,
    solver_type: str,
    lower_order_final: bool,
    s_noise: float,
    generator: torch.Generator | None,
    progress: bool,
    name: str,
) -> torch.Tensor:
    check_nonnegative(eta=eta, s_noise=s_noise)
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"unknown solver_type {solver_type!r}; choose one of {', '.join(SOLVER_TYPES)}")
    ve = VEDenoiser(denoiser, levels)
    sig, n = ve.sigmas, len(levels)
    ell = -torch.log(sig[:n])  # half log-SNR of each level
    x = ve.to_ve(x)
    hist: list[tuple[float, torch.Tensor]] = []  # (l, D) of the latest levels, newest first
    for i in progress_iter(range(n), n, progress, name):
        d0 = ve.at_level(x, i)
        hist = [(float(ell[i]), d0), *hist[: order - 1]]
        if float(sig[i + 1]) == 0.0:
            x = d0
            continue
        h = float(ell[i + 1] - ell[i])
        j0, j1, j2 = kernel_moments(h, 1.0 + eta)
        q = min(order, len(hist), n - i) if lower_order_final else min(order, len(hist))
        x = float(sig[i + 1] / sig[i]) * math.exp(-eta * h) * x + j0 * d0
        if q >= 2:
            (l0, _), (l1, d1) = hist[0], hist[1]
            dd01 = (d0 - d1) / (l0 - l1)
            x = x + (0.5 * h * j0 if q == 2 and solver_type == "midpoint" else j1) * dd01
        if q >= 3:
            l2, d2 = hist[2]
            dd012 = (dd01 - (d1 - d2) / (l1 - l2)) / (l0 - l2)
            x = x + (j2 + (l0 - l1) * j1) * dd012
        if eta > 0:
            noise_std = s_noise * float(sig[i + 1]) * math.sqrt(-math.expm1(-2.0 * eta * h))
            x = x + noise_std * noise_like(x, generator)
    return x


@torch.no_grad()
def dpmpp_2m(
    denoiser: Denoiser,
    x: torch.Tensor,
    levels: Levels,
    *,
    solver_type: str = "midpoint",
    lower_order_final: bool = True,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DPM-Solver++(2M), deterministic: second order, ``N`` evaluations."""
    return _multistep(
        denoiser, x, levels, order=2, eta=0.0, solver_type=solver_type,
        lower_order_final=lower_order_final, s_noise=1.0, generator=generator, progress=progress,
        name="dpm++2m",
    )


@torch.no_grad()
def dpmpp_3m(
    denoiser: Denoiser,
    x: torch.Tensor,
    levels: Levels,
    *,
    eta: float = 0.0,
    lower_order_final: bool = True,
    s_noise: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DPM-Solver++(3M): the quadratic through the last three ``x0_hat`` integrated exactly; third
    order for ``eta = 0`` (the default), ``N`` evaluations. ``eta > 0`` is the 3M SDE variant."""
    return _multistep(
        denoiser, x, levels, order=3, eta=eta, solver_type="heun",
        lower_order_final=lower_order_final, s_noise=s_noise, generator=generator, progress=progress,
        name="dpm++3m",
    )


@torch.no_grad()
def dpmpp_2m_sde(
    denoiser: Denoiser,
    x: torch.Tensor,
    levels: Levels,
    *,
    eta: float = 1.0,
    solver_type: str = "midpoint",
    s_noise: float = 1.0,
    lower_order_final: bool = True,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """SDE-DPM-Solver++(2M): ``eta = 1`` (default) injects the reverse SDE's noise, whose first-order
    step is ancestral sampling; ``s_noise`` scales the injected noise. ``N`` evaluations."""
    return _multistep(
        denoiser, x, levels, order=2, eta=eta, solver_type=solver_type,
        lower_order_final=lower_order_final, s_noise=s_noise, generator=generator, progress=progress,
        name="dpm++2m-sde",
    )
