"""Interoperability with the models users already have: Hugging Face diffusers folders in
(:func:`from_diffusers`) and difflab U-Net runs out (:func:`export_diffusers`). ``diffusers`` itself is
needed only to load a diffusers model (``pip install 'difflab[diffusers]'``); the export writes plain
JSON and safetensors."""

from .diffusers_in import DiffusersUNet, from_diffusers, is_diffusers_folder
from .schedule_map import diffusers_timesteps, map_scheduler, scheduler_config_for

__all__ = [
    "DiffusersUNet",
    "diffusers_timesteps",
    "from_diffusers",
    "is_diffusers_folder",
    "map_scheduler",
    "scheduler_config_for",
]
