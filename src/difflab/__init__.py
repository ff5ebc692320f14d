"""difflab: denoising diffusion models, correct to the equation."""

from . import gaussian, oracles, processes, samplers, schedules
from .denoiser import Denoiser
from .interop import from_diffusers
from .processes import (
    EDMDiffusion,
    FlowMatching,
    GaussianDiffusion,
    Process,
    VDMDiffusion,
    VDMModel,
    VEDiffusion,
    VLBTerms,
)
from .processes.ddpm import bound as likelihood
from .processes.ddpm import objectives
from .schedules import DiscreteSchedule

__version__ = "0.1.0"

__all__ = [
    "Denoiser",
    "DiscreteSchedule",
    "EDMDiffusion",
    "FlowMatching",
    "GaussianDiffusion",
    "Process",
    "VDMDiffusion",
    "VDMModel",
    "VEDiffusion",
    "VLBTerms",
    "from_diffusers",
    "gaussian",
    "likelihood",
    "objectives",
    "oracles",
    "processes",
    "samplers",
    "schedules",
]
