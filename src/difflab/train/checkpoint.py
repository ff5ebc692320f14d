"""Atomic checkpoints: a crash or ``kill -9`` never leaves a half-written file in place of a good one.

Layout of a run folder::

    RUN/checkpoint.pt                 the latest full training state (what ``resume()`` loads)
    RUN/checkpoints/step-000500.pt    step-numbered copies, only the newest ``keep`` are kept
    RUN/model.safetensors             EMA weights of the latest checkpoint, for sampling

Every file is written under a temporary name in its own folder, flushed to disk (``fsync``) and moved
over the target with ``os.replace``, which is atomic on POSIX and Windows; the folder is then
synced so the rename itself survives a power cut. ``checkpoint.pt`` is a hard link to the newest
step file, made under a temporary name and renamed into place the same way (a copy where the file
system has no hard links), so it is always either the previous or the new complete checkpoint.

Reading is safe: checkpoints hold only tensors and plain values (format 3; RNG states as tensors,
:mod:`difflab.train.rng`) and are loaded with ``torch.load(..., weights_only=True)``, which refuses
anything that could run code. A checkpoint from an older difflab (formats 1 and 2 pickled numpy RNG
states) is refused with a message; :func:`upgrade_checkpoint` (``difflab upgrade-checkpoint PATH``)
converts one the user trusts.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"
STEP_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step-(\d+)\.pt$")

__all__ = [
    "CHECKPOINT",
    "WEIGHTS",
    "atomic_write",
    "checkpoint_path",
    "list_checkpoints",
    "load_checkpoint",
    "load_weights",
    "remove_stale_temps",
    "save_checkpoint",
    "upgrade_checkpoint",
    "CheckpointError",
    "first_line",
    "read_checkpoint",
    "FORMAT",
]

FORMAT = 3  # checkpoints hold only tensors and plain values: weights_only loading


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be read safely or at all."""


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX only; Windows cannot open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_name(path: Path) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return tmp


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, fsync, then atomically move ``tmp_path`` to ``path``.

    If ``write`` raises (or the process dies) ``path`` keeps its previous content; the temporary
    file is removed on an exception (after a kill it is removed by :func:`remove_stale_temps`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _atomic_link(src: Path, dst: Path) -> None:
    """Make ``dst`` the same content as ``src`` atomically: a hard link, or a copy if links fail."""
    tmp = _temp_name(dst)
    os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        atomic_write(dst, lambda t: shutil.copyfile(src, t))
        return
    try:
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(dst.parent)


def step_file(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / STEP_DIR / f"step-{step:06d}.pt"


def list_checkpoints(run_dir: str | Path) -> dict[int, Path]:
    """The step-numbered checkpoints of a run folder, ``{step: path}`` in increasing step order."""
    folder = Path(run_dir) / STEP_DIR
    found = {}
    if folder.is_dir():
        for p in folder.iterdir():
            m = _STEP_RE.match(p.name)
            if m and p.is_file():
                found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def remove_stale_temps(run_dir: str | Path) -> list[Path]:
    """Delete temporary checkpoint files a killed writer left behind; returns what was removed."""
    run_dir = Path(run_dir)
    stale = [
        *run_dir.glob(f".{CHECKPOINT}.*.tmp"),
        *run_dir.glob(f".{WEIGHTS}.*.tmp"),
        *(run_dir / STEP_DIR).glob(".step-*.pt.*.tmp"),
    ]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def save_checkpoint(
    run_dir: str | Path,
    state: dict[str, Any],
    weights: dict[str, torch.Tensor],
    step: int | None = None,
    keep: int = 0,
) -> Path:
    """Write the training ``state`` and the sampling ``weights`` (safetensors) atomically.

    With ``step`` and ``keep > 0`` the state goes to ``checkpoints/step-XXXXXX.pt``, ``checkpoint.pt``
    is pointed at it, and only the newest ``keep`` step files at or before ``step`` are kept (files of
    later steps, left by a run that was resumed from an earlier step, stay until overwritten).
    Otherwise only ``checkpoint.pt`` is written. Returns the path of the latest checkpoint.
    """
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    latest = run_dir / CHECKPOINT
    if step is not None and keep > 0:
        numbered = step_file(run_dir, step)
        atomic_write(numbered, lambda tmp: torch.save(state, tmp))
        _atomic_link(numbered, latest)
    else:
        atomic_write(latest, lambda tmp: torch.save(state, tmp))
    flat = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    atomic_write(run_dir / WEIGHTS, lambda tmp: save_file(flat, tmp))
    if step is not None:
        older = [p for s, p in list_checkpoints(run_dir).items() if s <= step]
        for p in older[: max(0, len(older) - keep)]:
            p.unlink(missing_ok=True)
    return latest


def checkpoint_path(run_dir: str | Path, which: str | int | Path = "latest") -> Path:
    """Resolve ``which``: ``"latest"``, a step number (``500`` or ``"500"``) or a checkpoint file."""
    run_dir = Path(run_dir)
    if isinstance(which, bool):
        raise ValueError(f"checkpoint must be 'latest', a step number or a path, got {which!r}")
    if isinstance(which, str) and which.strip().isdigit():
        which = int(which)
    if isinstance(which, int):
        path = step_file(run_dir, which)
        if not path.is_file():
            steps = list(list_checkpoints(run_dir))
            raise FileNotFoundError(
                f"no checkpoint of step {which} in {run_dir / STEP_DIR}; available steps: "
                f"{', '.join(map(str, steps)) or 'none'}"
            )
        return path
    if which == "latest":
        path = run_dir / CHECKPOINT
        numbered = list_checkpoints(run_dir)
        if not path.is_file() and numbered:  # killed between a step file and its link, or deleted
            return numbered[max(numbered)]
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}; train a model there first")
        return path
    path = Path(which)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(which)!r} is neither 'latest', a step number nor an existing file"
        )
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load one checkpoint file onto the CPU without running code (``weights_only=True``).

    Raises :class:`CheckpointError` with one line for a file that is not a checkpoint, is cut short or
    damaged, or holds objects beyond tensors and plain values (an older difflab's format, or a file
    not written by difflab)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc) or "allowed global" in str(exc):  # a class or function
            raise CheckpointError(
                f"checkpoint {path} holds Python objects beyond tensors and plain values, so loading it "
                "could run code; difflab before checkpoint format 3 wrote such files. If you trust where "
                f"it came from, convert it once with `difflab upgrade-checkpoint {path}`"
            ) from None
        raise CheckpointError(f"checkpoint {path} is damaged ({first_line(exc)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is damaged or not a checkpoint ({type(exc).__name__}: {first_line(exc)})"
        ) from None
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise CheckpointError(f"{path} is not a difflab training checkpoint (no step / model entries)")
    return state


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, at most 200 characters."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def load_checkpoint(run_dir: str | Path, which: str | int | Path = "latest") -> dict[str, Any]:
    """Load a checkpoint (see :func:`checkpoint_path` for ``which``) onto the CPU, safely
    (:func:`read_checkpoint`)."""
    return read_checkpoint(checkpoint_path(run_dir, which))


