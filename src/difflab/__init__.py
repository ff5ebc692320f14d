"""difflab: denoising diffusion models, correct to the equation."""

from . import gaussian, likelihood, oracles, samplers, schedules
from .denoiser import Denoiser
from .diffusion import GaussianDiffusion
from .likelihood import VLBTerms
from .schedules import DiscreteSchedule

__version__ = "0.1.0"

__all__ = [
    "Denoiser",
    "DiscreteSchedule",
    "GaussianDiffusion",
    "VLBTerms",
    "gaussian",
    "likelihood",
    "oracles",
    "samplers",
    "schedules",
]
