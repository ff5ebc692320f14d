"""Autoencoder and latent diffusion runs through the run-folder jobs: train, sample in pixel space, the
bounds, and the one-line refusals (missing autoencoder, wrong kind of run, changed fingerprint)."""

import json
import math

import numpy as np
import pytest
import torch

from difflab import config as config_mod
from difflab import runs as jobs
from difflab.cli import main

FAST = ["train.steps=3", "train.log_every=1", "train.threads=1", "train.batch_size=16", "eval.bound_n=4",
        "eval.iwae_k=[1, 5]"]


def _cfg(preset, *extra):
    return config_mod.load(preset, [*FAST, *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    ae, ldm = root / "ae", root / "ldm"
    jobs.train(_cfg("digits-vae"), ae, progress=False)
    jobs.train(_cfg("digits-ldm", f"latent.autoencoder={ae}", "model.channels=8", "train.sample_every=3"),
               ldm, progress=False)
    return root, ae, ldm


def test_latent_run_samples_pixels_in_the_data_range(runs):
    _, ae, ldm = runs
    assert (ldm / "grids" / "step-0000003.png").is_file()  # train.sample_every
    info = json.loads((ldm / "latent.json").read_text())
    assert info["latent_shape"] == [2, 4, 4] and info["scale"] > 0
    out = jobs.sample(ldm, sampler="ddim", steps=5, n=6, progress=False)
    x = np.load(ldm / "samples.npy")
    assert out["nfe"] == 5 and x.shape == (6, 1, 8, 8)
    assert x.min() >= -1 and x.max() <= 1
    jobs.sample(ae, n=3, progress=False)
    assert np.load(ae / "samples.npy").shape == (3, 1, 8, 8)


def test_bounds_of_autoencoder_and_latent_runs(runs):
    _, ae, ldm = runs
    m = jobs.bound(ae, n=4, progress=False)
    parts = m["bound_parts_bits_per_dim"]
    assert math.isclose(m["bound_bits_per_dim"], parts["reconstruction"] + parts["kl"], rel_tol=1e-6)
    assert set(m["iwae_bits_per_dim"]) == {"1", "5"}
    m = jobs.bound(ldm, n=4, progress=False)
    p = m["bound_parts_bits_per_dim"]
    total = p["decoder"] + p["latent"] + p["minus_entropy"]
    assert math.isclose(m["bound_bits_per_dim"], total, rel_tol=1e-6)
    # the decoder part of a 17-level image can never exceed log2(17) bits/dim, nor be negative
    assert 0 <= p["decoder"] <= math.log2(17)


def test_refusals_name_the_bad_value(runs, tmp_path, capsys):
    root, ae, ldm = runs
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="latent.autoencoder = .*nowhere.* is not a run folder"):
        jobs.train(_cfg("digits-ldm", f"latent.autoencoder={missing}"), tmp_path / "a", progress=False)
    vae = root / "plain-vae"
    jobs.train(_cfg("digits-vae", "vae.kind=vae"), vae, progress=False)
    with pytest.raises(ValueError, match="vae.kind = 'vae'.* run; latent diffusion needs a KL autoencoder"):
        jobs.train(_cfg("digits-ldm", f"latent.autoencoder={vae}"), tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="model.num_classes=10 does not apply to an autoencoder run"):
        jobs.train(_cfg("digits-vae", "model.num_classes=10"), tmp_path / "d", progress=False)
    with pytest.raises(ValueError, match="unknown vae.kind 'gan'"):
        jobs.train(_cfg("digits-vae", "vae.kind=gan"), tmp_path / "c", progress=False)
    # a changed autoencoder: sampling and resuming the latent run are refused
    weights = ae / "model.safetensors"
    saved = weights.read_bytes()
    try:
        from safetensors.torch import load_file, save_file

        state = load_file(str(weights))
        key = next(iter(state))
        state[key] = state[key] + 1.0
        save_file(state, str(weights))
        with pytest.raises(ValueError, match="changed since .* was trained on it"):
            jobs.sample(ldm, n=2, progress=False)
        rc = main(["train", "--config", "digits-ldm", "--run", str(ldm), "--resume",
                   *sum((["--set", s] for s in [*FAST, f"latent.autoencoder={ae}", "model.channels=8"]), [])])
        assert rc == 2 and "changed since" in capsys.readouterr().err
    finally:
        weights.write_bytes(saved)


def test_latent_training_resumes_exactly(runs, tmp_path):
    _, ae, _ = runs
    cfg = _cfg("digits-ldm", f"latent.autoencoder={ae}", "model.channels=8", "train.steps=4",
               "train.ckpt_every=2", "train.lr_schedule=constant")
    a, b = tmp_path / "a", tmp_path / "b"
    jobs.train(cfg, a, progress=False)
    short = _cfg("digits-ldm", f"latent.autoencoder={ae}", "model.channels=8", "train.steps=2",
                 "train.ckpt_every=2", "train.lr_schedule=constant")
    jobs.train(short, b, progress=False)
    jobs.train(cfg, b, resume="latest", progress=False)
    def rows(run):  # step, loss, lr, grad_norm (not the seconds)
        return [line.split(",")[:4] for line in (run / "log.csv").read_text().splitlines()]

    assert len(rows(a)) == 5 and rows(a) == rows(b)


@pytest.mark.parametrize("process", ["vdm", "edm", "flow"])
def test_other_processes_and_guidance_on_latents(runs, tmp_path, process):
    _, ae, _ = runs
    run = tmp_path / process
    cfg = _cfg("digits-ldm", f"latent.autoencoder={ae}", "model.channels=8", f"diffusion.process={process}",
               "model.num_classes=10", "train.label_dropout=0.2")
    jobs.train(cfg, run, progress=False)
    out = jobs.sample(run, sampler="heun", steps=3, n=4, guidance=2.0, progress=False)
    x = np.load(run / "samples.npy")
    assert out["nfe"] == 5 and x.shape == (4, 1, 8, 8) and np.isfinite(x).all()
    if process == "vdm":
        assert math.isfinite(jobs.bound(run, n=4, progress=False)["bound_bits_per_dim"])
    else:
        with pytest.raises(ValueError, match="has no variational bound"):
            jobs.bound(run, n=4, progress=False)


def test_pixel_only_likelihoods_refuse_autoencoder_and_latent_runs(runs, capsys):
    _, ae, ldm = runs
    assert main(["eval", "bpd", "--run", str(ldm), "--n", "2", "--ode", "--no-progress"]) == 2
    assert "autoencoder or latent diffusion run" in capsys.readouterr().err
    assert main(["viz", "vlb", "--run", str(ae)]) == 2
    assert "autoencoder or latent diffusion run" in capsys.readouterr().err
    assert main(["eval", "bpd", "--run", str(ae), "--n", "2", "--ode-decoder", "--no-progress"]) == 2
    assert "--ode-decoder scores grid images" in capsys.readouterr().err


@pytest.mark.parametrize("pair, side, latent", [(("digits-vae", "digits-ldm"), 8, (2, 4, 4)),
                                                (("mnist-vae", "mnist-ldm"), 28, (4, 7, 7))])
def test_presets_build(pair, side, latent):
    from difflab.runs.build import Splits, build_model
    from difflab.vae.jobs import build_autoencoder

    x = torch.zeros(2, 1, side, side)
    ae = build_autoencoder(config_mod.load(pair[0]), Splits(x, x, bins=17 if side == 8 else 256))
    assert ae.latent_shape == latent
    net = build_model(config_mod.load(pair[1]), latent)
    assert net(torch.zeros(2, *latent), torch.zeros(2)).shape == (2, *latent)
