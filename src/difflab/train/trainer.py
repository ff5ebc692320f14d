"""A training loop you can leave running, stop, resume and scale out (Algorithm 1 of DDPM).

    repeat: x_0 ~ data, t ~ U{0..T-1}, eps ~ N(0, I);
            gradient step on || target - model(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2

(the loss is the diffusion's objective, :mod:`difflab.processes.ddpm.objectives`; with ``train.t_sampler =
"importance"`` ``t`` is drawn with probability ``p_t ~ sqrt(E[L_t^2])`` and each example's loss is
weighted by ``1/(T p_t)``, improved DDPM eq. 17.)

AdamW with linear warm-up then cosine (or constant) learning rate, gradient clipping, gradient
accumulation, an EMA of the weights, bf16 autocast, channels-last images, optional ``torch.compile``,
class labels with label dropout (classifier-free guidance), a progress bar, a CSV log (and
TensorBoard when it is installed), a sample callback, atomic checkpoints and data-parallel training
under ``torchrun``.

Determinism. Everything random in a step (the rows of the batch, ``t``, ``eps``, dropped labels)
comes from one seeded ``torch.Generator`` that every rank advances identically; the learning rate is
a function of the step alone (when ``max_minutes = 0``). A checkpoint holds that generator and the
global torch / CUDA / numpy / python RNG states, so a resumed run repeats the losses of an
uninterrupted one exactly on the CPU. With ``max_minutes > 0`` the cosine progress is
``max(step / steps, elapsed / budget)``, ``elapsed`` counted from the start of this ``fit()`` call, so
it follows the wall clock: exact resume needs ``max_minutes = 0``. A run stopped by Ctrl-C or a kill
continues from its last checkpoint; ``log.csv`` is cut back to that step first.
"""

from __future__ import annotations

import functools
import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checks import check_int
from ..config import TrainConfig
from ..processes.protocol import Process
from . import checkpoint as ckpt
from . import rng
from .distributed import setup, wrap
from .ema import EMA
from .logs import RunLog
from .resume_rules import RESULT_NEUTRAL, config_changes, describe_changes
from .t_samplers import T_SAMPLERS, make_t_sampler

PRECISIONS = ("fp32", "bf16")


class TrainingError(RuntimeError):
    """Training stopped because its input or its numbers went bad."""


class Interrupted(RuntimeError):
    """Training was stopped by SIGTERM or SIGINT after saving a checkpoint at the current step."""

    def __init__(self, message: str, signum: int, step: int):
        super().__init__(message)
        self.signum, self.step = signum, step


def lr_factor(step: int, cfg: TrainConfig, progress: float) -> float:
    """Multiplier of the base learning rate: linear warm-up over ``warmup`` steps, then cosine decay
    to 0 as ``progress`` (fraction of the run done) goes to 1, or constant."""
    warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup > 0 else 1.0
    if cfg.lr_schedule == "constant":
        return warm
    if cfg.lr_schedule == "cosine":
        return warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}; choose cosine or constant")


