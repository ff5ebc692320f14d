"""Variance-exploding (NCSN / score-SDE VE) and EDM processes: the noise grid, EDM's preconditioning
identities, the loss at its closed-form minimum, every sampler on exact Gaussian denoisers, training
on two moons, the trainer's exact resume and the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from difflab import GaussianDiffusion
from difflab.cli import main
from difflab.config import Config, TrainConfig
from difflab.data import make_toy2d
from difflab.gaussian import posterior_coefficients
from difflab.metrics import sliced_wasserstein
from difflab.nets import MLPDenoiser
from difflab.oracles import GaussianOracle
from difflab.processes import EDMDiffusion, Process, SigmaSchedule, VEDiffusion
from difflab.runs.build import build_diffusion
from difflab.samplers import SAMPLERS
from difflab.train import Trainer

MU, S = 0.5, 0.3
SD = 0.5  # EDM's sigma_data


def ve():
    return VEDiffusion(sigma_min=0.01, sigma_max=10.0)


def edm():
    return EDMDiffusion(sigma_data=SD)


PROCESSES = {"ve": ve, "edm": edm}


# ---------------------------------------------------------------------- the noise grid
def test_sigma_grid_is_geometric_in_model_time():
    s = SigmaSchedule(0.02, 20.0, 11)
    t = torch.tensor([0.0, 2.5, 10.0], dtype=torch.float64)
    expected = 0.02 * 1000.0 ** (t / 10)  # sigma_min (sigma_max/sigma_min)^(t/(T-1)), fractional t too
    torch.testing.assert_close(s.sigma(t), expected, rtol=1e-12, atol=0)
    alpha, sigma = s.alpha_sigma(t)
    assert bool((alpha == 1).all())
    torch.testing.assert_close(s.log_snr(t), -2 * torch.log(expected), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s.time_of_sigma(expected), t, rtol=0, atol=1e-9)
    # out of range: clamped for training draws, refused as a model time
    assert s.time_of_sigma(torch.tensor([1e-9, 1e9])).tolist() == [0.0, 10.0]
    with pytest.raises(ValueError, match=r"out of range: t must lie in \[0, 10\]"):
        s.sigma(torch.tensor([10.5]))
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        SigmaSchedule(1.0, 0.5)


# ---------------------------------------------------------------------- EDM's preconditioning
def test_edm_coefficients_satisfy_their_defining_identities():
    pre = edm().preconditioning
    sigma = torch.logspace(-3, 2, 50, dtype=torch.float64)
    c_skip, c_out, c_in = pre.coefficients(sigma)
    # Karras et al. (2022), appendix B.6: unit input variance, unit target variance, and c_skip the
    # minimiser of the target's variance (1 - c_skip)^2 sd^2 + c_skip^2 sigma^2
    torch.testing.assert_close(c_in**2 * (SD**2 + sigma**2), torch.ones_like(sigma))
    torch.testing.assert_close((1 - c_skip) ** 2 * SD**2 + c_skip**2 * sigma**2, c_out**2)
    grad = -2 * (1 - c_skip) * SD**2 + 2 * c_skip * sigma**2
    torch.testing.assert_close(grad, torch.zeros_like(sigma), rtol=0, atol=1e-12)
    torch.testing.assert_close(pre.weight(sigma), (sigma**2 + SD**2) / (sigma * SD) ** 2)


@pytest.mark.parametrize("data", ["gaussian", "two-point"])
def test_edm_input_and_target_have_unit_variance_by_monte_carlo(data):
    """For any x0 of std sd, Var[c_in x] = 1 and Var[(x0 - c_skip x)/c_out] = 1 at every sigma."""
    d = edm()
    g = torch.Generator().manual_seed(0)
    n = 200_000
    if data == "gaussian":
        x0 = SD * torch.randn(n, 1, generator=g, dtype=torch.float64)
    else:
        x0 = SD * (2.0 * torch.randint(0, 2, (n, 1), generator=g) - 1).double()
    for t in (0.0, 300.0, 600.0, 999.0):
        tt = torch.full((n,), t, dtype=torch.float64)
        x = d.q_sample(x0, tt, torch.randn(x0.shape, generator=g, dtype=torch.float64))
        c_in = d.preconditioning.coefficients(d.schedule.sigma(tt[:1]))[2]
        target = d.preconditioning.target(x0, x, tt)
        assert abs((c_in * x).var().item() - 1) < 0.01, t
        assert abs(target.var().item() - 1) < 0.01, t


def test_model_time_is_affine_in_c_noise():
    """The network gets t, affine in EDM's c_noise = ln(sigma)/4."""
    d = edm()
    t = torch.linspace(0, 999, 7, dtype=torch.float64)
    c_noise = torch.log(d.schedule.sigma(t)) / 4
    slope = (t[1:] - t[:-1]) / (c_noise[1:] - c_noise[:-1])
    torch.testing.assert_close(slope, slope[:1].expand_as(slope))
    torch.testing.assert_close(slope[0], torch.tensor(999 * 4 / math.log(80 / 0.002), dtype=torch.float64))


