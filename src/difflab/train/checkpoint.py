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

Checkpoints are pickles (they hold optimizer and RNG states): load only files you wrote yourself.
"""

from __future__ import annotations

import os
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
]


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


def load_checkpoint(run_dir: str | Path, which: str | int | Path = "latest") -> dict[str, Any]:
    """Load a checkpoint (see :func:`checkpoint_path` for ``which``) onto the CPU."""
    return torch.load(checkpoint_path(run_dir, which), map_location="cpu", weights_only=False)


def load_weights(run_dir: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(run_dir) / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}; train a model there first")
    return load_file(str(path))
