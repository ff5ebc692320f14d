"""difflab: denoising diffusion models, correct to the equation."""

from . import gaussian, likelihood, objectives, oracles, samplers, schedules
from .denoiser import Denoiser
from .diffusion import GaussianDiffusion
from .interop import from_diffusers
from .likelihood import VLBTerms
from .schedules import DiscreteSchedule
from .vdm import VDMDiffusion, VDMModel

__version__ = "0.1.0"

__all__ = [
    "Denoiser",
    "DiscreteSchedule",
    "GaussianDiffusion",
    "VDMDiffusion",
    "VDMModel",
    "VLBTerms",
    "from_diffusers",
    "gaussian",
    "likelihood",
    "objectives",
    "oracles",
    "samplers",
    "schedules",
]