# ---------------------------------------------------------------------- the loss
def _closed_form_min(name: str, sigma: float) -> float:
    """lambda(sigma) times the posterior variance s^2 sigma^2/(s^2 + sigma^2) of Gaussian data."""
    post_var = S**2 * sigma**2 / (S**2 + sigma**2)
    weight = 1 / sigma**2 if name == "ve" else (sigma**2 + SD**2) / (sigma * SD) ** 2
    return weight * post_var


@pytest.mark.parametrize("name", ["ve", "edm"])
def test_loss_of_the_exact_denoiser_is_the_closed_form_minimum(name):
    d = PROCESSES[name]()
    oracle = GaussianOracle(d, MU, S)
    g = torch.Generator().manual_seed(1)
    x0 = MU + S * torch.randn(20_000, 4, generator=g, dtype=torch.float64)
    for t in (50.0, 500.0, 900.0):
        sigma = float(d.schedule.sigma(torch.tensor([t])))
        loss = d.loss(oracle, x0, t=torch.full((len(x0),), t), generator=g)
        assert loss.shape == (len(x0),)
        assert loss.mean().item() == pytest.approx(_closed_form_min(name, sigma), rel=0.03), t


def test_edm_loss_is_one_on_average_when_the_data_std_is_sigma_data():
    """With x0 of std sd the exact denoiser's weighted loss is 1 at every sigma, so also under the
    log-normal training draw (t=None)."""
    d = edm()
    g = torch.Generator().manual_seed(2)
    x0 = SD * torch.randn(50_000, 2, generator=g, dtype=torch.float64)
    assert d.loss(GaussianOracle(d, 0.0, SD), x0, generator=g).mean().item() == pytest.approx(1, rel=0.02)


@pytest.mark.parametrize("name", ["ve", "edm"])
def test_loss_is_the_weighted_denoising_error_of_the_sampling_denoiser(name):
    """The loss equals lambda ||D - x0||^2 with D the Denoiser samplers use; for VE that is the
    denoising score matching loss ||sigma s(x, sigma) + eps||^2 with s = -eps_hat/sigma."""
    d = PROCESSES[name]()
    torch.manual_seed(0)
    net = MLPDenoiser(3, hidden=16, depth=1, emb_dim=8).double()
    torch.nn.init.normal_(net.out.weight, std=0.5)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(64, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(64, 3, generator=g, dtype=torch.float64)
    t = d.sample_t(64, g).float().double()
    loss = d.loss(net, x0, t=t, noise=noise)
    sigma = d.schedule.sigma(t)[:, None]
    x = x0 + sigma * noise
    x0_hat, eps_hat = d.denoiser(net)(x, t)
    weight = d.preconditioning.weight(sigma)
    torch.testing.assert_close(loss, (weight * (x0_hat - x0) ** 2).mean(1))
    if name == "ve":
        score = -eps_hat / sigma
        torch.testing.assert_close(loss, ((sigma * score + noise) ** 2).mean(1))


def test_edm_training_sigma_is_log_normal():
    d = EDMDiffusion(sigma_min=1e-4, sigma_max=1e4)
    log_sigma = torch.log(d.schedule.sigma(d.sample_t(100_000, torch.Generator().manual_seed(4))))
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.02)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.02)
    assert VEDiffusion().sample_t(5, torch.Generator().manual_seed(0)).dtype == torch.int64


