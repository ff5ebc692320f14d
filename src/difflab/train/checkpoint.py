"""Atomic checkpoints: a crash or kill never leaves a half-written file in place of the last good one.

Each file is written to a temporary name in the same folder, flushed to disk and moved over the
target with ``os.replace`` (atomic on POSIX and Windows). Weights are also exported as safetensors.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, fsync, then atomically move ``tmp_path`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(run_dir: str | Path, state: dict[str, Any], weights: dict[str, torch.Tensor]) -> Path:
    """Write ``checkpoint.pt`` (full training state) and ``model.safetensors`` (weights for sampling)."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    atomic_write(run_dir / CHECKPOINT, lambda tmp: torch.save(state, tmp))
    flat = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    atomic_write(run_dir / WEIGHTS, lambda tmp: save_file(flat, tmp))
    return run_dir / CHECKPOINT


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train a model there first")
    return torch.load(path, map_location="cpu", weights_only=False)


def load_weights(run_dir: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(run_dir) / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}; train a model there first")
    return load_file(str(path))
