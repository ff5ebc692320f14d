"""The training log: ``log.csv`` always, TensorBoard events when ``tensorboard`` is installed.

``log.csv`` has one row every ``log_every`` steps: the step (optimizer updates done), the mean loss
over the steps since the previous row, the learning rate of the last step, its gradient norm (before
clipping) and the training seconds so far. A resumed run appends to it; rows past the checkpoint's
step (written before a crash) are dropped first, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from .checkpoint import atomic_write

LOG_HEADER = ["step", "loss", "lr", "grad_norm", "seconds"]

__all__ = ["LOG_HEADER", "RunLog", "read_log"]


def _write_rows(path: str, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def read_log(run_dir: str | Path) -> list[dict[str, float]]:
    """The rows of ``RUN/log.csv`` as dicts of floats (``step`` as int)."""
    with open(Path(run_dir) / "log.csv", newline="") as fh:
        return [
            {k: (int(v) if k == "step" else float(v)) for k, v in row.items()}
            for row in csv.DictReader(fh)
        ]


class RunLog:
    """Open the logs of ``run_dir`` for a run that continues from ``step``."""

    def __init__(self, run_dir: str | Path, step: int, tensorboard: bool = True):
        self.path = Path(run_dir) / "log.csv"
        self._fh = self._open_csv(step)
        self._csv = csv.writer(self._fh)
        self._tb = self._open_tensorboard(Path(run_dir), step) if tensorboard else None

    def _open_csv(self, step: int):
        path = self.path
        if step > 0 and path.is_file():
            with open(path, newline="") as fh:
                rows = list(csv.reader(fh))
            if rows and rows[0] == LOG_HEADER:
                kept = [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
                if len(kept) != len(rows) - 1:
                    atomic_write(path, lambda tmp: _write_rows(tmp, [LOG_HEADER, *kept]))
                return open(path, "a", newline="")
            if rows:  # written by an older version with other columns: set it aside
                os.replace(path, path.with_name("log.old.csv"))
        fh = open(path, "w", newline="")
        csv.writer(fh).writerow(LOG_HEADER)
        return fh

    @staticmethod
    def _open_tensorboard(run_dir: Path, step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        # purge events a crashed run wrote after the checkpoint we continue from
        return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=step + 1)

    def write(self, step: int, loss: float, lr: float, grad_norm: float, seconds: float) -> None:
        self._csv.writerow([step, f"{loss:.9g}", f"{lr:.9g}", f"{grad_norm:.6g}", f"{seconds:.2f}"])
        self._fh.flush()
        if self._tb is not None:
            for key, value in (("loss", loss), ("lr", lr), ("grad_norm", grad_norm)):
                self._tb.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
