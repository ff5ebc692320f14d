"""DEIS: the diffusion exponential integrator sampler of Zhang & Chen (2022, "Fast Sampling of Diffusion
Models with Exponential Integrator"), its Adams-Bashforth form (AB-DEIS), orders 1-3.

In EDM's coordinates (:mod:`.ve`) the exponential integrator of the paper's eq. 11 has no linear part
left: with ``rho = sigma~ = sigma/alpha`` (the paper's ``rho``, sec. 4) and ``eps_hat = (x~ - x0_hat)/rho``,

    dx~/drho = eps_hat(x~, rho),     x~_{i+1} = x~_i + int_{rho_i}^{rho_{i+1}} eps_hat drho.

AB-DEIS (eq. 14-15) replaces ``eps_hat`` over the step by the Lagrange polynomial through the last
``q`` outputs in a time variable ``v`` and integrates it exactly against the step:

    x~_{i+1} = x~_i + sum_j C_ij eps_{i-j},   C_ij = int_{rho_i}^{rho_{i+1}} prod_{k != j}
                                                     (v(rho) - v_{i-k}) / (v_{i-j} - v_{i-k}) drho.

``basis="t"`` is the paper's tAB-DEIS (the polynomial in the model time ``t``), ``"rho"`` its rhoAB-DEIS,
``"log_rho"`` the polynomial in ``log rho`` (the half log-SNR, as in diffusers' DEIS). ``C_ij`` is
integrated numerically as in the paper (Gauss-Legendre in ``log rho``, exact to rounding for the
smooth integrands here). ``q = 1`` is DDIM for every basis. The first steps have fewer outputs and use
lower orders; with ``lower_order_final`` the ``q``-th step from the end uses order at most ``q``. The
step to the data is ``x~ = x0_hat``. ``N`` levels cost ``N`` evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..denoiser import Denoiser
from .ddpm import progress_iter
from .levels import Levels, time_of_sigma_ve
from .ve import VEDenoiser, check_choice, check_order

BASES = ("t", "rho", "log_rho")
QUADRATURE_NODES = 16
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(QUADRATURE_NODES)


def lagrange_integrals(
    nodes: list[float], u_from: float, u_to: float, variable: Callable[[np.ndarray], np.ndarray]
) -> list[float]:
    """``int_{e^u_from}^{e^u_to} L_j(v(rho)) drho`` for the Lagrange basis ``L_j`` on ``nodes`` (in ``v``),
    by Gauss-Legendre quadrature in ``u = log rho``; ``variable`` maps ``rho`` (numpy) to ``v``."""
    mid, half = 0.5 * (u_from + u_to), 0.5 * (u_to - u_from)
    u = mid + half * _NODES
    rho = np.exp(u)
    v = np.asarray(variable(rho), dtype=np.float64)
    out = []
    for j, vj in enumerate(nodes):
        basis = np.ones_like(v)
        for k, vk in enumerate(nodes):
            if k != j:
                basis = basis * (v - vk) / (vj - vk)
        out.append(float(half * np.sum(_WEIGHTS * basis * rho)))
    return out


def time_variable(basis: str, denoiser: Denoiser) -> Callable[[np.ndarray], np.ndarray]:
    """``v(rho)`` of ``basis`` on numpy arrays: the model time (through the denoiser's schedule),
    ``rho`` itself or ``log rho``."""
    if basis == "rho":
        return lambda rho: rho
    if basis == "log_rho":
        return np.log
    schedule = getattr(denoiser, "schedule", None)
    if schedule is None:
        raise ValueError("basis='t' needs the noise schedule to find model times: pass a difflab.Denoiser")
    return lambda rho: time_of_sigma_ve(schedule, torch.from_numpy(np.asarray(rho))).numpy()


@torch.no_grad()
def deis(
    denoiser: Denoiser,
    x: torch.Tensor,
    levels: Levels,
    *,
    order: int = 3,
    basis: str = "log_rho",
    lower_order_final: bool = False,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """AB-DEIS of ``order`` 1-3 with the Lagrange polynomial in ``basis`` (``"t"``: tAB-DEIS,
    ``"rho"``: rhoAB-DEIS, ``"log_rho"``); ``N`` evaluations. ``generator`` is accepted for a uniform
    signature (the sampler is deterministic). The defaults (order 3, ``log_rho``, no lowering of the
    order before the end) are the most accurate measured over 5-20 NFE (``docs/samplers.md``)."""
    check_order(order, (1, 2, 3))
    check_choice("basis", basis, BASES)
    variable = time_variable(basis, denoiser)
    ve = VEDenoiser(denoiser, levels)
    sig, n = ve.sigmas, len(levels)
    v_levels = levels.t if basis == "t" else (sig[:n] if basis == "rho" else torch.log(sig[:n]))
    x = ve.to_ve(x)
    outputs: list[tuple[float, torch.Tensor]] = []  # (v, eps_hat), newest first
    for i in progress_iter(range(n), n, progress, "deis"):
        x0 = ve.at_level(x, i)
        if float(sig[i + 1]) == 0.0:
            x = x0
            continue
        outputs = [(float(v_levels[i]), (x - x0) / float(sig[i])), *outputs[: order - 1]]
        q = min(order, len(outputs), n - i) if lower_order_final else min(order, len(outputs))
        if q == 1:
            coeffs = [float(sig[i + 1] - sig[i])]
        else:
            nodes = [v for v, _ in outputs[:q]]
            coeffs = lagrange_integrals(nodes, math.log(sig[i]), math.log(sig[i + 1]), variable)
        for c, (_, eps) in zip(coeffs, outputs):
            x = x + c * eps
    return x
