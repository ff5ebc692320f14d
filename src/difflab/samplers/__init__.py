"""Samplers: pure functions of ``(denoiser, x_T, levels)`` returning ``x_0``."""

from .ddpm import VARIANCES, ancestral, ddim
from .levels import SPACINGS, Levels, make_levels, make_timesteps

SAMPLERS = {"ancestral": ancestral, "ddim": ddim}

__all__ = [
    "SAMPLERS",
    "SPACINGS",
    "VARIANCES",
    "Levels",
    "ancestral",
    "ddim",
    "make_levels",
    "make_timesteps",
]
