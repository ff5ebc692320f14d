"""Singlestep DPM-Solver++ (Lu et al. 2022, "DPM-Solver++", Algorithm 1 "2S"; the third-order "3S" is
DPM-Solver-3 of Lu et al. 2022, "DPM-Solver", Algorithm 2, in the data-prediction form of DPM-Solver++).

In EDM's coordinates (:mod:`.ve`) with ``lambda = -log sigma~`` the exact step ``lambda -> lambda + h`` is

    x~(lambda + h) = e^-h x~ + int_0^h e^(tau - h) D(lambda + tau) dtau              (DPM-Solver++ eq. 9).

A singlestep method of order ``k`` evaluates ``D`` at ``k - 1`` intermediate points ``lambda + r h`` of
the step itself (first- and second-order steps to them) and integrates the resulting polynomial in
``tau`` exactly, with ``J_n = int_0^h e^(tau-h) tau^n dtau`` (:func:`.dpmsolver.kernel_moments`):

* 2S: ``u = e^(-r1 h) x~ + J_0(r1 h) D_0``, ``D_1 = D(u)``;
  ``x~' = e^-h x~ + J_0 D_0 + c (D_1 - D_0)`` with ``c = J_0/(2 r1)`` (``solver_type="midpoint"``, the
  paper's Algorithm 1) or ``c = J_1/(r1 h)`` (``"heun"``: the linear ``D`` integrated exactly);
* 3S: ``u_2 = e^(-r2 h) x~ + J_0(r2 h) D_0 + J_1(r2 h) (D_1 - D_0)/(r1 h)``, ``D_2 = D(u_2)``;
  ``x~' = e^-h x~ + J_0 D_0 + J_1 (D_2 - D_0)/(r2 h)`` (``"midpoint"``, the paper's) or, with the
  quadratic through ``D_0, D_1, D_2`` (``"heun"``), ``+ J_1 D' + J_2 D''/2``.

``solver_type="heun"`` is the default of both: it measured more accurate than the papers' form on
average over 5-20 NFE on the oracles of ``docs/samplers.md``. The intermediate points lie between the
listed levels: the model is evaluated at their model times (``VEDenoiser.at_sigma``). Defaults
``r1 = 1/2`` (2S) and ``r1, r2 = 1/3, 2/3`` (3S) as in the papers. The step to the data is
``x~ = x0_hat``, so ``N`` levels cost ``2N - 1`` (2S) or ``3N - 2`` (3S) evaluations.
"""

from __future__ import annotations

import math

import torch

from ..denoiser import Denoiser
from .ddpm import progress_iter
from .dpmsolver import SOLVER_TYPES, kernel_moments
from .levels import Levels
from .ve import VEDenoiser, check_choice


def first_order_step(x: torch.Tensor, h: float, d0: torch.Tensor) -> torch.Tensor:
    """DPM-Solver++-1 (DDIM): ``e^-h x~ + (1 - e^-h) D_0``."""
    return math.exp(-h) * x - math.expm1(-h) * d0


def second_order_step(
    ve: VEDenoiser, x: torch.Tensor, ell: float, h: float, d0: torch.Tensor, r1: float,
    solver_type: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """2S from ``(x~, lambda)`` over ``h``: the new ``x~``, and ``D_1`` at ``lambda + r1 h`` (one call)."""
    d1 = ve.at_sigma(first_order_step(x, r1 * h, d0), math.exp(-(ell + r1 * h)))
    j0, j1, _ = kernel_moments(h, 1.0)
    c = 0.5 * j0 / r1 if solver_type == "midpoint" else j1 / (r1 * h)
    return first_order_step(x, h, d0) + c * (d1 - d0), d1


def third_order_step(
    ve: VEDenoiser, x: torch.Tensor, ell: float, h: float, d0: torch.Tensor, d1: torch.Tensor,
    r1: float, r2: float, solver_type: str,
) -> torch.Tensor:
    """3S from ``(x~, lambda)`` over ``h`` given ``D_1`` at ``lambda + r1 h`` (one more evaluation)."""
    _, j1_r2, _ = kernel_moments(r2 * h, 1.0)
    u2 = first_order_step(x, r2 * h, d0) + (j1_r2 / (r1 * h)) * (d1 - d0)
    d2 = ve.at_sigma(u2, math.exp(-(ell + r2 * h)))
    _, j1, j2 = kernel_moments(h, 1.0)
    x_next = first_order_step(x, h, d0)
    if solver_type == "midpoint":
        return x_next + (j1 / (r2 * h)) * (d2 - d0)
    q1, q2 = (d1 - d0) / r1, (d2 - d0) / r2  # divided differences, times h
    slope = (r2 * q1 - r1 * q2) / ((r2 - r1) * h)  # D'
    curvature = 2.0 * (q2 - q1) / ((r2 - r1) * h * h)  # D''
    return x_next + j1 * slope + 0.5 * j2 * curvature


def check_ratios(*ratios: float) -> None:
    """Intermediate points must lie inside the step, in increasing order."""
    bounds = [0.0, *ratios, 1.0]
    if any(isinstance(r, bool) or not isinstance(r, (int, float)) for r in ratios) or not all(
        a < b for a, b in zip(bounds, bounds[1:])
    ):
        names = ", ".join(f"r{k + 1}" for k in range(len(ratios)))
        raise ValueError(f"{names} must satisfy 0 < {' < '.join(names.split(', '))} < 1, got {ratios}")


def _singlestep(
    denoiser: Denoiser, x: torch.Tensor, levels: Levels, *, order: int, r1: float, r2: float,
    solver_type: str, progress: bool, name: str,
) -> torch.Tensor:
    check_choice("solver_type", solver_type, SOLVER_TYPES)
    if order == 2:
        check_ratios(r1)
    else:
        check_ratios(r1, r2)
    ve = VEDenoiser(denoiser, levels)
    sig, n = ve.sigmas, len(levels)
    ell = -torch.log(sig[:n])
    x = ve.to_ve(x)
    for i in progress_iter(range(n), n, progress, name):
        d0 = ve.at_level(x, i)
        if float(sig[i + 1]) == 0.0:
            x = d0
            continue
        h, l0 = float(ell[i + 1] - ell[i]), float(ell[i])
        x_two, d1 = second_order_step(ve, x, l0, h, d0, r1, solver_type)
        x = x_two if order == 2 else third_order_step(ve, x, l0, h, d0, d1, r1, r2, solver_type)
    return x


@torch.no_grad()
def dpmpp_2s(
    denoiser: Denoiser,
    x: torch.Tensor,
    levels: Levels,
    *,
    r1: float = 0.5,
    solver_type: str = "heun",
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DPM-Solver++(2S): second order, ``2N - 1`` evaluations (``r1``: the intermediate point's share of
    each step in ``lambda``). ``generator`` is accepted for a uniform signature."""
    return _singlestep(denoiser, x, levels, order=2, r1=r1, r2=1.0, solver_type=solver_type,
                       progress=progress, name="dpm++2s")


@torch.no_grad()
def dpmpp_3s(
    denoiser: Denoiser,
    x: torch.Tensor,
    levels: Levels,
    *,
    r1: float = 1 / 3,
    r2: float = 2 / 3,
    solver_type: str = "heun",
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DPM-Solver++(3S): third order, ``3N - 2`` evaluations. ``generator`` is accepted for a uniform
    signature."""
    return _singlestep(denoiser, x, levels, order=3, r1=r1, r2=r2, solver_type=solver_type,
                       progress=progress, name="dpm++3s")