# ---------------------------------------------------------------------- samplers
# steps and options per sampler, and the std tolerance: first-order samplers need more steps; annealed
# Langevin is biased by its finite step (NCSN's rule with epsilon below 2 sigma_min^2 for stability)
SAMPLER_SETTINGS = {
    "ancestral": ({"steps": 500}, 0.03),
    "ddim": ({"steps": 200}, 0.03),
    "euler": ({"steps": 200}, 0.03),
    "pc": ({"steps": 100}, 0.05),
    "langevin": ({"steps": 50, "n_steps_each": 20}, 0.05),
}


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("name", ["ve", "edm"])
def test_every_sampler_reproduces_gaussian_data(name, sampler):
    """Started from the exact noisy marginal N(mu, s^2 + sigma_max^2), every sampler driven by the
    exact denoiser returns the data's mean and std."""
    d = PROCESSES[name]()
    opts, std_tol = SAMPLER_SETTINGS.get(sampler, ({"steps": 40}, 0.02))
    if sampler == "langevin":
        opts = dict(opts, epsilon=0.5 * d.schedule.sigma_min**2)
    g = torch.Generator().manual_seed(5)
    n = 4000 if sampler == "langevin" else 8000
    x_T = MU + math.sqrt(S**2 + d.schedule.sigma_max**2) * torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = d.sample(GaussianOracle(d, MU, S), x_T.shape, sampler=sampler, x_T=x_T, generator=g, **opts)
    assert abs(x.mean().item() - MU) < 0.02 * MU, x.mean().item()
    assert abs(x.std().item() - S) < std_tol * S, x.std().item()


