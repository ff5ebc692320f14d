"""Every random-number state a training step may touch, captured and restored as one value.

A step's own randomness comes from the trainer's seeded ``torch.Generator``; the global states
(torch CPU, CUDA, numpy, python ``random``) are saved too, because a model may draw from them
(dropout uses torch's global generator) and a resumed run must repeat them exactly.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

__all__ = ["capture", "isolated", "restore"]


def capture() -> dict[str, Any]:
    """The global RNG states of this process (CUDA only when CUDA has been initialised)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any]) -> None:
    """Put back what :func:`capture` returned (CUDA devices beyond those present are skipped)."""
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "python" in state:
        random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


@contextmanager
def isolated(device: torch.device | str = "cpu"):
    """Run a block (a sampling callback, say) without moving any RNG the training depends on."""
    device = torch.device(device)
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
