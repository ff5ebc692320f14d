"""The command line end to end on a tiny toy job, and the config's validation."""

import json

import numpy as np
import pytest

from difflab import config as config_mod
from difflab.cli import main

TINY = [
    "--set",
    "diffusion.timesteps=100",
    "--set",
    "model.hidden=32",
    "--set",
    "model.depth=1",
    "--set",
    "model.emb_dim=16",
    "--set",
    "train.steps=30",
    "--set",
    "train.batch_size=64",
    "--set",
    "train.ckpt_every=10",
    "--set",
    "train.max_minutes=0",
    "--set",
    "data.n_train=1000",
    "--set",
    "data.n_test=200",
    "--set",
    "sample.n=300",
    "--set",
    "eval.n=300",
    "--set",
    "eval.bound_n=50",
    "--set",
    "eval.projections=50",
    "--set",
    "eval.floor_pairs=2",
]


def test_train_sample_eval_writes_the_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "toy2d", "--run", str(run), "--no-progress", *TINY]) == 0
    for name in ("config.toml", "checkpoint.pt", "model.safetensors", "log.csv", "train.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "train.json").read_text())["steps"] == 30
    # the resolved config round-trips, overrides included
    cfg = config_mod.load(str(run / "config.toml"))
    assert cfg.diffusion.timesteps == 100 and cfg.model.hidden == 32

    assert main(["sample", "--run", str(run), "--sampler", "ddim", "--steps", "10", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert '"nfe": 10' in out
    x = np.load(run / "samples.npy")
    assert x.shape == (300, 2) and np.isfinite(x).all()
    assert (run / "samples.png").stat().st_size > 1000

    assert main(["eval", "--run", str(run), "--no-progress"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["sliced_w2"] > 0 and m["sliced_w2_floor"] > 0
    # the metric says which samples it scored
    assert m["samples_drawn_by"]["sampler"] == "ddim" and m["samples_drawn_by"]["nfe"] == 10
    parts = m["bound_parts_nats_per_dim"]
    total = parts["prior"] + parts["diffusion"] + parts["decoder"]
    assert total == pytest.approx(m["bound_nats_per_dim"], rel=1e-9)

    # resume continues from step 30 to 40
    assert (
        main(
            [
                "train",
                "--config",
                str(run / "config.toml"),
                "--run",
                str(run),
                "--resume",
                "--no-progress",
                "--set",
                "train.steps=40",
            ]
        )
        == 0
    )
    assert json.loads((run / "train.json").read_text())["steps"] == 40


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    assert main(["train", "--config", "toy2d", "--run", str(tmp_path / "r"), "--set", "train.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'lrr' in [train]" in err and "lr" in err
    assert main(["train", "--config", "nope", "--run", str(tmp_path / "r")]) == 2
    assert "neither a file nor a preset" in capsys.readouterr().err
    assert main(["sample", "--run", str(tmp_path / "missing")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert (
        main(["train", "--config", "toy2d", "--run", str(tmp_path / "r"), "--set", "data.name=spiral"]) == 2
    )
    assert "unknown data.name 'spiral'" in capsys.readouterr().err


def test_config_validation():
    with pytest.raises(ValueError, match=r"train.steps must be of type int, got 'many'"):
        config_mod.load("toy2d", ["train.steps='many'"])
    with pytest.raises(ValueError, match=r"unknown config key 'trian'"):
        config_mod.from_dict({"trian": {}})
    cfg = config_mod.load("toy2d", ["train.lr=5e-4", "data.name=8gaussians"])
    assert cfg.train.lr == 5e-4 and cfg.data.name == "8gaussians"


@pytest.mark.parametrize("preset", ["toy2d", "digits", "mnist", "cifar10-ddpm"])
def test_presets_load_and_build(preset):
    from difflab.runs.build import build_model

    cfg = config_mod.load(preset)
    shape = {"toy2d": (2,), "digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10-ddpm": (3, 32, 32)}[preset]
    n = sum(p.numel() for p in build_model(cfg, shape).parameters())
    if preset == "cifar10-ddpm":
        assert abs(n - 35.7e6) < 0.5e6  # the DDPM paper's CIFAR-10 model size
