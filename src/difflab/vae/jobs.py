"""The run-folder jobs of autoencoder runs (``vae.kind`` = ``vae``, ``hvae``, ``autoencoder``) and latent
diffusion runs (``latent.autoencoder`` = the folder of a trained ``autoencoder`` run), reached from
:mod:`difflab.runs` through one dispatch line per job (train, load, bound, strips).

A latent run records in ``RUN/latent.json`` the autoencoder's folder, the SHA-256 of its weights (its
fingerprint) and the latent scale measured at the start of training; resuming, sampling and evaluating
refuse an autoencoder that is missing, is not a KL autoencoder run, was trained on other data, or
whose weights changed since.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from .. import config as config_mod
from .. import threads as threads_mod
from ..config import Config
from ..runs.build import Splits, build_diffusion, build_model, build_splits, conditional
from ..runs.folder import check_split
from ..train.checkpoint import atomic_write, checkpoint_path, load_weights
from ..train.t_samplers import make_t_sampler
from ..train.trainer import Trainer
from .autoencoder import KLAutoencoder
from .hvae import HierarchicalVAE
from .latent import LatentDiffusion, latent_scale
from .vae import AutoencoderObjective, ConvVAE, LatentVariableModel, NoTimesteps

KINDS = ("vae", "hvae", "autoencoder")
LATENT_FILE = "latent.json"
WEIGHTS = "model.safetensors"
ELBO_PARTS = ("reconstruction E_q[-log p(x|z_1)]; kl: one term per latent level (consistency of z_1 .. "
              "z_{L-1}, then KL(q(z_L|z_{L-1}) || N(0, I)))")
LATENT_PARTS = ("decoder E_q[-log p(x|z)]; latent: the latent diffusion's bound on -log p(z) "
                "(incl. -D_z log s); minus_entropy: -H[q(z|x)] (LSGM)")

__all__ = ["KINDS", "LATENT_FILE", "bound", "handles", "load_run", "strips", "train_locked"]


def handles(cfg: Config) -> bool:
    """Whether ``cfg`` is an autoencoder run or a latent diffusion run (these jobs' business)."""
    return bool(cfg.vae.kind) or bool(cfg.latent.autoencoder)


def refuse(cfg: Config, what: str) -> None:
    """A one-line refusal of a pixel-space likelihood (``what``) for these runs."""
    if handles(cfg):
        raise ValueError(f"{what} is for pixel-space diffusion runs; this is an autoencoder or latent "
                         "diffusion run: `difflab eval bpd` gives its bound")


def check_config(cfg: Config) -> None:
    if cfg.vae.kind and cfg.vae.kind not in KINDS:
        raise ValueError(f"unknown vae.kind {cfg.vae.kind!r}; choose one of {', '.join(KINDS)} (or '' for a "
                         "diffusion run)")
    if cfg.vae.kind and cfg.latent.autoencoder:
        raise ValueError(f"vae.kind = {cfg.vae.kind!r} trains an autoencoder and latent.autoencoder = "
                         f"{cfg.latent.autoencoder!r} a diffusion on one: set only one of them")
    if cfg.vae.kind:
        for key, value, default in (("model.num_classes", cfg.model.num_classes, 0),
                                    ("train.t_sampler", cfg.train.t_sampler, "uniform")):
            if value != default:
                raise ValueError(f"{key}={value!r} does not apply to an autoencoder run (vae.kind = "
                                 f"{cfg.vae.kind!r}); leave it at {default!r}")


def _image_splits(cfg: Config) -> Splits:
    splits = build_splits(cfg)
    if not splits.is_image:
        raise ValueError(f"autoencoder and latent runs need image data; data.name = {cfg.data.name!r} is not")
    return splits


def build_autoencoder(cfg: Config, splits: Splits) -> LatentVariableModel:
    """The configured :class:`~difflab.vae.vae.ConvVAE`, :class:`~difflab.vae.hvae.HierarchicalVAE` or
    :class:`~difflab.vae.autoencoder.KLAutoencoder` for the data of ``splits``."""
    v, bins, shape = cfg.vae, splits.bins or 256, splits.shape
    if v.kind == "vae":
        return ConvVAE(shape, bins, v.latent_dim, v.channels, v.kl_weight)
    if v.kind == "hvae":
        return HierarchicalVAE(shape, bins, v.latent_dim, v.levels, v.channels, v.kl_weight)
    if v.kind == "autoencoder":
        return KLAutoencoder(shape, bins, v.latent_channels, v.downsample, v.channels, v.kl_weight)
    raise ValueError(f"unknown vae.kind {v.kind!r}; choose one of {', '.join(KINDS)}")


def fingerprint(run_dir: Path) -> str:
    """SHA-256 of an autoencoder run's weights."""
    path = run_dir / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} holds no trained weights ({WEIGHTS}); train the autoencoder first"
        )
    return hashlib.sha256(path.read_bytes()).hexdigest()


