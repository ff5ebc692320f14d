"""The rules of a run folder (``docs/runs.md``): one writer at a time, nothing overwritten by accident,
and evaluation only on the data the run was trained on.

* :class:`RunLock` -- ``RUN/.lock``, held with ``flock`` for as long as ``difflab train`` runs. The
  kernel drops the lock when its process dies, so a lock file that still names a process nobody
  holds it for was left by a killed run: it is taken over, with a message naming that process. A run
  that ends normally leaves the file empty.
* :func:`holds_run` / :func:`clear_run` -- a fresh ``train`` refuses a folder that holds a run unless
  told ``--overwrite``, which removes only the files a run writes.
* :func:`check_split` -- the data a command loads must be the data recorded in ``RUN/split.json``
  (same source, shape, grid, split and SHA-256); otherwise the command refuses, naming what changed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

try:  # POSIX; elsewhere the lock degrades to the lock file alone
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LOCK = ".lock"
# what `difflab train` and the commands after it write into a run folder (removed by --overwrite)
RUN_FILES = (
    "checkpoint.pt", "checkpoints", "model.safetensors", "config.toml", "split.json", "log.csv",
    "log.old.csv", "train.json", "metrics.json", "samples.npy", "samples.png", "samples.json",
    "forward.png", "reverse.png", "vlb.png", "grids", "tensorboard", "report.html",
)
# what marks a folder as holding a run
RUN_MARKERS = ("checkpoint.pt", "checkpoints", "model.safetensors", "config.toml", "log.csv")
SPLIT_KEYS = ("dataset", "path", "n", "shape", "bins", "classes", "seed", "test_fraction", "test_indices",
              "data_sha256")

__all__ = ["LOCK", "RUN_FILES", "RunFolderError", "RunLock", "check_split", "clear_run", "holds_run"]


class RunFolderError(ValueError):
    """A run folder that is in use, holds another run, or does not match the data."""


def holds_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds (part of) a trained run."""
    run_dir = Path(run_dir)
    return any((run_dir / name).exists() for name in RUN_MARKERS)


def clear_run(run_dir: str | Path) -> list[str]:
    """Remove the files a run writes (:data:`RUN_FILES`) from ``run_dir``; other files stay. Returns
    the names removed."""
    run_dir, removed = Path(run_dir), []
    for name in RUN_FILES:
        p = run_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Exclusive use of a run folder by one training process (``with RunLock(run): ...``).

    Raises :class:`RunFolderError` when another live process holds it. ``on_message`` receives the
    line said when a stale lock is taken over."""

    def __init__(self, run_dir: str | Path, on_message=print):
        self.path = Path(run_dir) / LOCK
        self.on_message = on_message
        self._fd: int | None = None

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        holder = self._holder() if self.path.exists() else None  # non-empty: a run held it
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                who = self._holder()
                raise RunFolderError(
                    f"run folder {self.path.parent} is in use by process {who.get('pid', '?')} on "
                    f"{who.get('host', '?')} (since {who.get('started', '?')}); wait for it to finish or "
                    "stop it, or train into another folder"
                ) from None
        elif holder and holder.get("host") == socket.gethostname() and _pid_alive(int(holder.get("pid", 0))):
            os.close(fd)  # pragma: no cover - no flock on this platform
            raise RunFolderError(f"run folder {self.path.parent} is in use by process {holder['pid']}")
        if holder:  # the file was there but nobody holds it: its process died without cleaning up
            self.on_message(
                f"taking over the stale lock of {self.path.parent} left by process {holder.get('pid', '?')} "
                f"on {holder.get('host', '?')} (started {holder.get('started', '?')}; no longer running)"
            )
        now = time.strftime("%Y-%m-%d %H:%M:%S")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": now}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:  # emptied, not removed: removing it could let two processes lock two different files
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_split(run_dir: str | Path, info: dict[str, Any]) -> None:
    """Refuse data that differ from what ``RUN/split.json`` recorded at training time, naming the
    fields that changed (the data's SHA-256 catches any changed pixel or label order)."""
    path = Path(run_dir) / "split.json"
    if not info or not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except ValueError as exc:
        raise RunFolderError(f"{path} is not valid JSON ({exc}); it records the run's data split") from None
    changed = [k for k in SPLIT_KEYS if k in saved and k in info and saved[k] != info[k]]
    if changed:
        detail = ", ".join(
            k if k in ("test_indices", "data_sha256", "classes") else f"{k} {saved[k]!r} -> {info[k]!r}"
            for k in changed
        )
        raise RunFolderError(
            f"the data differ from those {run_dir} was trained on ({detail}); evaluate on the recorded "
            "data or train a new run"
        )