def check_config(cfg: TrainConfig, world_size: int = 1) -> None:
    """Reject values the trainer cannot honour, naming the value and what is allowed."""
    for name, low in (("steps", 1), ("batch_size", 1), ("grad_accum", 1), ("log_every", 1), ("warmup", 0),
                      ("ckpt_every", 0), ("keep_checkpoints", 0), ("sample_every", 0)):
        value = getattr(cfg, name)
        check_int(f"train.{name}", value, low)
    for name in ("lr", "weight_decay", "grad_clip", "max_minutes", "ema_decay"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ValueError(f"train.{name} must be a finite number >= 0, got {value!r}")
    if cfg.ema_decay >= 1:
        raise ValueError(f"train.ema_decay must lie in [0, 1), got {cfg.ema_decay!r}")
    parts = world_size * cfg.grad_accum
    if cfg.batch_size % parts:
        raise ValueError(
            f"train.batch_size={cfg.batch_size} (the global batch) must be divisible by "
            f"world_size * grad_accum = {world_size} * {cfg.grad_accum} = {parts}"
        )
    if cfg.precision not in PRECISIONS:
        raise ValueError(
            f"train.precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r} "
            "(fp16 would need loss scaling; use bf16)"
        )
    if cfg.t_sampler not in T_SAMPLERS:
        raise ValueError(f"train.t_sampler must be one of {', '.join(T_SAMPLERS)}, got {cfg.t_sampler!r}")
    if not 0.0 <= cfg.label_dropout < 1.0:
        raise ValueError(f"train.label_dropout must lie in [0, 1), got {cfg.label_dropout!r}")
    lr_factor(0, cfg, 0.0)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's parameter groups: all parameters decayed by ``weight_decay``, except those of submodules
    marked ``weight_decay_exempt`` (a learned log-SNR schedule), which get none. One group when there
    is no decay to exempt from (so runs without weight decay keep a one-group optimizer state)."""
    exempt = {
        id(p) for m in model.modules() if getattr(m, "weight_decay_exempt", False) for p in m.parameters()
    }
    params = list(model.parameters())
    if weight_decay == 0 or not exempt:
        return [{"params": params, "weight_decay": weight_decay}]
    return [
        {"params": [p for p in params if id(p) not in exempt], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0, "decay_exempt": True},
    ]


class Trainer:
    """Trains ``model`` on the rows of ``data`` (``[N, ...]``) for ``cfg.steps`` optimizer steps.

    Args:
        diffusion: the process and its loss (``L_simple`` with the configured prediction).
        model: ``model(x_t, t)``, or ``model(x_t, t, y=labels)`` when ``labels`` are given.
        data: float tensor ``[N, ...]``; 4-D data are images ``[N, C, H, W]``.
        cfg: the ``[train]`` section; ``batch_size`` is the global batch of one optimizer step, split
            into ``grad_accum`` micro-batches and over the ``torchrun`` processes.
        run_dir: where checkpoints, ``log.csv`` and TensorBoard events go (rank 0 writes).
        config: the full run configuration, stored in every checkpoint.
        labels: int64 ``[N]`` class of each row, passed to the model as ``y``.
        num_classes: number of classes; ``num_classes`` itself is the null class that
            ``cfg.label_dropout`` substitutes (classifier-free guidance).
        on_sample: ``on_sample(step, ema_model)`` called on rank 0 every ``cfg.sample_every`` steps,
            under ``torch.no_grad`` and with the RNG states restored afterwards.
        t_sampler: draws the training ``t`` and its loss weights (``sample(batch, generator) ->
            (t, weights)``, ``update(t, losses)``, ``state_dict()``); default: the one
            ``cfg.t_sampler`` names (:func:`difflab.train.t_samplers.make_t_sampler`). Its state is
            checkpointed.
        on_step: ``on_step(step)`` called on every rank after each optimizer step (the CPU thread
            governor of :mod:`difflab.threads` watches step times through it).
    """

    def __init__(
        self,
        diffusion: Process,
        model: nn.Module,
        data: torch.Tensor,
        cfg: TrainConfig,
        run_dir: str | Path,
        config: dict[str, Any] | None = None,
        *,
        labels: torch.Tensor | None = None,
        num_classes: int | None = None,
        on_sample: Callable[[int, nn.Module], Any] | None = None,
        t_sampler: Any = None,
        on_step: Callable[[int], Any] | None = None,
    ):
        if not isinstance(data, torch.Tensor) or data.dim() < 2 or data.shape[0] < 1:
            got = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
            raise ValueError(f"training data must be a non-empty tensor [N, ...], got {got}")
        if not data.is_floating_point():
            raise ValueError(f"training data must be floating point, got {data.dtype}")
        if cfg.channels_last and data.dim() != 4:
            raise ValueError(
                f"train.channels_last applies to image data [N, C, H, W]; got data of shape "
                f"{tuple(data.shape)} (set train.channels_last = false)"
            )
        self.dist = setup(cfg.device)
        check_config(cfg, self.dist.world_size)
        self.labels, self.num_classes = self._check_labels(labels, num_classes, data.shape[0], cfg)
        self.diffusion, self.cfg, self.config = diffusion, cfg, config or {}
        self.device = self.dist.device
        self.data = data
        self.run_dir = Path(run_dir)
        self.on_sample = on_sample
        self.on_step = on_step
        self.model = model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = wrap(self.model, self.dist)  # what the loss calls: DDP(model) or model
        self._forward: Callable[..., torch.Tensor] = self.net
        self._compile_pending = False
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr)
        self.ema = EMA(self.model, cfg.ema_decay) if self.dist.is_main else None
        self.step = 0
        self.seconds = 0.0  # training time over all runs of this checkpoint line
        self.log_window = [0.0, 0]  # loss sum and count since the last log.csv row (checkpointed)
        self.loss_ema: float | None = None
        self._signal: int | None = None
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.t_sampler = make_t_sampler(cfg.t_sampler, diffusion) if t_sampler is None else t_sampler
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _check_labels(labels, num_classes, n: int, cfg: TrainConfig):
        if labels is None:
            if cfg.label_dropout > 0:
                raise ValueError(
                    f"train.label_dropout={cfg.label_dropout} needs class labels: pass labels= and "
                    "num_classes= to the Trainer"
                )
            return None, num_classes
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.shape != (n,):
            got = (labels.dtype, tuple(labels.shape)) if isinstance(labels, torch.Tensor) else type(labels)
            raise ValueError(f"labels must be an int64 tensor [N] with N = {n} (one per data row), got {got}")
        if num_classes is None:
            if cfg.label_dropout > 0:
                raise ValueError("label dropout needs num_classes= (its value is the null class index)")
        elif int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise ValueError(
                f"labels must lie in [0, num_classes) = [0, {num_classes}); found "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        return labels, num_classes

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """The full training state. Under ``torchrun`` every rank must call it (it gathers RNGs)."""
        rngs = self.dist.gather(rng.capture())
        return {
            "format": ckpt.FORMAT,
            "step": self.step,
            "seconds": self.seconds,
            "log_window": [float(self.log_window[0]), int(self.log_window[1])],
            "loss_ema": self.loss_ema,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.opt.state_dict(),
            "generator": self.gen.get_state(),
            "rng": rngs[0],
            "rng_per_rank": rngs,
            "world_size": self.dist.world_size,
            "train_config": asdict(self.cfg),
            "config": self.config,
            "t_sampler": self.t_sampler.state_dict(),
        }

    def save(self) -> Path | None:
        """Checkpoint now (rank 0 writes; a collective under ``torchrun``). Returns the latest path."""
        state = self.state()
        if not self.dist.is_main:
            return None
        try:
            return ckpt.save_checkpoint(
                self.run_dir, state, self.ema.model.state_dict(), step=self.step,
                keep=self.cfg.keep_checkpoints,
            )
        except OSError as exc:  # disk full, permissions: the previous checkpoint is untouched
            raise TrainingError(
                f"could not write the checkpoint of step {self.step} in {self.run_dir} "
                f"({exc.strerror or exc}); the previous checkpoint is kept unchanged"
            ) from None

    def resume(self, which: str | int | Path = "latest") -> int:
        """Restore model, EMA, optimizer, generator, RNGs and step from ``which``: ``"latest"``, a step
        number or a checkpoint file. Every rank reads the file. Returns the step resumed at."""
        path = ckpt.checkpoint_path(self.run_dir, which)
        state = ckpt.read_checkpoint(path)
        self._check_same_run(path, state)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise ValueError(
                f"checkpoint {path} holds a different network than the configured one ("
                f"{ckpt.first_line(exc)}); resume with the configuration the run was trained with"
            ) from None
        try:
            self.opt.load_state_dict(state["optimizer"])
        except ValueError as exc:  # parameter groups differ: not the optimizer of this configuration
            raise ValueError(f"cannot resume the optimizer state of {path}: {ckpt.first_line(exc)}") from None
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.gen.set_state(state["generator"])
        per_rank = state.get("rng_per_rank") or []
        if len(per_rank) == self.dist.world_size:
            rng.restore(per_rank[self.dist.rank])
        elif "rng" in state:
            rng.restore(state["rng"])
        else:  # format 1
            torch.set_rng_state(state["torch_rng"])
        saved = state.get("t_sampler")
        if saved is not None and saved.get("kind") == self.t_sampler.state_dict().get("kind"):
            self.t_sampler.load_state_dict(saved)  # else (older checkpoint, other sampler): start afresh
        self.step = int(state["step"])
        self.seconds = float(state.get("seconds", 0.0))
        window = state.get("log_window") or [0.0, 0]
        self.log_window = [float(window[0]), int(window[1])]
        self.loss_ema = state.get("loss_ema")
        if self.dist.is_main:
            ckpt.remove_stale_temps(self.run_dir)
        return self.step

    def _check_same_run(self, path: Path, state: dict[str, Any]) -> None:
        """Refuse to continue a checkpoint under a configuration that would change the result."""
        saved, now = state.get("config") or {}, self.config
        if not (saved and now):  # a Trainer built without the full config: compare [train]
            saved, now = {"train": state.get("train_config") or {}}, {"train": asdict(self.cfg)}
        changes = config_changes(saved, now)
        if changes:
            raise ValueError(
                f"cannot resume {path} with a changed configuration: {describe_changes(changes)}. "
                f"Only {', '.join(RESULT_NEUTRAL)} may change on resume (docs/runs.md); start a new run "
                "folder for other values"
            )

    # ------------------------------------------------------------------ one step
    def _autocast(self):
        if self.cfg.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _draw(self):
        """This rank's rows of the global batch, drawn identically on every rank."""
        B, data = self.cfg.batch_size, self.data
        idx = torch.randint(0, data.shape[0], (B,), generator=self.gen)
        # U{0..T-1} (EDM: log-normal sigma as model time) with weights 1, or importance-sampled t
        t, weights = self.t_sampler.sample(B, self.gen)
        noise = torch.randn((B, *data.shape[1:]), generator=self.gen, dtype=data.dtype)
        y = None
        if self.labels is not None:
            y = self.labels[idx]
            if self.cfg.label_dropout > 0:
                drop = torch.rand(B, generator=self.gen) < self.cfg.label_dropout
                y = y.masked_fill(drop, self.num_classes)
        W, r = self.dist.world_size, self.dist.rank
        mine = slice(r * B // W, (r + 1) * B // W)
        x0 = data[idx[mine].to(data.device)].to(self.device, non_blocking=True)
        noise = noise[mine].to(self.device, non_blocking=True)
        if self.cfg.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
            noise = noise.contiguous(memory_format=torch.channels_last)
        y = None if y is None else y[mine].to(self.device)
        return x0, t, weights[mine].to(self.device), noise, y, idx[mine], mine

    def _micro_loss(self, x0, t, noise, y) -> torch.Tensor:
        """The per-example (unweighted) losses ``[m]`` of one micro-batch, float32."""
        net = self._forward if y is None else functools.partial(self._forward, y=y)
        with self._autocast():
            return self.diffusion.loss(net, x0, t=t, noise=noise).float()

    @contextmanager
    def _compile_errors(self):
        if not self._compile_pending:
            yield
            return
        try:
            yield
        except Exception as exc:
            raise RuntimeError(
                f"torch.compile failed on the first training step ({type(exc).__name__}: {exc}); "
                "set train.compile = false to train without it"
            ) from exc
        self._compile_pending = False

    def train_step(self, progress: float) -> tuple[float, float]:
        """One optimizer step over the global batch; returns ``(mean loss, gradient norm)``."""
        cfg, A = self.cfg, self.cfg.grad_accum
        lr = cfg.lr * lr_factor(self.step, cfg, progress)
        for group in self.opt.param_groups:
            group["lr"] = lr
        x0, t_all, w, noise, y, rows, mine = self._draw()
        t = t_all[mine]
        learns = getattr(self.t_sampler, "learns", False)
        seen = torch.zeros(t_all.shape[0], dtype=torch.float64, device=self.device) if learns else None
        finite_rows = torch.isfinite(x0.flatten(1)).all(1)
        m = x0.shape[0] // A
        self.opt.zero_grad(set_to_none=True)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        with self._compile_errors():
            for k in range(A):
                part = slice(k * m, (k + 1) * m)
                last = k == A - 1
                with self.net.no_sync() if self.dist.enabled and not last else nullcontext():
                    per = self._micro_loss(x0[part], t[part], noise[part], None if y is None else y[part])
                    loss = (per * w[part].to(per.dtype)).mean() if learns else per.mean()
                    (loss / A).backward()
                total += loss.detach().double()
                if seen is not None:  # this rank's rows of the global batch
                    seen[mine.start + k * m : mine.start + (k + 1) * m] = per.detach().double()
        n_bad = (~finite_rows).sum().to(torch.float64)
        loss_sum, n_bad = self.dist.all_reduce_sum(torch.stack([total / A, n_bad])).tolist()
        where = f"optimizer step {self.step + 1}"
        kept = f"training stopped, the last checkpoint in {self.run_dir} is kept"
        if n_bad > 0:
            mine = rows[~finite_rows.cpu()].tolist()[:5]
            raise TrainingError(
                f"{where}: the data batch contains NaN or inf ({int(n_bad)} rows"
                f"{f', e.g. rows {mine} of the data' if mine else ''}); {kept}"
            )
        loss = loss_sum / self.dist.world_size
        if not math.isfinite(loss):
            raise TrainingError(f"{where}: the loss is {loss}; {kept} (lower train.lr or check the model)")
        if seen is not None:  # every rank's sampler sees the whole batch's unweighted losses, in order
            self.t_sampler.update(t_all, self.dist.all_reduce_sum(seen).cpu())
        clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        if not math.isfinite(norm):
            raise TrainingError(f"{where}: the gradient norm is {norm}; {kept} (lower train.lr)")
        self.opt.step()
        self._check_finite_state(where, kept)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return loss, norm

    def _check_finite_state(self, where: str, kept: str) -> None:
        """Stop before non-finite parameters or optimizer moments can be saved as "the last good state"
        (an infinite learning rate, say). One reduction over all of them (a sum of norms is finite only
        if every entry is); the same answer on every rank, since DDP keeps parameters identical."""
        tensors = [p.detach() for p in self.model.parameters()]
        tensors += [v for st in self.opt.state.values() for v in st.values()
                    if isinstance(v, torch.Tensor) and v.dim() > 0]
        total = torch.nn.utils.get_total_norm(tensors, norm_type=1.0)
        if not math.isfinite(float(total)):
            raise TrainingError(
                f"{where}: the parameters or optimizer state became NaN or inf; {kept} "
                "(lower train.lr or check the model)"
            )

    # ------------------------------------------------------------------ signals
    def _catch_signals(self) -> dict[int, Any] | None:
        """While :meth:`fit` runs, SIGTERM (a cluster's preemption) and SIGINT (Ctrl-C) only set a flag:
        the current step finishes, a checkpoint is saved and :class:`Interrupted` is raised. A second
        signal of either kind stops at once (the last checkpoint stays intact: writes are atomic)."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if self._signal is not None:
                raise KeyboardInterrupt
            self._signal = signum

        old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, handler)
        return old

    @staticmethod
    def _restore_signals(old: dict[int, Any] | None) -> None:
        for sig, h in (old or {}).items():
            signal.signal(sig, h)

    def _stop_requested(self) -> bool:
        """Whether any rank caught a signal (all ranks agree, so they save the same step)."""
        flag = 0.0 if self._signal is None else float(self._signal)
        if self.dist.enabled:
            flag = self.dist.all_reduce_max(flag)
            if flag and self._signal is None:
                self._signal = int(flag)
        return flag > 0

    # ------------------------------------------------------------------ callbacks
    def _sample(self) -> None:
        with rng.isolated(self.device), torch.no_grad():
            self.on_sample(self.step, self.ema.model)

    # ------------------------------------------------------------------ loop
    def fit(self, progress_bar: bool = True, until: int | None = None) -> dict[str, Any]:
        """Train until ``cfg.steps`` (or step ``until``, or the ``max_minutes`` budget); checkpoint at
        the end. Returns a summary: steps, seconds, it/s, smoothed loss."""
        cfg, main = self.cfg, self.dist.is_main
        end = cfg.steps if until is None else min(int(until), cfg.steps)
        budget = cfg.max_minutes * 60.0
        if cfg.compile and self._forward is self.net:
            try:
                self._forward = torch.compile(self.net)
            except Exception as exc:
                msg = f"torch.compile is unavailable here ({exc}); set train.compile = false"
                raise RuntimeError(msg) from exc
            self._compile_pending = True
        start_step, t0, seconds0 = self.step, time.perf_counter(), self.seconds
        saved_at = -1
        bar = log = handlers = None
        self._signal = None
        try:
            handlers = self._catch_signals()
            if main:
                if progress_bar:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=cfg.steps, initial=self.step, desc="train", dynamic_ncols=True)
                log = RunLog(self.run_dir, self.step)
            while self.step < end:
                elapsed = time.perf_counter() - t0
                frac = self.step / cfg.steps
                if budget > 0:  # rank 0's clock decides, so all ranks stop together
                    elapsed = self.dist.broadcast_float(elapsed)
                    if elapsed >= budget:
                        break
                    frac = max(frac, elapsed / budget)
                loss, norm = self.train_step(frac)
                self.seconds = seconds0 + time.perf_counter() - t0
                smooth = loss if self.loss_ema is None else 0.98 * self.loss_ema + 0.02 * loss
                self.loss_ema = smooth
                window = self.log_window = [self.log_window[0] + loss, self.log_window[1] + 1]
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{smooth:.4f}", refresh=False)
                if log is not None and self.step % cfg.log_every == 0:
                    lr = self.opt.param_groups[0]["lr"]
                    log.write(self.step, window[0] / window[1], lr, norm, self.seconds)
                    self.log_window = [0.0, 0]
                if self.on_step is not None:
                    self.on_step(self.step)
                if self._stop_requested():
                    self.save()
                    name = signal.Signals(self._signal).name
                    raise Interrupted(
                        f"stopped by {name} at step {self.step}; checkpoint saved to "
                        f"{self.run_dir / ckpt.CHECKPOINT} (continue with --resume)",
                        self._signal, self.step,
                    )
                if cfg.ckpt_every > 0 and self.step % cfg.ckpt_every == 0:
                    self.save()
                    saved_at = self.step
                if main and self.on_sample is not None and cfg.sample_every > 0:
                    if self.step % cfg.sample_every == 0:
                        self._sample()
            if saved_at != self.step and self.step > start_step:
                self.save()
        finally:
            self._restore_signals(handlers)
            for handle in (bar, log):
                if handle is not None:
                    handle.close()
        self.dist.barrier()
        seconds = time.perf_counter() - t0
        done = self.step - start_step
        return {
            "steps": self.step,
            "seconds": round(seconds, 2),
            "it_per_s": round(done / seconds, 2) if seconds > 0 else None,
            "loss_ema": self.loss_ema,
            "world_size": self.dist.world_size,
        }