def open_autoencoder(spec: str, splits: Splits) -> tuple[Path, LatentVariableModel, str]:
    """``(folder, trained KL autoencoder, fingerprint)`` of ``latent.autoencoder = spec``, refusing a
    missing folder, a run of another kind and one trained on other data."""
    ae_dir = Path(spec)
    if not (ae_dir / "config.toml").is_file():
        raise FileNotFoundError(
            f"latent.autoencoder = {spec!r} is not a run folder (no config.toml); train one with "
            "`difflab train --config digits-vae` and pass its folder"
        )
    try:
        ae_cfg = config_mod.load(str(ae_dir / "config.toml"))
    except ValueError as exc:
        raise ValueError(f"{ae_dir / 'config.toml'}: {exc}") from None
    if ae_cfg.vae.kind != "autoencoder":
        what = f"a vae.kind = {ae_cfg.vae.kind!r}" if ae_cfg.vae.kind else "a diffusion"
        raise ValueError(f"latent.autoencoder = {spec!r} is {what} run; latent diffusion needs a KL "
                         "autoencoder run (vae.kind = 'autoencoder', presets digits-vae / mnist-vae)")
    check_split(ae_dir, splits.info)
    ae = build_autoencoder(ae_cfg, splits)
    fp = fingerprint(ae_dir)
    ae.load_state_dict(load_weights(ae_dir))
    return ae_dir, ae.eval(), fp


def _read_latent(run_dir: Path) -> dict[str, Any]:
    path = run_dir / LATENT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {run_dir} is not a trained latent diffusion run")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None


def _checked_autoencoder(cfg: Config, run_dir: Path, splits: Splits) -> tuple[LatentVariableModel, float]:
    """The autoencoder of a trained latent run, refused if its weights changed; and the latent scale."""
    info = _read_latent(run_dir)
    _, ae, fp = open_autoencoder(cfg.latent.autoencoder, splits)
    if fp != info.get("fingerprint"):
        raise ValueError(
            f"the autoencoder {cfg.latent.autoencoder} changed since {run_dir} was trained on it (weights "
            f"SHA-256 {fp[:12]}..., recorded {str(info.get('fingerprint'))[:12]}...); retrain the latent run"
        )
    return ae, float(info["scale"])


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def _latent_process(cfg: Config, ae: LatentVariableModel, scale: float):
    if len(ae.latent_shape) != 3:
        raise ValueError("latent diffusion needs spatial latents [c, h, w] (a KL autoencoder run)")
    return LatentDiffusion(build_diffusion(cfg, None), ae, scale)


