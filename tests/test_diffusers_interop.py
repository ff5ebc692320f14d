"""diffusers interop: loaded models and samplers against diffusers itself, exported runs read back by
diffusers. Every reference number comes from diffusers' own classes on randomly initialised models
saved into tmp_path (nothing is downloaded)."""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import difflab as dl  # noqa: E402
from difflab import samplers  # noqa: E402
from difflab.interop import diffusers_timesteps, from_diffusers  # noqa: E402
from difflab.interop.schedule_map import map_scheduler  # noqa: E402

T = 100


def tiny_unet(**kw) -> diffusers.UNet2DModel:
    torch.manual_seed(0)
    args = dict(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
    )
    args.update(kw)
    unet = diffusers.UNet2DModel(**args)
    return perturbed(unet).eval()


def perturbed(module):
    """``module`` with every weight moved off its initialisation: the zero-initialised layers of a
    fresh model would hide mapping errors."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module


def scheduler(cls=None, **kw):
    """A diffusers scheduler on the linear betas 1e-3..0.2 over T = 100 steps, clip_sample off."""
    cls = cls or diffusers.DDPMScheduler
    return cls(**{"num_train_timesteps": T, "beta_start": 1e-3, "beta_end": 0.2, "clip_sample": False, **kw})


def save_pipeline(tmp_path, unet, scheduler, name="pipe"):
    folder = tmp_path / name
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


@pytest.fixture
def linear_pipe(tmp_path):
    return save_pipeline(tmp_path, tiny_unet(), scheduler())


def test_loaded_model_returns_diffusers_outputs(linear_pipe):
    diffusion, model = from_diffusers(linear_pipe)
    ref = diffusers.UNet2DModel.from_pretrained(linear_pipe / "unet").eval()
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([0.0, 41.0, 99.0])
    with torch.no_grad():
        want = ref(x, t.long()).sample
        got = model(x, t)
        frac = model(x, torch.tensor([10.5, 10.5, 10.5]))
        want_frac = ref(x, torch.tensor([10.5, 10.5, 10.5])).sample
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(frac, want_frac, rtol=0, atol=1e-6)
    assert diffusion.timesteps == T and diffusion.prediction == "eps" and diffusion.variance == "fixed_small"


@pytest.mark.parametrize(
    "kw",
    [
        dict(beta_schedule="linear", beta_start=1e-3, beta_end=0.2),
        dict(beta_schedule="scaled_linear", beta_start=1e-3, beta_end=0.05),
        dict(beta_schedule="squaredcos_cap_v2"),
        dict(beta_schedule="sigmoid", beta_start=1e-3, beta_end=0.2),
        dict(trained_betas=torch.linspace(2e-3, 0.1, T).tolist()),
    ],
)
def test_schedules_match_diffusers_alphas_cumprod(kw):
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, **kw)
    diffusion, _ = map_scheduler(dict(sched.config, _class_name="DDPMScheduler"))
    torch.testing.assert_close(
        diffusion.schedule.alpha_bar.float(), sched.alphas_cumprod, rtol=2e-6, atol=1e-7
    )


@pytest.mark.parametrize(
    "key, value",
    [
        ("prediction_type", "flow"),
        ("variance_type", "learned"),
        ("beta_schedule", "laplace"),
        ("rescale_betas_zero_snr", True),
        ("thresholding", True),
        ("_class_name", "ScoreSdeVeScheduler"),
    ],
)
def test_refuses_what_does_not_map(key, value):
    cfg = dict(diffusers.DDPMScheduler(num_train_timesteps=T).config, _class_name="DDPMScheduler")
    cfg[key] = value
    with pytest.raises(ValueError, match=str(value) if not isinstance(value, bool) else key):
        map_scheduler(cfg)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_timesteps_match_set_timesteps(spacing):
    for steps in (1, 7, 10, 33, T):
        sched = diffusers.DDPMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
        sched.set_timesteps(steps)
        torch.testing.assert_close(diffusers_timesteps(T, steps, spacing), sched.timesteps.double())


def test_linspace_is_difflab_uniform():
    s = dl.GaussianDiffusion("linear", 1000)
    for steps in (3, 10, 50, 333, 1000):
        torch.testing.assert_close(
            diffusers_timesteps(1000, steps, "linspace"), s.timesteps_for(steps, "uniform")
        )


def _scheduler_loop(sched, unet, x, steps, generator, **step_kw):
    sched.set_timesteps(steps)
    states = []
    for t in sched.timesteps:
        with torch.no_grad():
            out = unet(x, t).sample
        x = sched.step(out, t, x, generator=generator, **step_kw).prev_sample
        states.append(x)
    return states


@pytest.mark.parametrize(
    "case",
    [
        "fixed_small epsilon leading",
        "fixed_large sample linspace",
        "fixed_small v_prediction trailing",
        "learned_range epsilon leading",
    ],
)
def test_ancestral_reproduces_ddpm_scheduler(tmp_path, case):
    """DDPMScheduler.step on its ``timestep_spacing`` = difflab's ancestral sampler on
    ``diffusers_timesteps``: every intermediate state, from the same x_T and the same noise draws.
    ``case``: variance_type, prediction_type, timestep_spacing."""
    variance, prediction, spacing = case.split()
    sched = scheduler(variance_type=variance, prediction_type=prediction, timestep_spacing=spacing)
    folder = save_pipeline(tmp_path, tiny_unet(out_channels=2 if variance == "learned_range" else 1), sched)
    diffusion, model = from_diffusers(folder)
    ref = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    steps = 10
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    want = _scheduler_loop(sched, ref, x_T, steps, torch.Generator().manual_seed(5))
    levels = samplers.make_levels(diffusion.schedule, diffusers_timesteps(T, steps, spacing))
    got = []
    samplers.ancestral(
        diffusion.denoiser(model),
        x_T,
        levels,
        variance=diffusion.variance,
        generator=torch.Generator().manual_seed(5),
        callback=lambda i, x: got.append(x),
    )
    assert len(got) == len(want) == steps
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_clipped_ancestral_matches_clip_sample(linear_pipe):
    """``clip_sample=True`` (diffusers' default) = difflab's ``clip=(-1, 1)``."""
    sched = scheduler(clip_sample=True)
    diffusion, model = from_diffusers(linear_pipe)
    ref = diffusers.UNet2DModel.from_pretrained(linear_pipe / "unet").eval()
    x_T = 3 * torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    want = _scheduler_loop(sched, ref, x_T, 8, torch.Generator().manual_seed(2))[-1]
    levels = samplers.make_levels(diffusion.schedule, diffusers_timesteps(T, 8, "leading"))
    got = samplers.ancestral(
        diffusion.denoiser(model, clip=(-1.0, 1.0)), x_T, levels, generator=torch.Generator().manual_seed(2)
    )
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_reproduces_ddim_scheduler(linear_pipe, spacing, eta):
    """DDIMScheduler (set_alpha_to_one, clip_sample off) steps from t to t - T // n: difflab's ddim on
    the leading / trailing timesteps, for several step counts, from the same x_T and noise."""
    diffusion, model = from_diffusers(linear_pipe)
    ref = diffusers.UNet2DModel.from_pretrained(linear_pipe / "unet").eval()
    for steps in (1, 4, 10):  # trailing: t - T // n is the next listed timestep only when n divides T
        sched = scheduler(diffusers.DDIMScheduler, timestep_spacing=spacing, set_alpha_to_one=True)
        x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(steps))
        want = _scheduler_loop(sched, ref, x_T, steps, torch.Generator().manual_seed(9), eta=eta)[-1]
        levels = samplers.make_levels(diffusion.schedule, diffusers_timesteps(T, steps, spacing))
        got = samplers.ddim(
            diffusion.denoiser(model), x_T, levels, eta=eta, generator=torch.Generator().manual_seed(9)
        )
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------- export: difflab run -> diffusers


def make_run(tmp_path, *overrides: str, name: str = "run"):
    """A digits U-Net run folder with random (non-zero) weights; no training."""
    from safetensors.torch import save_file

    from difflab import config
    from difflab.runs.build import build_model

    # the digits U-Net at 32 channels (diffusers' GroupNorm takes 32 groups) with attention at 4x4
    base = ["model.channels=32", "model.attention_resolutions=[4]", "model.dropout=0.1"]
    cfg = config.load("digits", base + list(overrides))
    run = tmp_path / name
    run.mkdir()
    config.save(cfg, run / "config.toml")
    torch.manual_seed(1)
    model = perturbed(build_model(cfg, (1, 8, 8)))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model.safetensors"))
    return run


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("model.scale_shift_norm=false", "diffusion.prediction='v'", "model.num_classes=10"),
        ("model.learn_sigma=true", "diffusion.variance='learned'", "diffusion.schedule='cosine'"),
        ("diffusion.schedule='sigmoid'", "model.attention_resolutions=[8, 4]", "model.num_res_blocks=1"),
    ],
)
def test_exported_run_loads_in_diffusers_and_matches(tmp_path, overrides):
    from difflab.cli import main
    from difflab.runs import load_run

    run = make_run(tmp_path, *overrides)
    out = tmp_path / "exported"
    assert main(["export", "--run", str(run), "--diffusers", str(out)]) == 0
    cfg, diffusion, model, _ = load_run(run)
    unet = diffusers.UNet2DModel.from_pretrained(out / "unet").eval()  # diffusers' own loader, strict
    sched = diffusers.DDPMScheduler.from_pretrained(out / "scheduler")
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    assert isinstance(pipe.unet, diffusers.UNet2DModel)
    x = torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 17, 500, 999])
    y = torch.tensor([0, 3, 9, 10]) if cfg.model.num_classes else None
    with torch.no_grad():
        want = model(x, t.float(), y=y)
        got = unet(x, t, class_labels=y).sample
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        sched.alphas_cumprod, diffusion.schedule.alpha_bar.float(), rtol=2e-6, atol=1e-7
    )
    # and back: the exported folder read by difflab is the same process
    back, _ = from_diffusers(out)
    assert (back.prediction, back.variance) == (diffusion.prediction, diffusion.variance)
    torch.testing.assert_close(back.schedule.betas, diffusion.schedule.betas, rtol=1e-10, atol=0)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (("diffusion.timesteps=500",), "T = 500"),
        (("model.channels=16",), "GroupNorm"),
        (("model.channel_mult=[2, 2]",), "channel_mult[0] = 2"),
        (("model.fourier_features=[7]",), "Fourier"),
    ],
)
def test_export_refuses_what_does_not_map(tmp_path, overrides, words, capsys):
    from difflab.cli import main

    run = make_run(tmp_path, *overrides)
    assert main(["export", "--run", str(run), "--diffusers", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------- the command line on a diffusers folder


def _files(folder):
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_cli_samples_and_scores_a_diffusers_folder(linear_pipe, tmp_path, monkeypatch, capsys):
    from difflab.cli import main

    before = _files(linear_pipe)
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--run", str(linear_pipe), "--n", "4", "--steps", "5", "--no-progress"]) == 0
    out = tmp_path / "runs" / "from-diffusers" / linear_pipe.name  # the default output folder
    assert np_load(out / "samples.npy").shape == (4, 1, 8, 8)
    assert main(["eval", "bpd", "--run", str(linear_pipe), "--no-progress"]) == 2
    assert "--data" in capsys.readouterr().err
    args = ["eval", "bpd", "--run", str(linear_pipe), "--data", "digits", "--n", "6", "--no-progress"]
    assert main([*args, "--ode", "--rtol", "1e-3", "--atol", "1e-3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["bound_points"] == 6 and metrics["ode_points"] == 6
    # the bound the CLI wrote is the library's bound of the loaded model on the named data's test split
    from difflab.runs import load_run
    from difflab.runs.build import build_splits
    from difflab.runs.common import scored_subset

    cfg, diffusion, model, splits = load_run(out)
    assert cfg.data.name == "digits" and splits.bins == 17
    test = build_splits(cfg).test
    want = diffusion.vlb_terms(
        model, test[scored_subset(len(test), 6)], bins=17, generator=torch.Generator().manual_seed(7)
    )
    assert metrics["bound_bits_per_dim"] == pytest.approx(float(want.total.mean()), rel=1e-5)
    # the report of a diffusers folder is its output folder's, and names the model folder in commands
    assert main(["report", "--run", str(linear_pipe)]) == 0
    page = (out / "report.html").read_text()
    rel = out.relative_to(tmp_path)  # the default output folder, under the current folder
    assert f"difflab eval bpd --run {linear_pipe} --out {rel}" in page and "diffusers model" in page
    assert _files(linear_pipe) == before  # the diffusers folder is never written to
    # results inside the model folder are refused, and so is --data on a difflab run
    assert main(["sample", "--run", str(linear_pipe), "--out", str(linear_pipe / "x"), "--no-progress"]) == 2
    assert main(["eval", "bpd", "--run", str(out), "--data", "digits", "--no-progress"]) == 2


def np_load(path):
    import numpy as np

    return np.load(path)


def test_refuses_pickled_weights_and_latent_pipelines(tmp_path, linear_pipe):
    import shutil

    pickled = tmp_path / "pickled"
    shutil.copytree(linear_pipe, pickled)
    (pickled / "unet" / "diffusion_pytorch_model.safetensors").rename(
        pickled / "unet" / "diffusion_pytorch_model.bin"
    )
    with pytest.raises(ValueError, match="safetensors only"):
        from_diffusers(pickled)
    index = json.loads((linear_pipe / "model_index.json").read_text())
    (pickled / "model_index.json").write_text(json.dumps(index | {"vqvae": ["diffusers", "VQModel"]}))
    with pytest.raises(ValueError, match="vqvae"):
        from_diffusers(pickled)


def test_class_conditional_unet_takes_labels(tmp_path):
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_start=1e-3, beta_end=0.2)
    folder = save_pipeline(tmp_path, tiny_unet(num_class_embeds=3), sched)
    _, model = from_diffusers(folder)
    ref = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 50.0]), torch.tensor([0, 2])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y=y), ref(x, t, class_labels=y).sample, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="class-conditional"):
        model(x, t)


def test_unet_folder_with_scheduler_config(tmp_path, linear_pipe):
    """A bare UNet2DModel folder holding its scheduler_config.json maps as the pipeline does."""
    folder = tmp_path / "bare"
    diffusers.UNet2DModel.from_pretrained(linear_pipe / "unet").save_pretrained(folder)
    scheduler(prediction_type="v_prediction").save_pretrained(folder)
    diffusion, model = from_diffusers(folder)
    assert diffusion.prediction == "v" and model.image_size == (8, 8)
    with pytest.raises(FileNotFoundError, match="scheduler"):
        from_diffusers(linear_pipe / "unet")  # weights but no scheduler config: the process is unknown


def test_diffusers_imports_without_torchvision():
    """diffusers works with difflab's CPU torch and does not pull in torchvision (which cannot be
    installed with it)."""
    import sys

    assert diffusers.UNet2DModel and diffusers.DDPMPipeline and diffusers.DDIMScheduler
    assert "torchvision" not in sys.modules
