"""Variational Diffusion Models in continuous time (Kingma et al. 2021): the process and its bound,
its log-SNR schedules (fixed or the learned monotone network) and the network that carries one."""

from .diffusion import VDMBound, VDMDiffusion
from .model import VDMModel, find_vdm_model
from .schedule import ContinuousScheduleView, LogSNRSchedule, make_schedule

__all__ = [
    "ContinuousScheduleView",
    "LogSNRSchedule",
    "VDMBound",
    "VDMDiffusion",
    "VDMModel",
    "find_vdm_model",
    "make_schedule",
]