def train_locked(cfg: Config, run_dir: Path, resume, progress: bool) -> dict[str, Any]:
    """:func:`difflab.runs.train` for autoencoder and latent runs (the folder is locked already)."""
    check_config(cfg)
    if resume is not None:
        checkpoint_path(run_dir, resume)
    torch.manual_seed(cfg.train.seed)
    splits = _image_splits(cfg)
    if resume is not None:
        check_split(run_dir, splits.info)
    extra: dict[str, Any] = {}
    if cfg.vae.kind:
        model: torch.nn.Module = build_autoencoder(cfg, splits)
        process: Any = AutoencoderObjective()
        data, t_sampler = splits.train, NoTimesteps()
    else:
        ae_dir, ae, fp = open_autoencoder(cfg.latent.autoencoder, splits)
        if resume is not None:
            ae, scale = _checked_autoencoder(cfg, run_dir, splits)
        else:
            stats = LatentDiffusion(build_diffusion(cfg, None), ae, 1.0).encode_stats(splits.train)
            mean, log_var = stats.chunk(2, dim=1)
            g = torch.Generator().manual_seed(cfg.train.seed)
            scale = latent_scale(mean + torch.exp(0.5 * log_var) * torch.randn(mean.shape, generator=g))
        process = _latent_process(cfg, ae, scale)
        model = build_model(cfg, process.latent_shape)
        data = process.encode_stats(splits.train)
        t_sampler = make_t_sampler(cfg.train.t_sampler, process.process)
        info = {"autoencoder": str(ae_dir), "fingerprint": fp, "scale": scale,
                "latent_shape": list(process.latent_shape)}
        _write_json(run_dir / LATENT_FILE, info)
        if cfg.model.num_classes > 0:
            if splits.train_y is None:
                raise ValueError(f"model.num_classes={cfg.model.num_classes} needs labelled data")
            extra.update(labels=splits.train_y, num_classes=cfg.model.num_classes)
    if cfg.train.sample_every > 0:
        extra["on_sample"] = _grid_callback(cfg, process, splits.shape, run_dir)
    governor = threads_mod.ThreadGovernor.for_training(cfg.train.threads, model, cfg.train.device)
    trainer = Trainer(process, model, data, cfg.train, run_dir, config=cfg.to_dict(),
                      on_step=governor.observe, t_sampler=t_sampler, **extra)
    if resume is not None:
        trainer.resume(resume)
    config_mod.save(cfg, run_dir / "config.toml")
    _write_json(run_dir / "split.json", splits.info)
    summary = trainer.fit(progress_bar=progress)
    summary["parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    _write_json(run_dir / "train.json", summary)
    return summary


def _grid_callback(cfg: Config, process, shape: tuple[int, ...], run_dir: Path):
    """``RUN/grids/step-N.png`` every ``train.sample_every`` steps: 36 decoded samples (DDIM, 50 steps,
    for a latent run; class ``i % num_classes`` for a class-conditional one)."""
    from ..viz.images import save_grid

    def on_sample(step: int, ema_model: torch.nn.Module) -> None:
        k = cfg.model.num_classes
        net = conditional(ema_model, torch.arange(36) % k) if k > 0 and not cfg.vae.kind else ema_model
        x = process.sample(net, (36, *shape), sampler="ddim", steps=50, clip=(-1.0, 1.0),
                           generator=torch.Generator().manual_seed(0))
        save_grid(x, run_dir / "grids" / f"step-{step:07d}.png", nrow=6)

    return on_sample


def load_run(cfg: Config, run_dir: Path) -> tuple[Config, Any, torch.nn.Module, Splits]:
    """:func:`difflab.runs.load_run` for these runs: ``(config, process, EMA model, splits)``; the process
    samples pixel images (:class:`~difflab.vae.vae.AutoencoderObjective` or
    :class:`~difflab.vae.latent.LatentDiffusion`)."""
    check_config(cfg)
    splits = _image_splits(cfg)
    check_split(run_dir, splits.info)
    if cfg.vae.kind:
        model = build_autoencoder(cfg, splits)
        model.load_state_dict(load_weights(run_dir))
        return cfg, AutoencoderObjective(), model.eval(), splits
    ae, scale = _checked_autoencoder(cfg, run_dir, splits)
    process = _latent_process(cfg, ae, scale)
    model = build_model(cfg, process.latent_shape)
    model.load_state_dict(load_weights(run_dir))
    if cfg.diffusion.process == "vdm":
        process.process.bind(model)
    return cfg, process, model.eval(), splits


def _stats(bpd: torch.Tensor) -> tuple[float, float]:
    return float(bpd.mean()), float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else math.nan


def bound(
    run_dir: str | Path, split: str = "test", n: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """``difflab eval bpd`` of these runs, in bits/dim on the data's grid. Autoencoder runs: the ELBO with
    its reconstruction and per-level KL parts, and the IWAE bound for each ``K`` of ``eval.iwae_k``.
    Latent runs: the bound (2) of :mod:`difflab.vae.latent` with its decoder, latent and entropy parts."""
    from ..runs import common as jobs  # the generic helpers (split_data, score_by_class, update_json)

    run_dir = Path(run_dir)
    cfg = jobs.run_config(Path(run_dir))
    cfg, process, model, splits = load_run(cfg, Path(run_dir))
    jobs.set_threads(cfg)
    data, labels = jobs.split_data(cfg, splits, split, n)
    bits = 1.0 / (int(math.prod(splits.shape)) * math.log(2.0))
    g = torch.Generator().manual_seed(7)
    t0 = time.perf_counter()
    out: dict[str, Any]
    if cfg.vae.kind:
        with torch.no_grad():
            terms = model.elbo_terms(data, g)
        total, err = _stats(terms.total * bits)
        out = {"bound_parts_bits_per_dim": {
            "reconstruction": float(terms.reconstruction.mean()) * bits,
            "kl": float(terms.kl.sum(1).mean()) * bits,
            "kl_levels": [float(v) * bits for v in terms.kl.mean(0)],
        }, "bound_parts_are": ELBO_PARTS, "iwae_bits_per_dim": {}, "iwae_bits_per_dim_stderr": {}}
        for k in cfg.eval.iwae_k:
            with torch.no_grad():
                mean, se = _stats(model.iwae(data, int(k), g) * bits)
            out["iwae_bits_per_dim"][str(k)], out["iwae_bits_per_dim_stderr"][str(k)] = mean, se
    else:
        parts = jobs.score_by_class(
            cfg, model, data, labels,
            lambda m, x: process.bound_terms(m, x, generator=g, progress=progress, max_batch=2048),
        )
        total, err = _stats(parts.total * bits)
        out = {"bound_parts_bits_per_dim": {
            "decoder": float(parts.decoder.mean()) * bits,
            "latent": float(parts.latent.mean()) * bits,
            "minus_entropy": -float(parts.entropy.mean()) * bits,
        }, "bound_parts_are": LATENT_PARTS}
    out |= {"bound_bits_per_dim": total, "bound_bits_per_dim_stderr": err, "bound_split": split,
            "bound_points": len(data), "bound_seconds": round(time.perf_counter() - t0, 2)}
    return jobs.update_json(run_dir / "metrics.json", out)


def strips(run_dir: str | Path, rows: int = 10) -> list[str]:
    """``reconstructions.png``: the first ``rows`` test images over their reconstructions (through the
    autoencoder: the decoder mean at the encoder mean)."""
    from ..runs import common as jobs
    from ..viz.images import save_grid

    run_dir = Path(run_dir)
    cfg = jobs.run_config(Path(run_dir))
    cfg, process, model, splits = load_run(cfg, Path(run_dir))
    ae = model if cfg.vae.kind else process.autoencoder
    x = splits.test[:rows]
    save_grid(torch.cat([x, ae.reconstruct(x)]), run_dir / "reconstructions.png", nrow=len(x))
    return ["reconstructions.png"]
