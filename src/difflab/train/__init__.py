"""Training: the loop, the EMA of the weights, atomic checkpoints."""

from .checkpoint import atomic_write, load_checkpoint, load_weights, save_checkpoint
from .ema import EMA
from .trainer import Trainer, TrainingError

__all__ = [
    "EMA",
    "Trainer",
    "TrainingError",
    "atomic_write",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
]