def test_ancestral_step_is_the_ve_posterior():
    """For alpha = 1 the general posterior coefficients are Gaussian bridging between x0 and x_t:
    x_s | x_t, x0 ~ N(x0 + sigma_s^2/sigma_t^2 (x_t - x0), sigma_s^2 (sigma_t^2 - sigma_s^2)/sigma_t^2)."""
    one = torch.ones((), dtype=torch.float64)
    s_t, s_s = torch.tensor(3.0, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    c0, ct, var = posterior_coefficients(one, s_t, one, s_s)
    r = s_s**2 / s_t**2
    torch.testing.assert_close((c0, ct, var), (1 - r, r, s_s**2 * (s_t**2 - s_s**2) / s_t**2))
    # and by Monte Carlo: x_s ~ x0 + s_s z1, x_t = x_s + sqrt(s_t^2 - s_s^2) z2; regress x_s on x_t
    g = torch.Generator().manual_seed(6)
    xs = 0.7 * torch.randn(400_000, generator=g, dtype=torch.float64)
    xt = xs + math.sqrt(9 - 0.49) * torch.randn(400_000, generator=g, dtype=torch.float64)
    slope = (xs * xt).mean() / (xt * xt).mean()
    assert slope.item() == pytest.approx(ct.item(), rel=0.01)
    assert (xs - slope * xt).var().item() == pytest.approx(var.item(), rel=0.01)


def test_sampling_starts_from_sigma_max_noise():
    """x_T ~ N(0, sigma_max^2 I); the VE network sees it as c_in x_T = x_T / sqrt(1 + sigma_max^2)."""
    d = ve()
    x_T = []
    d.sample(lambda x, t: (x_T.append(x.clone()), torch.zeros_like(x))[1], (20_000, 1), sampler="euler",
             steps=2, generator=torch.Generator().manual_seed(7))
    assert x_T[0].std().item() == pytest.approx(10.0 / math.sqrt(1 + 10.0**2), rel=0.02)  # c_in x_T


# ---------------------------------------------------------------------- errors
VP_ONLY = ["q_posterior", "vlb_terms", "bits_per_dim", "prior_kl", "p_mean_variance", "reverse_log_variance"]


@pytest.mark.parametrize("make", [ve, lambda: EDMDiffusion()])
def test_processes_without_a_bound_declare_it_and_inherit_no_stubs(make):
    d = make()
    assert d.bound_parts == () and d.discrete_steps is None and d.preconditioning is not None
    assert not any(hasattr(d, m) for m in VP_ONLY)  # nothing inherited only to be refused
    assert isinstance(d, Process)


def test_build_diffusion_picks_the_process():
    cfg = Config()
    assert type(build_diffusion(cfg)) is GaussianDiffusion
    cfg.diffusion.process = "ve"
    d = build_diffusion(cfg)
    assert type(d) is VEDiffusion and (d.schedule.sigma_min, d.schedule.sigma_max) == (0.01, 50.0)
    cfg.diffusion.process, cfg.diffusion.sigma_max, cfg.diffusion.sigma_data = "edm", 20.0, 1.0
    d = build_diffusion(cfg)
    assert type(d) is EDMDiffusion and d.schedule.sigma_max == 20.0 and d.schedule.sigma_min == 0.002
    assert d.preconditioning.sigma_data == 1.0 and (d.p_mean, d.p_std) == (-1.2, 1.2)
    cfg.diffusion.process = "vesde"
    with pytest.raises(ValueError, match="unknown diffusion.process 'vesde'; choose one of vp, ve, edm"):
        build_diffusion(cfg)
    cfg.diffusion.process, cfg.diffusion.prediction = "ve", "v"
    with pytest.raises(ValueError, match="eps-predicting"):
        build_diffusion(cfg)


# ---------------------------------------------------------------------- training
def _train_moons(d, steps: int = 500):
    torch.manual_seed(0)
    net = MLPDenoiser(2, hidden=64, depth=2, emb_dim=32)
    data = make_toy2d("moons", 20_000, seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = d.loss(net, data[torch.randint(0, len(data), (512,), generator=g)], generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net


@pytest.mark.parametrize("name", ["ve", "edm"])
def test_ve_and_edm_learn_two_moons(name):
    """Moons have std ~1 and diameter ~4.6: sigma_max = 10, and EDM's sigma_data = 1."""
    d = VEDiffusion(0.01, 10.0) if name == "ve" else EDMDiffusion(sigma_max=10.0, sigma_data=1.0)
    ref = make_toy2d("moons", 2000, seed=1)

    def sw(net, sampler):
        x = d.sample(net, (2000, 2), sampler=sampler, steps=20, generator=torch.Generator().manual_seed(1))
        return sliced_wasserstein(x, ref, 200, generator=torch.Generator().manual_seed(2))

    torch.manual_seed(0)
    initial = sw(MLPDenoiser(2, hidden=64, depth=2, emb_dim=32), "heun")
    net = _train_moons(d)
    for sampler in ("heun", "dpm++2m"):
        trained = sw(net, sampler)
        # the data's own noise floor at 2000 points is ~0.04; an untrained EDM model already draws N(0, sd^2)
        ratio, bound = (0.05, 0.25) if name == "ve" else (0.5, 0.12)
        assert trained < ratio * initial and trained < bound, (sampler, trained, initial)


def test_trainer_resumes_an_edm_run_exactly(tmp_path):
    """The log-normal training sigma comes from the trainer's generator: a resumed run repeats the
    uninterrupted one."""

    def make(run, seed=0):
        torch.manual_seed(seed)
        cfg = TrainConfig(steps=8, batch_size=16, lr=5e-3, warmup=2, ckpt_every=4, log_every=1)
        net = MLPDenoiser(2, hidden=16, depth=1, emb_dim=8, timesteps=50)
        data = make_toy2d("moons", 128, seed=0)
        return Trainer(EDMDiffusion(timesteps=50, sigma_max=10.0), net, data, cfg, run)

    full = make(tmp_path / "full")
    full.fit(progress_bar=False)
    split = make(tmp_path / "split")
    split.fit(progress_bar=False, until=4)
    again = make(tmp_path / "split", seed=1)
    assert again.resume() == 4
    again.fit(progress_bar=False)
    rows = [(tmp_path / r / "log.csv").read_text().splitlines() for r in ("full", "split")]
    assert [line.split(",")[:2] for line in rows[0]] == [line.split(",")[:2] for line in rows[1]]
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k


# ---------------------------------------------------------------------- command line
TOY = ["--set", "train.steps=3", "--set", "train.max_minutes=0", "--set", "data.n_train=500",
       "--set", "data.n_test=100", "--set", "model.hidden=16", "--set", "model.depth=1"]


@pytest.mark.parametrize("process", ["ve", "edm"])
def test_cli_trains_and_samples_a_toy_process(tmp_path, capsys, process):
    run = tmp_path / process
    args = ["--set", f"diffusion.process={process}", "--set", "diffusion.sigma_max=10"]
    assert main(["train", "--config", "toy2d", "--run", str(run), "--no-progress", *TOY, *args]) == 0
    assert json.loads((run / "train.json").read_text())["steps"] == 3
    assert main(["sample", "--run", str(run), "--sampler", "heun", "--steps", "5", "--n", "50",
                 "--no-progress"]) == 0
    assert '"nfe": 9' in capsys.readouterr().out
    assert np.isfinite(np.load(run / "samples.npy")).all()
    assert main(["eval", "bpd", "--run", str(run), "--no-progress"]) == 2
    assert "has no variational bound" in capsys.readouterr().err


def test_cli_trains_edm_on_digits(tmp_path):
    run = tmp_path / "digits"
    args = ["--set", "diffusion.process=edm", "--set", "train.steps=2", "--set", "train.max_minutes=0",
            "--set", "model.channels=8", "--set", "train.batch_size=16"]
    assert main(["train", "--config", "digits", "--run", str(run), "--no-progress", *args]) == 0
    assert json.loads((run / "train.json").read_text())["steps"] == 2
    assert main(["sample", "--run", str(run), "--sampler", "dpm++2m", "--steps", "4", "--n", "8",
                 "--no-progress"]) == 0
    x = np.load(run / "samples.npy")
    assert x.shape == (8, 1, 8, 8) and np.isfinite(x).all() and np.abs(x).max() <= 1
