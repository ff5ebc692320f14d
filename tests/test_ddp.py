"""Data-parallel training equals single-process training with the same global batch.

The test launches this file under ``torchrun --nproc_per_node=2`` (gloo on the CPU). Each rank draws
the same global batch and keeps half of it, in two micro-batches; DDP averages the gradients. After
a checkpoint, a fresh trainer resumes on both ranks. The final weights, EMA and logged losses must
match one process that sees the whole batch at once.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from difflab import GaussianDiffusion
from difflab.config import TrainConfig
from difflab.data import make_toy2d_with_labels
from difflab.nets import MLPDenoiser
from difflab.train import Trainer, load_checkpoint

T, STEPS, CLASSES = 50, 6, 2


class CondMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = MLPDenoiser(2, hidden=32, depth=1, emb_dim=16, timesteps=T)
        nn.init.normal_(self.mlp.out.weight, std=0.3)
        self.emb = nn.Embedding(CLASSES + 1, 2)
        self.rows = 0

    def forward(self, x, t, y):
        self.rows += x.shape[0]
        return self.mlp(x + self.emb(y), t)


def make(run, grad_accum: int, seed: int = 0) -> Trainer:
    torch.manual_seed(seed)
    data, labels = make_toy2d_with_labels("moons", 256, seed=0)
    cfg = TrainConfig(steps=STEPS, batch_size=16, lr=5e-3, warmup=2, ckpt_every=3, log_every=1,
                      keep_checkpoints=2, grad_accum=grad_accum, label_dropout=0.3)
    return Trainer(GaussianDiffusion(timesteps=T), CondMLP(), data, cfg, run, labels=labels.long(),
                   num_classes=CLASSES)


def losses(run) -> list[float]:
    with open(Path(run) / "log.csv", newline="") as fh:
        return [float(row["loss"]) for row in csv.DictReader(fh)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
               PYTHONPATH=os.pathsep.join(sys.path))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", __file__, str(run)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]

    single = make(tmp_path / "one", grad_accum=1)
    single.fit(progress_bar=False)
    ddp = load_checkpoint(run)
    assert ddp["step"] == STEPS and ddp["world_size"] == 2
    ema = single.ema.model.state_dict()
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(ddp["model"][k], v, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ddp["ema"]["model"][k], ema[k], rtol=1e-5, atol=1e-6)
    for rank in (0, 1):
        out = torch.load(run / f"rank{rank}.pt")
        assert out["rows"] == [3 * 8, 3 * 8]  # each rank saw its half of every global batch
        for k, v in ddp["model"].items():
            assert torch.equal(out["model"][k], v), k  # the ranks never drift apart
    assert len(losses(run)) == STEPS
    torch.testing.assert_close(torch.tensor(losses(run)), torch.tensor(losses(tmp_path / "one")), rtol=1e-5,
                               atol=0)


def _worker(run: str) -> None:
    """Under torchrun: 3 steps, then a fresh trainer (other initial weights) resumes to the end."""
    first = make(run, grad_accum=2)
    assert first.dist.world_size == 2 and (first.ema is None) == (first.dist.rank != 0)
    first.fit(progress_bar=False, until=3)
    second = make(run, grad_accum=2, seed=1 + first.dist.rank)
    assert second.resume() == 3
    second.fit(progress_bar=False)
    out = {"model": second.model.state_dict(), "rows": [first.model.rows, second.model.rows]}
    torch.save(out, Path(run) / f"rank{second.dist.rank}.pt")


if __name__ == "__main__":
    _worker(sys.argv[1])
