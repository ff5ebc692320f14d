"""The parts of difflab.interop that do not need diffusers installed: the scheduler mapping, the
timestep spacings, and the one-line error that names the extra."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import difflab as dl
from difflab.interop import diffusers_timesteps, map_scheduler, scheduler_config_for


def test_spacings_for_1000_steps_and_10_samples():
    """The table of Lin et al. (2024) for T = 1000, n = 10."""
    assert diffusers_timesteps(1000, 10, "leading").tolist() == list(range(900, -1, -100))
    assert diffusers_timesteps(1000, 10, "leading", steps_offset=1).tolist() == list(range(901, 0, -100))
    assert diffusers_timesteps(1000, 10, "trailing").tolist() == list(range(999, 98, -100))
    assert diffusers_timesteps(1000, 10, "linspace").tolist() == [
        999,
        888,
        777,
        666,
        555,
        444,
        333,
        222,
        111,
        0,
    ]
    with pytest.raises(ValueError, match="'even'.*linspace, leading, trailing"):
        diffusers_timesteps(1000, 10, "even")


def test_named_schedules_map_onto_difflab_names():
    d, m = map_scheduler({"_class_name": "DDPMScheduler", "beta_schedule": "linear"})
    assert m.schedule == "linear"
    torch.testing.assert_close(d.schedule.betas, dl.GaussianDiffusion("linear", 1000).schedule.betas)
    d, m = map_scheduler({"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 400})
    assert m.schedule == "cosine"
    torch.testing.assert_close(d.schedule.betas, dl.GaussianDiffusion("cosine", 400).schedule.betas)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize(
    "prediction, variance", [("eps", "fixed_small"), ("v", "learned"), ("x0", "fixed_large")]
)
def test_scheduler_config_round_trip(schedule, prediction, variance):
    diffusion = dl.GaussianDiffusion(schedule, 1000, prediction, variance)
    back, mapping = map_scheduler(json.loads(json.dumps(scheduler_config_for(diffusion))))
    assert (back.prediction, back.variance) == (prediction, variance)
    torch.testing.assert_close(back.schedule.betas, diffusion.schedule.betas, rtol=1e-10, atol=0)


def test_missing_diffusers_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(
        json.dumps({"_class_name": "UNet2DModel", "in_channels": 1, "out_channels": 1, "sample_size": 8})
    )
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler"}))
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(
        RuntimeError,
        match=r"^reading diffusers models needs the diffusers package: "
        r"pip install 'difflab\[diffusers\]'$",
    ):
        dl.from_diffusers(tmp_path)
