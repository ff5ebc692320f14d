"""The trainer: stops cleanly on bad numbers, checkpoints atomically, resumes exactly (also after
``kill -9``), accumulates gradients like one big batch, runs in bf16 and channels-last.

Run as a script (``python tests/test_trainer.py RUN STEPS MODE``) it trains the tiny job the
kill test starts, kills and resumes in subprocesses.
"""

from __future__ import annotations

import csv
import math
import os
import random
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from difflab import GaussianDiffusion
from difflab.config import TrainConfig
from difflab.data import make_toy2d
from difflab.nets import MLPDenoiser
from difflab.train import Trainer, TrainingError, atomic_write, list_checkpoints, load_checkpoint
from difflab.train import checkpoint as ckpt_mod

T = 50


class DropMLP(nn.Module):
    """A tiny denoiser whose output layer starts non-zero and which uses the global torch RNG
    (dropout), so exact resume needs the global RNG state too."""

    def __init__(self, p: float = 0.2):
        super().__init__()
        self.mlp = MLPDenoiser(2, hidden=32, depth=1, emb_dim=16, timesteps=T)
        nn.init.normal_(self.mlp.out.weight, std=0.3)
        self.drop = nn.Dropout(p)
        self.poison = False

    def forward(self, x, t):
        out = self.drop(self.mlp(x, t))
        return out * float("nan") if self.poison else out


def NoDrop():
    return DropMLP(p=0.0)


