"""Every diffusion process of difflab, each in one place, all meeting one contract
(:mod:`difflab.processes.protocol`, written out in ``docs/conventions.md``).

=========== ============================================ ==========================================
process     class                                        where
=========== ============================================ ==========================================
``vp``      :class:`GaussianDiffusion` (DDPM's chain)    :mod:`difflab.processes.ddpm`
``vdm``     :class:`VDMDiffusion` (continuous time)      :mod:`difflab.processes.vdm`
``ve``      :class:`VEDiffusion` (NCSN / score SDE)      :mod:`difflab.processes.sigma`
``edm``     :class:`EDMDiffusion` (Karras et al. 2022)   :mod:`difflab.processes.sigma`
``flow``    :class:`FlowMatching` (rectified flow)       :mod:`difflab.processes.flow`
=========== ============================================ ==========================================
"""

from .base import ProcessBase
from .ddpm import GaussianDiffusion, Objective, VLBTerms
from .flow import FlowMatching, FlowSchedule
from .protocol import Process, has_bound
from .sigma import EDMDiffusion, EDMPrecond, Precond, SigmaDiffusion, SigmaSchedule, VEDiffusion, VEPrecond
from .vdm import VDMDiffusion, VDMModel

#: the names ``diffusion.process`` takes in a run's config
PROCESSES = ("vp", "ve", "edm", "vdm", "flow")

__all__ = [
    "PROCESSES",
    "EDMDiffusion",
    "EDMPrecond",
    "FlowMatching",
    "FlowSchedule",
    "GaussianDiffusion",
    "Objective",
    "Precond",
    "Process",
    "ProcessBase",
    "SigmaDiffusion",
    "SigmaSchedule",
    "VDMDiffusion",
    "VDMModel",
    "VEDiffusion",
    "VEPrecond",
    "VLBTerms",
    "has_bound",
]
