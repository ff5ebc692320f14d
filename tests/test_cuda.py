"""Checks that need a CUDA GPU (``-m cuda``; skipped without one). ``bench/gpu_check.sh`` runs them.

Each compares the GPU with the CPU on the same weights, batch, timesteps and noise: the training loss
and one AdamW step (TF32 off, so both are float32 to rounding), bf16 autocast against float32, and
deterministic DDIM sampling. No fixtures, so the functions also run without pytest
(``bench/gpu_check.py`` falls back to calling them directly)."""

from __future__ import annotations

import copy

import pytest
import torch

import difflab as dl
from difflab.nets.unet import UNet

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _setup(seed: int = 0):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(seed)
    model = UNet(3, channels=32, channel_mult=(1, 2), attention_resolutions=(8,), image_size=16, dropout=0.0)
    with torch.no_grad():  # leave no layer at its zero initialisation
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    g = torch.Generator().manual_seed(seed + 1)
    x0 = torch.rand(8, 3, 16, 16, generator=g) * 2 - 1
    t = torch.randint(0, 1000, (8,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    return dl.GaussianDiffusion("linear", 1000), model, x0, t, noise


def _step(diffusion, model, x0, t, noise, device):
    model = copy.deepcopy(model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # t stays on the CPU, as the trainer passes it
    loss = diffusion.loss(model, x0.to(device), t, noise.to(device)).mean()
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = diffusion.loss(model, x0.to(device), t, noise.to(device)).mean()
    return float(loss), float(after)


@pytest.mark.cuda
@cuda
def test_training_step_on_cuda_matches_cpu():
    diffusion, model, x0, t, noise = _setup()
    cpu = _step(diffusion, model, x0, t, noise, "cpu")
    gpu = _step(diffusion, model, x0, t, noise, "cuda")
    assert gpu[0] == pytest.approx(cpu[0], rel=1e-4)
    assert gpu[1] == pytest.approx(cpu[1], rel=1e-3)  # after one AdamW step on the same gradients
    assert gpu[1] < gpu[0]


@pytest.mark.cuda
@cuda
def test_bf16_autocast_trains_close_to_fp32():
    diffusion, model, x0, t, noise = _setup(1)
    model = model.cuda()
    args = (x0.cuda(), t, noise.cuda())
    fp32 = diffusion.loss(model, *args).mean()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = diffusion.loss(model, *args).mean()
    bf16.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(bf16) and all(bool(torch.isfinite(g).all()) for g in grads)
    assert float(bf16) == pytest.approx(float(fp32), rel=0.05)


@pytest.mark.cuda
@cuda
def test_ddim_sampling_on_cuda_matches_cpu():
    diffusion, model, *_ = _setup(2)
    model.eval()
    x_T = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    kw = dict(sampler="ddim", steps=20, clip=(-1.0, 1.0))
    cpu = diffusion.sample(model, x_T.shape, x_T=x_T, **kw)
    gpu = diffusion.sample(model.cuda(), x_T.shape, x_T=x_T.cuda(), device="cuda", **kw)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_gpu_check_fails_fast_without_a_gpu(tmp_path):
    """bench/gpu_check.sh on a machine without a GPU: one message, exit status 3, within seconds."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["bash", str(script), str(tmp_path / "out.json")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "no CUDA GPU" in proc.stderr
    assert time.perf_counter() - t0 < 60 and not (tmp_path / "out.json").exists()
