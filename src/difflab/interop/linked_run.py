"""Run folders for diffusers models: where ``difflab sample | eval --run DIFFUSERS_FOLDER`` writes.

A diffusers folder is never written to. Its results go to an output folder, ``--out OUT`` or by
default ``runs/from-diffusers/<folder name>`` under the current directory, which looks like a run
folder to every job (``config.toml``: the mapped process, the model's classes and the data named
with ``--data``) and holds ``diffusers.json``, the link to the model folder and the scheduler mapping.
:func:`difflab.runs.load_run` sees that link and loads the model from the diffusers folder through
:func:`load_linked_run`; samples, ``metrics.json``, strips and reports then live in OUT as for a run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from .. import config as config_mod
from ..config import Config
from ..runs.build import IMAGE_DATA, Splits, build_splits
from .diffusers_in import from_diffusers, is_diffusers_folder, locate
from .schedule_map import map_scheduler

LINK = "diffusers.json"
DEFAULT_ROOT = Path("runs") / "from-diffusers"
NAMED_DATA = tuple(n for n in IMAGE_DATA if n not in ("folder", "array"))


def is_linked_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` is an output folder of a diffusers model (it holds ``diffusers.json``)."""
    return (Path(run_dir) / LINK).is_file()


def data_config(spec: str, image_size: int) -> config_mod.DataConfig:
    """``--data``: a bundled data set (``digits``, ``mnist``), an image folder (resized to the model's
    ``image_size``) or a ``.npy`` / ``.npz`` array file."""
    if spec in NAMED_DATA:
        return config_mod.DataConfig(name=spec)
    p = Path(spec)
    if p.is_dir():
        return config_mod.DataConfig(name="folder", path=str(p.resolve()), image_size=image_size)
    if p.is_file() and p.suffix in (".npy", ".npz"):
        return config_mod.DataConfig(name="array", path=str(p.resolve()))
    raise ValueError(
        f"--data {spec!r} is neither a data set ({', '.join(NAMED_DATA)}), an image folder nor a "
        ".npy/.npz file"
    )


def resolve_run(run: str, out: str | None = None, data: str | None = None, needs_data: bool = False) -> str:
    """The run folder the jobs read for ``--run run``: ``run`` itself for a difflab run, or the output
    folder of a diffusers folder, (re)linked with :func:`link` to record ``data``; with ``needs_data``
    (evaluation) a one-line error when no data was ever named."""
    if not is_diffusers_folder(run):
        if out is not None or data is not None:
            raise ValueError(
                f"--out and --data apply to a diffusers folder; {run} is a difflab run (its data and "
                "outputs are its own)"
            )
        return run
    out_dir = Path(out) if out else DEFAULT_ROOT / Path(run).resolve().name
    link(run, out_dir, data)
    if needs_data and json.loads((out_dir / LINK).read_text()).get("data") is None:
        raise ValueError(
            f"name the data this diffusers model is scored on: --data {'|'.join(NAMED_DATA)}|FOLDER|FILE.npy"
        )
    return str(out_dir)


def link(source: str | Path, out_dir: str | Path, data: str | None = None) -> Path:
    """Make (or update) ``out_dir`` the output folder of the diffusers folder ``source``; ``data`` names
    the data the bound and the Fréchet distance read (kept from an earlier call when ``None``)."""
    source, out_dir = Path(source).resolve(), Path(out_dir)
    target = out_dir.resolve()
    if target == source or source in target.parents:
        raise ValueError(
            f"--out {out_dir} lies inside the diffusers folder {source}; name a folder outside it"
        )
    old: dict[str, Any] = json.loads((out_dir / LINK).read_text()) if is_linked_run(out_dir) else {}
    if old and Path(old["source"]) != source:
        raise ValueError(f"{out_dir} holds results of {old['source']}; name another --out for {source}")
    if not old and out_dir.is_dir() and any(out_dir.iterdir()):
        raise ValueError(f"--out {out_dir} is a non-empty folder that is not an output of a diffusers model")
    parts = locate(source)
    _, mapping = map_scheduler(json.loads(parts.scheduler_config.read_text()))
    unet = parts.unet_config()
    data = data if data is not None else old.get("data")
    size = unet.get("sample_size") or 0
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", source.name).strip(".-_").replace("..", ".") or "diffusers"
    cfg = Config(name=name[:128])  # a valid run name (config.check_name), whatever the folder is called
    if data is not None:
        cfg.data = data_config(data, size if isinstance(size, int) else int(size[0]))
    cfg.model = config_mod.ModelConfig(
        kind="unet",
        num_classes=int(unet.get("num_class_embeds") or 0),
        learn_sigma=mapping.variance == "learned",
        channel_mult=[],
        attention_resolutions=[],
    )
    cfg.diffusion = config_mod.DiffusionConfig(
        process="vp",
        schedule=mapping.schedule,
        timesteps=mapping.timesteps,
        prediction=mapping.prediction,
        variance=mapping.variance,
    )
    cfg.sample = config_mod.SampleConfig(sampler="ddim", steps=min(50, mapping.timesteps), n=64)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_mod.save(cfg, out_dir / "config.toml")
    record = {"source": str(source), "data": data, "unet_config": unet, "scheduler": mapping.as_dict()}
    (out_dir / LINK).write_text(json.dumps(record, indent=2) + "\n")
    return out_dir


def load_linked_run(run_dir: str | Path) -> tuple[Config, Any, torch.nn.Module, Splits]:
    """``(config, process, model, splits)`` of an output folder, as :func:`difflab.runs.load_run`
    returns for a run. Without ``--data`` the splits are empty (shape only: sampling works, the bound
    asks for data)."""
    run_dir = Path(run_dir)
    record = json.loads((run_dir / LINK).read_text())
    cfg = config_mod.load(str(run_dir / "config.toml"))
    diffusion, model = from_diffusers(record["source"])
    shape = (model.in_channels, *model.image_size)
    if record.get("data") is None:
        empty = torch.zeros((0, *shape))
        return cfg, diffusion, model, Splits(empty, empty)
    splits = build_splits(cfg)
    if splits.shape != shape:
        raise ValueError(
            f"--data {record['data']} has images of shape {splits.shape}; the model takes {shape}"
        )
    return cfg, diffusion, model, splits


__all__ = ["DEFAULT_ROOT", "LINK", "data_config", "is_linked_run", "link", "load_linked_run", "resolve_run"]
