"""Samplers: pure functions of ``(denoiser, x_T, levels)`` returning ``x_0``.

Every sampler has the signature ``f(denoiser, x, levels, *, generator=None, progress=False, **options)``
and reads its noise levels from the one :class:`Levels` list (the step after the last level lands on
the data). ``steps`` (the length of that list) is not the number of network evaluations (NFE):

==============  ==========================  =================================================
sampler         NFE for ``N`` levels        family
==============  ==========================  =================================================
ancestral       N                           DDPM Algorithm 2 (:mod:`.ddpm`)
ddim            N                           DDIM, ``eta`` (:mod:`.ddpm`)
euler           N                           probability-flow ODE, 1st order (:mod:`.edm`)
heun            2N - 1                      EDM Algorithm 2, 2nd order, churn (:mod:`.edm`)
dpm++2m         N                           DPM-Solver++(2M) (:mod:`.dpmsolver`)
dpm++3m         N                           DPM-Solver++(3M) (:mod:`.dpmsolver`)
dpm++2m-sde     N                           SDE-DPM-Solver++(2M), ``eta = 1`` (:mod:`.dpmsolver`)
pc              N (corrector_steps + 1)     score-SDE predictor-corrector (:mod:`.score_sde`)
langevin        N n_steps_each (+1)         NCSN annealed Langevin (:mod:`.score_sde`)
ode             adaptive (+1)               RK45 on the probability-flow ODE (:mod:`.ode`)
unipc           N                           UniPC, orders 1-3, B1/B2(h) (:mod:`.unipc`)
deis            N                           AB-DEIS, orders 1-3 (:mod:`.deis`)
ipndm           N                           iPNDM, orders 1-4 (:mod:`.ipndm`)
dpm++2s         2N - 1                      DPM-Solver++(2S) (:mod:`.singlestep`)
dpm++3s         3N - 2                      DPM-Solver++(3S) (:mod:`.singlestep`)
dpm-adaptive    adaptive (+1)               DPM-Solver-12/23, error-controlled (:mod:`.adaptive`)
restart         2N - 1 + 2 K restart_steps  Restart sampling, Heun + K restarts (:mod:`.restart`)
==============  ==========================  =================================================
"""

from .adaptive import dpm_adaptive
from .ddpm import FIXED_VARIANCES, VARIANCES, ancestral, ddim
from .deis import deis
from .dpmsolver import dpmpp_2m, dpmpp_2m_sde, dpmpp_3m
from .edm import euler, heun
from .ipndm import ipndm
from .levels import (
    SPACINGS,
    Levels,
    make_levels,
    make_timesteps,
    time_of_log_snr,
    time_of_sigma_ve,
)
from .ode import ode
from .restart import restart
from .score_sde import langevin, pc
from .singlestep import dpmpp_2s, dpmpp_3s
from .unipc import unipc

SAMPLERS = {
    "ancestral": ancestral,
    "ddim": ddim,
    "euler": euler,
    "heun": heun,
    "dpm++2m": dpmpp_2m,
    "dpm++3m": dpmpp_3m,
    "dpm++2m-sde": dpmpp_2m_sde,
    "pc": pc,
    "langevin": langevin,
    "ode": ode,
    "unipc": unipc,
    "deis": deis,
    "ipndm": ipndm,
    "dpm++2s": dpmpp_2s,
    "dpm++3s": dpmpp_3s,
    "dpm-adaptive": dpm_adaptive,
    "restart": restart,
}

#: The spacing ``GaussianDiffusion.sample`` uses when ``spacing=None``, and why:
DEFAULT_SPACING = {
    # the papers' own choice: DDPM walks every integer step, DDIM strides evenly through them
    "ancestral": "uniform",
    "ddim": "uniform",
    # EDM (Karras et al. 2022, eq. 5, rho = 7): short steps near the data, where the ODE's curvature
    # (and the truncation error of a fixed-order step) is largest
    "euler": "edm",
    "heun": "edm",
    # exponential integrators step in the log-SNR; equal steps h make the multistep ratios 1 and are
    # DPM-Solver's recommendation for pixel-space models
    "dpm++2m": "logsnr",
    "dpm++3m": "logsnr",
    "dpm++2m-sde": "logsnr",
    # the score-SDE paper discretises its reverse SDE on an even time grid
    "pc": "uniform",
    # NCSN's geometric noise sequence (evenly spaced in log sigma~ = -lambda/2)
    "langevin": "logsnr",
    # only the first and last levels are used: any spacing gives the same answer
    "ode": "logsnr",
    # measured (bench/samplers_peers.py, docs/samplers.md): the spacing with the smallest geometric-mean
    # error relative to the best peer (diffusers, k-diffusion) over 5-20 NFE on the 64-D anisotropic
    # Gaussian and the 2-D mixture, each sampler with its default options (chosen the same way).
    # UniPC (data prediction, B2(h)): quadratic, chosen on trained networks. On the oracles logsnr-jump
    # (the top level, then equal log-SNR steps from sigma~ = 10) is 2-8x more accurate than the best
    # peer at 14-20 NFE on the Gaussian and 1.7-3.4x on the mixture, where quadratic steps are 0.8-0.9x /
    # 2-4x; but on a trained network the one step above sigma~ = 10 is never refined: FD at 10 / 15 / 20
    # NFE on the digits DDPM 7.12 / 4.38 / 4.10 on quadratic, 5.63 / 4.66 / 4.12 on logsnr, - / 4.71 /
    # 4.55 on logsnr-jump; on the digits flow model 1.67 / 1.45 / 1.55, 4.92 / 1.68 / 1.61, - / 1.68 / 1.64
    "unipc": "quadratic",
    # Quadratic steps, finer near the data than logsnr but coarser than edm, suit iPNDM's extrapolation
    # of the noise prediction (0.83x the best peer's error on that mean against 1.1-1.2x)
    "ipndm": "quadratic",
    # edm-jump: one step from the top level to sigma~ = 10, then EDM's rho = 7 ramp; AB-DEIS in log rho
    # extrapolates least across it (0.89x against 1.5x quadratic, 1.9x edm and logsnr)
    "deis": "edm-jump",
    # the singlestep methods: 2S quadratic (3.5x against 4.4x logsnr), 3S edm-jump (2.5x against 2.7x
    # quadratic); both trail the multistep ones at equal NFE (two or three calls a level)
    "dpm++2s": "quadratic",
    "dpm++3s": "edm-jump",
    # only the first and last levels are used: any spacing gives the same answer
    "dpm-adaptive": "logsnr",
    # Restart's main pass is EDM's Heun solver, on EDM's steps as in the paper
    "restart": "edm",
}

__all__ = [
    "DEFAULT_SPACING",
    "FIXED_VARIANCES",
    "SAMPLERS",
    "SPACINGS",
    "VARIANCES",
    "Levels",
    "ancestral",
    "ddim",
    "deis",
    "dpm_adaptive",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_2s",
    "dpmpp_3m",
    "dpmpp_3s",
    "euler",
    "heun",
    "ipndm",
    "langevin",
    "make_levels",
    "make_timesteps",
    "ode",
    "pc",
    "restart",
    "time_of_log_snr",
    "time_of_sigma_ve",
    "unipc",
]
