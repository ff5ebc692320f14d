"""A small, trustworthy training loop (Algorithm 1 of DDPM).

    repeat: x_0 ~ data, t ~ U{0..T-1}, eps ~ N(0, I);
            gradient step on || target - model(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2

AdamW with linear warm-up then cosine (or constant) learning rate, gradient clipping, an EMA of
the weights, a progress bar with loss and it/s, a CSV log, and atomic checkpoints. A NaN in a data
batch or a non-finite loss stops training with a message and leaves the last good checkpoint alone.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..diffusion import GaussianDiffusion
from .checkpoint import load_checkpoint, save_checkpoint
from .ema import EMA


class TrainingError(RuntimeError):
    """Training stopped because its input or its numbers went bad."""


def lr_factor(step: int, cfg: TrainConfig, progress: float) -> float:
    """Multiplier of the base learning rate: linear warm-up over ``warmup`` steps, then cosine decay
    to 0 as ``progress`` (fraction of the run done) goes to 1, or constant."""
    warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup > 0 else 1.0
    if cfg.lr_schedule == "constant":
        return warm
    if cfg.lr_schedule == "cosine":
        return warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}; choose cosine or constant")


class Trainer:
    """Trains ``model`` on the rows of ``data`` (``[N, ...]``) for ``cfg.steps`` steps (or until
    ``cfg.max_minutes`` of wall-clock time) and writes checkpoints into ``run_dir``."""

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        model: nn.Module,
        data: torch.Tensor,
        cfg: TrainConfig,
        run_dir: str | Path,
        config: dict[str, Any] | None = None,
    ):
        if data.dim() < 2 or data.shape[0] < 1:
            raise ValueError(f"training data must be a non-empty batch [N, ...], got {tuple(data.shape)}")
        if cfg.batch_size < 1 or cfg.steps < 1:
            raise ValueError(f"batch_size and steps must be >= 1, got {cfg.batch_size} and {cfg.steps}")
        lr_factor(0, cfg, 0.0)  # validates lr_schedule before any work
        self.diffusion, self.cfg, self.config = diffusion, cfg, config or {}
        self.device = torch.device(cfg.device)
        self.model = model.to(self.device)
        self.data = data
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = EMA(self.model, cfg.ema_decay)
        self.step = 0
        self.gen = torch.Generator().manual_seed(cfg.seed)

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "config": self.config,
        }

    def save(self) -> Path:
        return save_checkpoint(self.run_dir, self.state(), self.ema.model.state_dict())

    def resume(self) -> None:
        state = load_checkpoint(self.run_dir)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])

    # ------------------------------------------------------------------ loop
    def _batch(self) -> torch.Tensor:
        idx = torch.randint(0, self.data.shape[0], (self.cfg.batch_size,), generator=self.gen)
        x0 = self.data[idx].to(self.device)
        if not bool(torch.isfinite(x0).all()):
            raise TrainingError(
                f"step {self.step}: the data batch contains NaN or inf (rows "
                f"{idx[~torch.isfinite(x0.flatten(1)).all(1).cpu()].tolist()[:5]} of the data); "
                f"training stopped, the last checkpoint in {self.run_dir} is kept"
            )
        return x0

    def train_step(self, progress: float) -> float:
        cfg = self.cfg
        for group in self.opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(self.step, cfg, progress)
        x0 = self._batch()
        t = torch.randint(0, self.diffusion.timesteps, (x0.shape[0],), generator=self.gen)
        noise = torch.randn(x0.shape, generator=self.gen).to(self.device)
        loss = self.diffusion.loss(self.model, x0, t=t, noise=noise).mean()
        if not bool(torch.isfinite(loss)):
            raise TrainingError(
                f"step {self.step}: the loss is {loss.item()}; training stopped, the last "
                f"checkpoint in {self.run_dir} is kept (lower train.lr or check the data)"
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.ema.update(self.model)
        self.step += 1
        return loss.item()

    def fit(self, progress_bar: bool = True) -> dict[str, Any]:
        """Run until ``cfg.steps`` or the time budget; returns a summary (steps, seconds, loss)."""
        cfg = self.cfg
        budget = cfg.max_minutes * 60.0
        start_step, t0 = self.step, time.perf_counter()
        bar = None
        if progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", dynamic_ncols=True)
        log_path = self.run_dir / "log.csv"
        new_log = not log_path.exists() or self.step == 0
        smooth = None
        with open(log_path, "w" if new_log else "a", newline="") as fh:
            writer = csv.writer(fh)
            if new_log:
                writer.writerow(["step", "loss", "lr", "seconds"])
            while self.step < cfg.steps:
                elapsed = time.perf_counter() - t0
                if budget > 0 and elapsed >= budget:
                    break
                frac = max(self.step / cfg.steps, elapsed / budget if budget > 0 else 0.0)
                loss = self.train_step(frac)
                smooth = loss if smooth is None else 0.98 * smooth + 0.02 * loss
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{smooth:.4f}", refresh=False)
                if self.step % cfg.log_every == 0:
                    lr = self.opt.param_groups[0]["lr"]
                    writer.writerow([self.step, f"{smooth:.6f}", f"{lr:.3e}", f"{elapsed:.2f}"])
                    fh.flush()
                if cfg.ckpt_every > 0 and self.step % cfg.ckpt_every == 0:
                    self.save()
        if bar is not None:
            bar.close()
        self.save()
        seconds = time.perf_counter() - t0
        done = self.step - start_step
        return {
            "steps": self.step,
            "seconds": round(seconds, 2),
            "it_per_s": round(done / seconds, 2) if seconds > 0 else None,
            "loss_ema": smooth,
        }
