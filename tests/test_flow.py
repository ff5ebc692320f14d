"""Flow matching (difflab.processes.flow) against exact answers.

For Gaussian data ``N(MU, S^2)`` on the straight path ``x_t = (1-t) x_0 + t eps`` everything is in
closed form: the exact velocity ``E[eps - x_0 | x_t]`` (the oracle), the irreducible loss
``Var(eps - x_0 | x_t)``, the probability-flow ODE's solution (``(x/alpha - MU)/sqrt(S^2 + sigma~^2)``
is constant along a trajectory, ``sigma~ = t/(1-t)``) and the density the ODE model gives a point.
"""

import math

import numpy as np
import pytest
import torch

import difflab as dl
from difflab.cli import main
from difflab.oracles import GaussianOracle
from difflab.processes import FlowMatching, FlowSchedule, Process
from difflab.samplers import SAMPLERS, make_levels
from difflab.train.t_samplers import make_t_sampler

MU, S, D = 0.5, 0.3, 3


@pytest.fixture(scope="module")
def flow():
    return FlowMatching()


@pytest.fixture(scope="module")
def oracle(flow):
    return GaussianOracle(flow, MU, S)  # returns the exact velocity: the process's prediction is "flow"


def exact_endpoint(process, x_T, steps, spacing):
    """The exact ODE flow from the first to the last listed level, then ``x0_hat`` there."""
    lv = make_levels(process.schedule, process.timesteps_for(steps, spacing))
    s_T, s_0 = float(lv.sigma_ve[0]), float(lv.sigma_ve[-1])
    x = MU + (x_T / float(lv.alpha[0]) - MU) * math.sqrt(S**2 + s_0**2) / math.sqrt(S**2 + s_T**2)
    return MU + S**2 * (x - MU) / (S**2 + s_0**2)


def test_schedule_is_the_straight_path_and_inverts_its_log_snr_exactly():
    s = FlowSchedule(0.01, 0.98, 50)
    tau = torch.tensor([0.0, 12.5, 49.0], dtype=torch.float64)
    t = 0.01 + 0.97 * tau / 49
    alpha, sigma = s.alpha_sigma(tau)
    assert torch.allclose(alpha, 1 - t, atol=1e-15) and torch.allclose(sigma, t, atol=1e-15)
    assert torch.allclose(s.log_snr(tau), torch.log(alpha**2 / sigma**2), atol=1e-12)
    assert torch.allclose(s.time_of_log_snr(s.log_snr(tau)), tau, atol=1e-9)
    assert bool((s.lambdas[1:] < s.lambdas[:-1]).all())
    with pytest.raises(ValueError, match="0 < t_min < t_max < 1"):
        FlowSchedule(0.5, 0.2)
    with pytest.raises(ValueError, match="model time 50.0 is out of range"):
        s.alpha_sigma(torch.tensor([50.0]))


def test_velocity_converts_to_x0_and_eps_exactly():
    x0, eps = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    for t in (0.001, 0.3, 0.999):
        a, s = torch.tensor(1 - t, dtype=torch.float64), torch.tensor(t, dtype=torch.float64)
        x_t = a * x0 + s * eps
        u = dl.gaussian.target_of("flow", x0, eps, a, s)
        assert torch.equal(u, eps - x0)
        x0_hat, eps_hat = dl.gaussian.to_x0_eps(u, "flow", x_t, a, s)
        assert torch.allclose(x0_hat, x0, atol=1e-12) and torch.allclose(eps_hat, eps, atol=1e-12)


def test_the_exact_velocity_leaves_the_closed_form_irreducible_loss(flow, oracle):
    """``E||u*(x_t) - (eps - x_0)||^2 = Var(eps - x_0 | x_t) = 1 + S^2 - (t - a S^2)^2/(a^2 S^2 + t^2)``
    per dimension, with ``a = 1 - t``: Monte Carlo over 200k draws at three times."""
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = MU + S * torch.randn(n, 1, generator=g, dtype=torch.float64)
    for t in (0.1, 0.5, 0.9):
        tau = flow.schedule.model_time_of(torch.tensor(t, dtype=torch.float64))
        tau = torch.full((n,), float(tau.float()), dtype=torch.float64)  # the time the loss uses
        t_used = float(flow.schedule.path_time(tau[:1]))
        a = 1 - t_used
        want = 1 + S**2 - (t_used - a * S**2) ** 2 / (a**2 * S**2 + t_used**2)
        loss = flow.loss(oracle, x0, tau, generator=g)
        assert float(loss.mean()) == pytest.approx(want, rel=0.01), t