class CondMLP(nn.Module):
    """Class-conditional: the label's embedding is added to the input; records the labels seen."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.mlp = MLPDenoiser(2, hidden=32, depth=1, emb_dim=16, timesteps=T)
        self.emb = nn.Embedding(num_classes + 1, 2)
        self.seen: list[torch.Tensor] = []

    def forward(self, x, t, y):
        self.seen.append(y.detach().clone())
        return self.mlp(x + self.emb(y), t)


class TinyConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Conv2d(1, 8, 3, padding=1)
        self.time = nn.Linear(1, 8)
        self.out = nn.Conv2d(8, 1, 3, padding=1)
        self.seen_formats: list[bool] = []

    def forward(self, x, t):
        self.seen_formats.append(x.is_contiguous(memory_format=torch.channels_last))
        h = torch.nn.functional.silu(self.inp(x) + self.time(t[:, None] / T)[:, :, None, None])
        return self.out(h)


def make(run, model=DropMLP, data=None, seed=0, **train):
    """A tiny trainer; ``model`` is a factory, called after seeding."""
    torch.manual_seed(seed)
    model = model()
    data = make_toy2d("moons", 256, seed=0) if data is None else data
    opts = dict(steps=20, batch_size=16, lr=5e-3, warmup=3, ckpt_every=5, log_every=1, keep_checkpoints=2)
    opts.update(train)
    return Trainer(GaussianDiffusion(timesteps=T), model, data, TrainConfig(**opts), run)


def log_rows(run):
    with open(Path(run) / "log.csv", newline="") as fh:
        return [row[:4] for row in csv.reader(fh)]  # step, loss, lr, grad_norm (not seconds)


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def temps(run):
    return [p for p in Path(run).rglob("*.tmp")]


# ---------------------------------------------------------------------- bad numbers
def test_nan_in_data_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path):
    tr = make(tmp_path)
    tr.fit(progress_bar=False, until=10)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    weights = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.data = tr.data.clone()
    tr.data[::2] = float("nan")
    with pytest.raises(TrainingError, match=r"optimizer step 11: the data batch contains NaN.*rows"):
        tr.fit(progress_bar=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert list(list_checkpoints(tmp_path)) == [5, 10]
    assert same_state(tr.model.state_dict(), weights) and tr.step == 10


def test_non_finite_loss_stops_and_keeps_the_checkpoint(tmp_path):
    tr = make(tmp_path)
    tr.fit(progress_bar=False, until=10)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    tr.model.poison = True
    with pytest.raises(TrainingError, match=r"optimizer step 11: the loss is nan"):
        tr.fit(progress_bar=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert tr.step == 10 and log_rows(tmp_path)[-1][0] == "10"


# ---------------------------------------------------------------------- batches, precision, layout
def test_two_micro_batches_equal_one_big_batch(tmp_path):
    one = make(tmp_path / "a", model=NoDrop, grad_accum=1, steps=5)
    two = make(tmp_path / "b", model=NoDrop, grad_accum=2, steps=5)
    one.fit(progress_bar=False)
    two.fit(progress_bar=False)
    for k, v in one.model.state_dict().items():
        torch.testing.assert_close(two.model.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    la, lb = log_rows(tmp_path / "a")[1:], log_rows(tmp_path / "b")[1:]
    assert [float(r[1]) for r in la] == pytest.approx([float(r[1]) for r in lb], rel=1e-5)
    with pytest.raises(ValueError, match=r"batch_size=10 .* divisible by world_size \* grad_accum = 1 \* 4"):
        make(tmp_path / "c", batch_size=10, grad_accum=4)


def test_bf16_autocast_runs_and_tracks_fp32(tmp_path):
    runs = {}
    for precision in ("fp32", "bf16"):
        tr = make(tmp_path / precision, model=NoDrop, precision=precision, steps=8)
        dtypes = []
        tr.model.mlp.inp.register_forward_hook(lambda m, i, o, d=dtypes: d.append(o.dtype))
        tr.fit(progress_bar=False)
        runs[precision] = [float(r[1]) for r in log_rows(tmp_path / precision)[1:]]
        assert set(dtypes) == {torch.bfloat16 if precision == "bf16" else torch.float32}
        assert all(p.dtype == torch.float32 for p in tr.model.parameters())
    assert runs["bf16"] == pytest.approx(runs["fp32"], rel=3e-2)
    with pytest.raises(ValueError, match=r"train.precision must be one of fp32, bf16, got 'fp16'"):
        make(tmp_path / "x", precision="fp16")


def test_channels_last_images_in_bf16(tmp_path):
    data = torch.rand(64, 1, 8, 8) * 2 - 1
    tr = make(tmp_path, model=TinyConv, data=data, channels_last=True, precision="bf16", steps=4)
    tr.fit(progress_bar=False)
    assert tr.model.inp.weight.is_contiguous(memory_format=torch.channels_last)
    assert tr.model.seen_formats and all(tr.model.seen_formats)
    assert math.isfinite(float(log_rows(tmp_path)[-1][1]))
    with pytest.raises(ValueError, match=r"channels_last applies to image data"):
        make(tmp_path / "x", channels_last=True)


def test_warmup_then_cosine_learning_rate(tmp_path):
    tr = make(tmp_path, warmup=4, steps=12, lr=1e-2)
    tr.fit(progress_bar=False)
    lrs = [float(r[2]) for r in log_rows(tmp_path)[1:]]
    expect = [1e-2 * min(1, (s + 1) / 4) * 0.5 * (1 + math.cos(math.pi * s / 12)) for s in range(12)]
    assert lrs == pytest.approx(expect, rel=1e-7)


# ---------------------------------------------------------------------- labels, callbacks, logs
def test_labels_reach_the_model_and_dropout_uses_the_null_class(tmp_path):
    data = make_toy2d("moons", 256, seed=0)
    labels = torch.arange(256) % 3
    model = CondMLP(3)
    torch.manual_seed(0)
    cfg = TrainConfig(steps=10, batch_size=64, ckpt_every=0, label_dropout=0.25)
    tr = Trainer(GaussianDiffusion(timesteps=T), model, data, cfg, tmp_path, labels=labels, num_classes=3)
    tr.fit(progress_bar=False)
    seen = torch.cat(model.seen)
    dropped = (seen == 3).float().mean().item()
    assert seen.numel() == 640 and 0.15 < dropped < 0.35 and set(seen.tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match=r"label_dropout=0.25 needs class labels"):
        Trainer(GaussianDiffusion(timesteps=T), model, data, cfg, tmp_path)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes\) = \[0, 2\)"):
        Trainer(GaussianDiffusion(timesteps=T), model, data, cfg, tmp_path, labels=labels, num_classes=2)


def test_sample_callback_sees_the_ema_and_moves_no_rng(tmp_path):
    calls = []

    def on_sample(step, ema_model):
        calls.append((step, ema_model is tr.ema.model, torch.is_grad_enabled()))
        torch.randn(10), np.random.rand(3), random.random()  # must not change the training

    tr = make(tmp_path / "a", steps=6, sample_every=2)
    tr.on_sample = on_sample
    tr.fit(progress_bar=False)
    plain = make(tmp_path / "b", steps=6, sample_every=2)
    plain.fit(progress_bar=False)
    assert calls == [(2, True, False), (4, True, False), (6, True, False)]
    assert log_rows(tmp_path / "a") == log_rows(tmp_path / "b")


def test_tensorboard_is_used_only_when_importable(tmp_path, monkeypatch):
    make(tmp_path / "none", steps=2).fit(progress_bar=False)  # tensorboard is not installed here
    assert not (tmp_path / "none" / "tensorboard").exists()
    scalars = []

    class Writer:
        def __init__(self, log_dir, purge_step=None):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, step))

        def close(self):
            scalars.append(("closed", -1))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    make(tmp_path / "tb", steps=2).fit(progress_bar=False)
    assert ("train/loss", 2) in scalars and ("train/lr", 1) in scalars and scalars[-1] == ("closed", -1)


def test_compile_failure_is_reported_clearly(tmp_path, monkeypatch):
    def broken(_module):
        def call(*args, **kwargs):
            raise RuntimeError("inductor exploded")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    tr = make(tmp_path, compile=True)
    with pytest.raises(RuntimeError, match=r"compile failed .*inductor exploded.*train.compile = false"):
        tr.fit(progress_bar=False)


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    eager = make(tmp_path / "e", model=NoDrop, steps=3)
    eager.fit(progress_bar=False)
    compiled = make(tmp_path / "c", model=NoDrop, steps=3, compile=True)
    compiled.fit(progress_bar=False)
    for k, v in eager.model.state_dict().items():
        torch.testing.assert_close(compiled.model.state_dict()[k], v, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- checkpoints
def test_retention_keeps_exactly_the_newest_files(tmp_path):
    tr = make(tmp_path, steps=20, ckpt_every=3, keep_checkpoints=2)
    tr.fit(progress_bar=False)
    assert list(list_checkpoints(tmp_path)) == [18, 20]
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-000018.pt", "step-000020.pt"]
    latest = (tmp_path / "checkpoint.pt").read_bytes()
    assert latest == (tmp_path / "checkpoints" / "step-000020.pt").read_bytes()
    assert load_checkpoint(tmp_path)["step"] == 20 and load_checkpoint(tmp_path, 18)["step"] == 18
    (tmp_path / "checkpoint.pt").unlink()  # a kill between a step file and its link
    assert load_checkpoint(tmp_path, "latest")["step"] == 20
    none = make(tmp_path / "zero", steps=6, ckpt_every=2, keep_checkpoints=0)
    none.fit(progress_bar=False)
    assert list_checkpoints(tmp_path / "zero") == {} and load_checkpoint(tmp_path / "zero")["step"] == 6
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 7 .* available steps: 18, 20"):
        tr.resume(7)


def test_a_crash_inside_the_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    target.write_bytes(b"good")

    def crash(tmp):
        Path(tmp).write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, crash)
    assert target.read_bytes() == b"good" and temps(tmp_path) == []

    tr = make(tmp_path / "run", steps=5)
    tr.fit(progress_bar=False)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    real_save = torch.save

    def dying_save(obj, path):
        real_save({"partial": True}, path)
        raise KeyboardInterrupt  # anything, even an interrupt, mid-write

    monkeypatch.setattr(ckpt_mod.torch, "save", dying_save)
    tr.step = 7
    with pytest.raises(KeyboardInterrupt):
        tr.save()
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
    assert temps(tmp_path / "run") == [] and list(list_checkpoints(tmp_path / "run")) == [5]


def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path):
    full = make(tmp_path / "full")
    full.fit(progress_bar=False)

    first = make(tmp_path / "split")
    first.fit(progress_bar=False, until=10)
    again = make(tmp_path / "split", seed=123)  # different initial weights: all must come from the file
    assert again.resume() == 10
    again.fit(progress_bar=False)
    assert log_rows(tmp_path / "split") == log_rows(tmp_path / "full")  # 20 rows, one header
    assert same_state(again.model.state_dict(), full.model.state_dict())
    assert same_state(again.ema.model.state_dict(), full.ema.model.state_dict())

    # from an older step-numbered checkpoint: the log is cut back and rebuilt identically
    back = make(tmp_path / "split", seed=7)
    assert back.resume(15) == 15 and len(log_rows(tmp_path / "split")) == 21
    back.fit(progress_bar=False)
    assert log_rows(tmp_path / "split") == log_rows(tmp_path / "full")
    assert same_state(back.model.state_dict(), full.model.state_dict())


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))

    def start(run, mode):
        return subprocess.Popen([sys.executable, __file__, str(run), "60", mode], env=env)

    reference = start(tmp_path / "ref", "fresh")
    victim = start(tmp_path / "run", "slow")
    deadline = time.monotonic() + 60
    while not list_checkpoints(tmp_path / "run"):
        assert victim.poll() is None and time.monotonic() < deadline, "the run ended before a checkpoint"
        time.sleep(0.01)
    time.sleep(0.15)  # let it log a few steps past the checkpoint
    assert victim.poll() is None, "the run finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = load_checkpoint(tmp_path / "run")["step"]
    assert 0 < killed_at < 60
    assert start(tmp_path / "run", "resume").wait() == 0
    assert reference.wait() == 0
    assert log_rows(tmp_path / "run") == log_rows(tmp_path / "ref")
    done, ref = load_checkpoint(tmp_path / "run"), load_checkpoint(tmp_path / "ref")
    assert done["step"] == ref["step"] == 60
    assert same_state(done["model"], ref["model"]) and same_state(done["ema"]["model"], ref["ema"]["model"])


def _script(run: str, steps: str, mode: str) -> None:
    """``fresh``: train; ``slow``: train with a slow, RNG-hungry sample callback (to be killed);
    ``resume``: continue from the latest checkpoint."""
    torch.set_num_threads(1)
    tr = make(run, steps=int(steps), ckpt_every=5, sample_every=1 if mode == "slow" else 0)
    if mode == "slow":

        def slow_sample(step, model):
            time.sleep(0.03)
            torch.randn(5), np.random.rand(), random.random()

        tr.on_sample = slow_sample
    if mode == "resume":
        tr.resume()
    tr.fit(progress_bar=False)


if __name__ == "__main__":
    _script(*sys.argv[1:4])
