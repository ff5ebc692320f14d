"""Every random-number state a training step may touch, captured and restored as one value.

A step's own randomness comes from the trainer's seeded ``torch.Generator``; the global states
(torch CPU, CUDA, numpy, python ``random``) are saved too, because a model may draw from them
(dropout uses torch's global generator) and a resumed run must repeat them exactly.

The captured value holds only tensors, ints, floats, strings, lists and dicts, so a checkpoint that
stores it loads with ``torch.load(..., weights_only=True)``: reading a checkpoint never runs code.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

__all__ = ["capture", "isolated", "restore", "restore_legacy"]


def _numpy_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _python_state() -> dict[str, Any]:
    version, internal, gauss_next = random.getstate()
    internal = torch.tensor(internal, dtype=torch.int64)
    return {"version": version, "internal": internal, "gauss_next": gauss_next}


def capture() -> dict[str, Any]:
    """The global RNG states of this process (CUDA only when CUDA has been initialised), as tensors
    and plain values."""
    state = {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": _python_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any]) -> None:
    """Put back what :func:`capture` returned (CUDA devices beyond those present are skipped)."""
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        s = state["numpy"]
        keys = s["keys"].numpy().astype(np.uint32)
        np.random.set_state((s["kind"], keys, s["pos"], s["has_gauss"], s["cached_gaussian"]))
    if "python" in state:
        s = state["python"]
        random.setstate((s["version"], tuple(int(v) for v in s["internal"].tolist()), s["gauss_next"]))
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


def restore_legacy(state: dict[str, Any]) -> None:
    """Put back RNG states as checkpoint formats 1 and 2 stored them (numpy's and python's own
    tuples); used only to upgrade a trusted old checkpoint."""
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "python" in state:
        random.setstate(state["python"])