def test_training_time_laws():
    n = 100_000
    g = torch.Generator().manual_seed(1)
    uni = FlowMatching(t_min=0.01, t_max=0.99)
    t = uni.schedule.path_time(uni.sample_t(n, g))
    assert float(t.min()) >= 0.01 and float(t.max()) <= 0.99
    assert float(t.mean()) == pytest.approx(0.5, abs=0.005)
    assert float(t.var()) == pytest.approx(0.98**2 / 12, rel=0.02)
    ln = FlowMatching(t_law="logit_normal", logit_mean=0.5, logit_std=0.8)
    t = ln.schedule.path_time(ln.sample_t(n, g))
    for q in (0.2, 0.5, 0.8):  # P(t <= q) = Phi((logit(q) - m)/s)
        want = 0.5 * (1 + math.erf((math.log(q / (1 - q)) - 0.5) / 0.8 / math.sqrt(2)))
        assert float((t <= q).double().mean()) == pytest.approx(want, abs=0.005)
    with pytest.raises(ValueError, match="unknown t_law"):
        FlowMatching(t_law="beta")
    with pytest.raises(ValueError, match="prediction for flow matching"):
        FlowMatching(prediction="v")


def test_meets_the_protocol_and_declares_what_it_supports(flow):
    assert isinstance(flow, Process)
    assert flow.bound_parts == () and flow.discrete_steps is None and flow.preconditioning is None
    assert not hasattr(flow, "vlb_terms")
    with pytest.raises(ValueError, match="draws its own training times"):
        make_t_sampler("importance", flow)


# name, options, spacing, order. DEIS's default log-rho basis is measured on log-SNR levels: on uniform
# t its first step spans sigma~ = 999 -> 37, and the quadrature's error there stays at 2.6e-3 at 16 and
# 32 levels (basis "t" converges on uniform t instead)
ORDERS = [("euler", {}, "uniform", 1), ("heun", {}, "uniform", 2), ("dpm++2m", {}, "uniform", 2),
          ("dpm++3m", {}, "uniform", 3), ("unipc", {}, "uniform", 3), ("deis", {}, "logsnr", 3),
          ("deis", {"basis": "t"}, "uniform", 3)]


