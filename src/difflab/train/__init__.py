"""Training: the loop, the EMA of the weights, atomic checkpoints, data-parallel runs."""

from .checkpoint import (
    atomic_write,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from .distributed import DistContext
from .ema import EMA
from .logs import read_log
from .trainer import Trainer, TrainingError, check_config, lr_factor

__all__ = [
    "EMA",
    "DistContext",
    "Trainer",
    "TrainingError",
    "atomic_write",
    "check_config",
    "checkpoint_path",
    "list_checkpoints",
    "load_checkpoint",
    "load_weights",
    "lr_factor",
    "read_log",
    "save_checkpoint",
]
