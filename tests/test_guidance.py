"""Classifier-free guidance: the combination, one batched call per step, its exact effect on
Gaussian classes, and ``difflab sample --class K --guidance S``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import difflab as dl
from difflab import guidance
from difflab.cli import main
from difflab.oracles import GaussianOracle
from difflab.processes import EDMDiffusion

NULL = 3  # three classes 0, 1, 2 and the null class 3


class LinearConditional:
    """``out = a[y] x + b[y] + t/1000``: known conditional and unconditional outputs; records calls."""

    def __init__(self):
        self.a = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
        self.b = torch.tensor([1.0, 2.0, -3.0, 0.5], dtype=torch.float64)
        self.calls: list[tuple[int, torch.Tensor]] = []

    def __call__(self, x, t, y):
        self.calls.append((x.shape[0], y.clone()))
        shape = (-1, *([1] * (x.dim() - 1)))
        return self.a[y].reshape(shape).to(x.dtype) * x + self.b[y].reshape(shape).to(x.dtype) + (
            t.reshape(shape).to(x.dtype) / 1000
        )


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5, -0.5])
def test_guided_output_is_the_documented_combination(scale):
    model = LinearConditional()
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.full((6,), 10.0)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    out = guidance.cfg(model, y, scale, NULL)(x, t)
    a, b = model.a, model.b
    cond = a[y, None] * x + b[y, None] + 0.01
    uncond = a[NULL] * x + b[NULL] + 0.01
    torch.testing.assert_close(out, uncond + scale * (cond - uncond))
    if scale == 1.0:  # the conditional model itself, no unconditional half
        assert [n for n, _ in model.calls] == [6]
    else:  # one batched call on [x; x] with labels [y; null]
        assert len(model.calls) == 1 and model.calls[0][0] == 12
        assert model.calls[0][1].tolist() == y.tolist() + [NULL] * 6


def test_one_batched_network_call_per_sampler_step():
    model = LinearConditional()
    d = dl.GaussianDiffusion("linear", 100)
    x, nfe = d.sample(guidance.cfg(model, 1, 2.0, NULL), (5, 2), sampler="ddim", steps=10,
                      generator=torch.Generator().manual_seed(1), return_nfe=True)
    assert nfe == 10 and len(model.calls) == 10
    assert all(n == 10 and y.tolist() == [1] * 5 + [NULL] * 5 for n, y in model.calls)


class GaussianClasses:
    """Exact conditional denoisers: class k is N(mu_k, S^2), the null class N(MU_NULL, S^2)."""

    def __init__(self, diffusion, means, null_mean, s):
        self.oracles = [GaussianOracle(diffusion, m, s) for m in [*means, null_mean]]

    def __call__(self, x, t, y):
        outs = torch.stack([o(x, t) for o in self.oracles])  # [K+1, B, D]
        return outs[y, torch.arange(x.shape[0])]


@pytest.mark.parametrize("process", ["vp", "edm"])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_guidance_moves_gaussian_classes_exactly(process, scale):
    """For Gaussian classes of a common std the denoiser is affine in the class mean with weights
    summing to one, so guidance at scale w samples N(mu_u + w (mu_c - mu_u), S^2) exactly."""
    d = dl.GaussianDiffusion("cosine", 1000) if process == "vp" else EDMDiffusion()
    means, null_mean, s = [-0.6, 0.2, 0.9], 0.1, 0.2
    model = GaussianClasses(d, means, null_mean, s)
    n = 6000
    y = torch.arange(n) % 3
    x = d.sample(guidance.cfg(model, y, scale, null_class=3), (n, 1), sampler="dpm++2m", steps=50,
                 dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for k, mu in enumerate(means):
        xk = x[y == k]
        want = null_mean + scale * (mu - null_mean)
        assert abs(xk.mean().item() - want) < 0.02, (k, xk.mean().item(), want)
        assert abs(xk.std().item() - s) < 0.03 * s, (k, xk.std().item())


def test_bad_arguments_are_named():
    model = LinearConditional()
    with pytest.raises(ValueError, match="labels must lie in \\[0, 3\\)"):
        guidance.cfg(model, torch.tensor([0, 3]), 2.0, NULL)
    with pytest.raises(ValueError, match="guidance scale must be a finite number"):
        guidance.cfg(model, 0, float("nan"), NULL)
    with pytest.raises(ValueError, match="2 labels for a batch of 3 rows"):
        guidance.cfg(model, torch.tensor([0, 1]), 2.0, NULL)(torch.zeros(3, 2), torch.zeros(3))


# ---------------------------------------------------------------------- command line
DIGITS = ["--config", "digits", "--no-progress", "--set", "train.steps=2", "--set", "train.max_minutes=0",
          "--set", "model.channels=8", "--set", "train.batch_size=16"]


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cond") / "run"
    args = ["--set", "model.num_classes=10", "--set", "train.label_dropout=0.1"]
    assert main(["train", "--run", str(run), *DIGITS, *args]) == 0
    return run


def test_cli_samples_one_class_with_guidance(conditional_run, capsys):
    run = conditional_run
    argv = ["sample", "--run", str(run), "--sampler", "dpm++2m", "--steps", "4", "--n", "6", "--no-progress"]
    assert main([*argv, "--class", "7", "--guidance", "2.5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["class"] == 7 and out["guidance"] == 2.5 and out["nfe"] == 4
    x = np.load(run / "samples.npy")
    assert x.shape == (6, 1, 8, 8) and np.isfinite(x).all()
    assert main([*argv, "--guidance", "2"]) == 0  # classes cycle 0..9
    assert main([*argv, "--class", "10"]) == 2
    assert "class 10 is out of range: this model has classes 0..9" in capsys.readouterr().err


def test_cli_guidance_needs_a_conditional_model_trained_with_label_dropout(tmp_path, capsys):
    run = tmp_path / "plain"
    assert main(["train", "--run", str(run), *DIGITS, "--set", "model.num_classes=10"]) == 0
    argv = ["sample", "--run", str(run), "--steps", "2", "--n", "2", "--sampler", "ddim", "--no-progress"]
    assert main([*argv, "--guidance", "2"]) == 2
    assert "train.label_dropout > 0" in capsys.readouterr().err
    assert main([*argv, "--class", "3"]) == 0  # plain conditional sampling needs no null class
    uncond = tmp_path / "uncond"
    assert main(["train", "--run", str(uncond), *DIGITS]) == 0
    argv = ["sample", "--run", str(uncond), "--steps", "2", "--n", "2", "--no-progress"]
    assert main([*argv, "--class", "1"]) == 2
    assert "need a class-conditional model" in capsys.readouterr().err