@pytest.mark.parametrize("name,options,spacing,order", ORDERS)
def test_deterministic_samplers_keep_their_order_on_the_flow(flow, oracle, name, options, spacing, order):
    """Error against the exact endpoint at 16 and 32 levels (uniform in t is the rectified-flow grid):
    the slope in levels is at least ``order - 0.4``; ``nfe`` counts the oracle's calls."""
    z = 0.999 * torch.randn(256, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    errs = []
    for steps in (16, 32):
        calls: list[int] = []

        def counted(x, t, calls=calls):
            calls.append(1)
            return oracle(x, t)

        x, nfe = flow.sample(counted, z.shape, sampler=name, steps=steps, spacing=spacing, x_T=z,
                             return_nfe=True, **options)
        assert nfe == len(calls)
        errs.append(float((x - exact_endpoint(flow, z, steps, spacing)).pow(2).mean().sqrt()))
    slope = math.log(errs[0] / errs[1]) / math.log(2)
    assert slope > order - 0.4, (errs, slope)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_runs_on_the_flow(flow, oracle, name):
    """Every sampler lands near the data's distribution from ``N(0, t_max^2)``: mean and std of 2,000
    samples within a few standard errors of ``MU``, ``S`` (stochastic samplers included)."""
    g = torch.Generator().manual_seed(5)
    options = {"rtol": 1e-4, "atol": 1e-4} if name in ("ode", "dpm-adaptive") else {}
    x = flow.sample(oracle, (2000, 1), sampler=name, steps=200, generator=g, dtype=torch.float64, **options)
    assert float(x.mean()) == pytest.approx(MU, abs=0.03), name
    assert float(x.std()) == pytest.approx(S, abs=0.03), name


def ode_model_nll(process, x):
    """``-log p(x)`` of the ODE model in closed form: the variance-preserving state ``y = x / c`` moves
    affinely, ``(y - a MU)/sqrt(a^2 S^2 + b^2)`` constant (``a, b``: the VP ``alpha, sigma`` at that
    log-SNR), from the data end to the prior end, where ``N(0, I)`` is used; plus ``D log c``."""
    ends = torch.tensor([0.0, process.timesteps - 1.0], dtype=torch.float64)
    lam = process.schedule.log_snr(ends)
    alpha, sigma = process.schedule.alpha_sigma(ends)
    c0 = float((alpha[0] ** 2 + sigma[0] ** 2).sqrt())
    a, b = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
    sd = (a**2 * S**2 + b**2).sqrt()
    y = x.double() / c0
    y_end = a[1] * MU + (y - a[0] * MU) * sd[1] / sd[0]
    log_p = -0.5 * y_end.pow(2) - 0.5 * math.log(2 * math.pi) + torch.log(sd[1] / sd[0])
    return -log_p.flatten(1).sum(1) + x[0].numel() * math.log(c0)


@pytest.mark.parametrize("make", [FlowMatching, dl.VEDiffusion, dl.GaussianDiffusion])
def test_ode_nll_matches_the_closed_form(make):
    """Within 0.01 nats/dim of the analytic value, for the flow, VE (``alpha = 1``) and DDPM."""
    process = make()
    oracle = GaussianOracle(process, MU, S)
    x = MU + S * torch.randn(8, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    nll = process.ode_nll(oracle, x, rtol=1e-6, atol=1e-6)
    want = ode_model_nll(process, x)
    assert (nll - want).abs().max().item() / D < 0.01, (nll, want)
    # and the analytic model density is the data's own to within the path's ends (t_min, the prior)
    data = 0.5 * ((x - MU) / S).pow(2).sum(1) + D * (math.log(S) + 0.5 * math.log(2 * math.pi))
    assert (want - data).abs().max().item() / D < 0.05


TINY = ["--set", "train.steps=3", "--set", "train.max_minutes=0", "--set", "data.n_train=500",
        "--set", "data.n_test=100", "--set", "model.hidden=16", "--set", "model.depth=1"]


def test_cli_trains_samples_and_scores_a_flow_run(tmp_path, capsys):
    run = tmp_path / "flow"
    assert main(["train", "--config", "toy2d", "--run", str(run), "--no-progress", *TINY,
                 "--set", "diffusion.process=flow"]) == 0
    assert 'prediction = "flow"' in (run / "config.toml").read_text()  # the velocity target by default
    assert main(["sample", "--run", str(run), "--sampler", "euler", "--steps", "8", "--n", "50",
                 "--no-progress"]) == 0
    assert '"nfe": 8' in capsys.readouterr().out
    assert np.isfinite(np.load(run / "samples.npy")).all()
    assert main(["eval", "bpd", "--run", str(run), "--no-progress"]) == 2
    assert "has no variational bound" in capsys.readouterr().err
    assert main(["eval", "bpd", "--ode", "--run", str(run), "--n", "20", "--rtol", "1e-3", "--atol", "1e-3",
                 "--no-progress"]) == 0
    assert "ode_nats_per_dim" in capsys.readouterr().out
    assert main(["train", "--config", "toy2d", "--run", str(tmp_path / "bad"), "--no-progress", *TINY,
                 "--set", "diffusion.process=flow", "--set", "diffusion.prediction=v"]) == 2
    assert "prediction for flow matching" in capsys.readouterr().err
    assert main(["train", "--config", "toy2d", "--run", str(tmp_path / "bad"), "--no-progress", *TINY,
                 "--set", "diffusion.t_law=logit_normal"]) == 2
    assert "applies to flow matching" in capsys.readouterr().err