def upgrade_checkpoint(path: str | Path) -> Path:
    """Rewrite a trusted checkpoint of an older format (1 or 2) as format 3, in place and atomically.

    This is the one place difflab unpickles arbitrary objects (``weights_only=False``): call it only on
    a file you trust. Returns the path."""
    from . import rng

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"cannot read {path}: {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a difflab training checkpoint")

    def convert(old: Any) -> dict[str, Any]:
        if old is None:
            return old
        import random as pyrandom

        import numpy as np

        saved = (np.random.get_state(), pyrandom.getstate(), torch.get_rng_state())
        try:
            rng.restore_legacy(old)
            return rng.capture()
        finally:
            np.random.set_state(saved[0])
            pyrandom.setstate(saved[1])
            torch.set_rng_state(saved[2])

    if "torch_rng" in state and "rng" not in state:  # format 1
        state["rng"] = {"torch": state.pop("torch_rng")}
    state["rng"] = convert(state.get("rng"))
    state["rng_per_rank"] = [convert(r) for r in state.get("rng_per_rank") or []]
    state["format"] = FORMAT
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    read_checkpoint(path)  # what it must now be
    return path


def load_weights(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The EMA weights ``RUN/model.safetensors`` (safetensors: reading never runs code)."""
    from safetensors.torch import load_file

    path = Path(run_dir) / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}; train a model there first")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error type for damaged files
        raise CheckpointError(f"weights file {path} is damaged ({first_line(exc)}); "
                              "re-train or restore it from a checkpoint") from None
