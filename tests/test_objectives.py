"""Improved-DDPM objectives (Nichol & Dhariwal 2021): learned variances, L_vlb / L_hybrid, importance
sampling of t, and the min-SNR (Hang et al. 2023) and P2 (Choi et al. 2022) weightings.

Every number is checked against an independent computation: closed-form Gaussian KLs and decoder
likelihoods written here with numpy/scipy from the betas, the exact reverse variance of Gaussian data,
autograd on a two-headed model, exact expectations over the sampler's probabilities, and identities
between the eps / x0 / v parameterizations.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import optimize, stats
from torch import nn

import difflab as dl
from difflab import config as config_mod
from difflab.config import TrainConfig
from difflab.data import make_toy2d
from difflab.nets import MLPDenoiser
from difflab.oracles import GaussianOracle
from difflab.processes import EDMDiffusion
from difflab.processes.ddpm.objectives import Objective, snr_weight
from difflab.runs.build import build_diffusion
from difflab.train import Trainer, load_checkpoint
from difflab.train.t_samplers import ImportanceTimesteps, make_t_sampler

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def linear_betas_np(T: int) -> np.ndarray:
    """DDPM's linear schedule rescaled to T steps (improved DDPM), written out independently."""
    return np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)


def with_v(model, v_fn):
    """``[model(x, t), v_fn(x, t)]`` along dimension 1: a learned-variance network."""

    def net(x, t):
        return torch.cat([model(x, t), v_fn(x, t).to(x.dtype)], 1)

    return net


def true_reverse_variance(ab: np.ndarray, s: float, t: int, prev: int) -> float:
    """``Var(x_prev | x_t)`` for data ``N(mu, s^2)``: with ``V_j = ab_j s^2 + 1 - ab_j`` the marginal
    variance and ``x_t = sqrt(ab_t/ab_prev) x_prev + sqrt(1 - ab_t/ab_prev) z``, Gaussian conditioning
    gives ``V_prev (1 - ab_t/ab_prev) / V_t``."""
    V = lambda j: ab[j] * s**2 + 1 - ab[j]  # noqa: E731
    return V(prev) * (1 - ab[t] / ab[prev]) / V(t)


# ------------------------------------------------------------------------ L_vlb against the bound
def test_vlb_term_equals_bound_column_and_hand_computed_gaussian_kl():
    """``loss(objective='vlb') / T`` at each t equals column t of ``likelihood.vlb_terms`` for the same
    noise, and a KL / discretized decoder NLL written here from the betas, with a learned variance
    ``v(x_t, t)`` that varies per dimension."""
    T, B, D, mu, s = 50, 5, 4, 0.1, 0.45
    d = dl.GaussianDiffusion("linear", T, variance="learned")
    oracle = GaussianOracle(d, mu, s)

    def v_fn(x, t):
        return 0.8 * torch.tanh(x) - 0.3 + 0.2 * (t.to(x.dtype)[:, None] / T)

    net = with_v(oracle, v_fn)
    x = (mu + s * torch.randn(B, D, generator=gen(0), dtype=F64)).clamp(-1, 1)
    x0 = torch.round((x + 1) * 127.5) / 127.5 - 1  # on the 256-level grid 2 k / 255 - 1
    terms = d.vlb_terms(net, x0, bins=256, generator=gen(5), max_batch=10_000).terms  # [B, T] bits/dim
    noise_all = torch.randn(T * B, D, generator=gen(5), dtype=F64)  # the bound's draws, timestep-major

    betas = linear_betas_np(T)
    ab = np.cumprod(1 - betas)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    bt = (1 - ab_prev) / (1 - ab) * betas  # beta~
    bt_clipped = np.concatenate([[bt[1]], bt[1:]])
    x = x0.numpy()
    for i in range(T):
        noise = noise_all[i * B : (i + 1) * B]
        got = d.loss(net, x0, t=torch.full((B,), i), noise=noise, objective="vlb") / T
        torch.testing.assert_close(got, terms[:, i], rtol=1e-9, atol=1e-12)
        if i not in (0, 1, 17, T - 1):
            continue
        # by hand: x_t, E[x0|x_t] of N(mu, s^2) data, posterior means, eq. 15 variance, KL or decoder
        e = noise.numpy()
        a, sg = math.sqrt(ab[i]), math.sqrt(1 - ab[i])
        xt = a * x + sg * e
        x0_hat = mu + a * s**2 * (xt - a * mu) / (a**2 * s**2 + sg**2)
        c0 = math.sqrt(ab_prev[i]) * betas[i] / (1 - ab[i])
        ct = math.sqrt(1 - betas[i]) * (1 - ab_prev[i]) / (1 - ab[i])
        v = v_fn(torch.from_numpy(xt), torch.full((B,), float(i), dtype=F64)).numpy()
        frac = (v + 1) / 2
        log_var = frac * np.log(betas[i]) + (1 - frac) * np.log(bt_clipped[i])
        mean_p = c0 * x0_hat + ct * xt
        if i > 0:
            mean_q = c0 * x + ct * xt
            kl = 0.5 * (log_var - np.log(bt[i]) + bt[i] / np.exp(log_var)
                        + (mean_q - mean_p) ** 2 / np.exp(log_var) - 1)
            want = kl.sum(1) / (D * math.log(2))
        else:
            sd, h = np.exp(0.5 * log_var), 1 / 255
            upper = np.where(x > 1 - h / 2, 1.0, stats.norm.cdf((x + h - mean_p) / sd))
            lower = np.where(x < -1 + h / 2, 0.0, stats.norm.cdf((x - h - mean_p) / sd))
            want = -np.log(upper - lower).sum(1) / (D * math.log(2))
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-7)


def test_p_mean_variance_learned_is_equation_15():
    T = 100
    d = dl.GaussianDiffusion("cosine", T, variance="learned")
    x = torch.randn(6, 3, generator=gen(1), dtype=F64)
    v = torch.rand(6, 3, generator=gen(2), dtype=F64) * 2 - 1
    net = with_v(lambda x, t: torch.zeros_like(x), lambda x, t: v)
    t = torch.tensor([0, 1, 5, 50, 98, 99])
    _, log_var, _ = d.p_mean_variance(net, x, t)
    betas, ab = d.schedule.betas.numpy(), d.schedule.alpha_bar.numpy()
    bt = (1 - np.concatenate([[1.0], ab[:-1]])) / (1 - ab) * betas
    bt[0] = bt[1]  # the clipped log beta~ at index 0
    frac = (v.numpy() + 1) / 2
    ti = t.numpy()[:, None]
    want = frac * np.log(betas[ti]) + (1 - frac) * np.log(bt[ti])
    np.testing.assert_allclose(log_var.numpy(), want, rtol=1e-12)


# ------------------------------------------------------------------------ the optimal variance
@pytest.mark.parametrize("t, v_star", [(1, 0.902), (2, 0.744), (10, -0.433), (40, -0.903)])
def test_vlb_is_minimised_at_the_true_reverse_variance(t, v_star):
    """For N(0, s^2) data and the exact mean, the Monte Carlo L_vlb at t as a function of a constant v
    is minimised where eq. 15's ``sigma_t^2`` equals ``Var(x_{t-1} | x_t)`` of the data (closed form),
    i.e. at ``v* = 2 (log Var - log beta~) / (log beta - log beta~) - 1`` (listed for reading)."""
    T, s, N, D = 100, 0.2, 10_000, 2
    d = dl.GaussianDiffusion("linear", T, variance="learned")
    oracle = GaussianOracle(d, 0.0, s)
    x0 = s * torch.randn(N, D, generator=gen(t), dtype=F64)
    noise = torch.randn(N, D, generator=gen(100 + t), dtype=F64)
    tt = torch.full((N,), t)

    def mean_vlb(v: float) -> float:
        net = with_v(oracle, lambda x, _: torch.full_like(x, v))
        return float(d.loss(net, x0, t=tt, noise=noise, objective="vlb").mean())

    best = optimize.minimize_scalar(mean_vlb, bounds=(-3, 3), method="bounded", options={"xatol": 1e-6})
    betas = linear_betas_np(T)
    ab = np.cumprod(1 - betas)
    bt = (1 - ab[t - 1]) / (1 - ab[t]) * betas[t]
    truth = true_reverse_variance(ab, s, t, t - 1)
    want_v = 2 * (math.log(truth) - math.log(bt)) / (math.log(betas[t]) - math.log(bt)) - 1
    assert want_v == pytest.approx(v_star, abs=1e-3)
    assert abs(best.x - want_v) < 0.05  # Monte Carlo: measured within 0.025 over seeds
    frac = (best.x + 1) / 2
    learned_var = math.exp(frac * math.log(betas[t]) + (1 - frac) * math.log(bt))
    assert learned_var == pytest.approx(truth, rel=0.02)
    assert mean_vlb(best.x) < min(mean_vlb(-1.0), mean_vlb(1.0))  # beats fixed_small and fixed_large


# ------------------------------------------------------------------------ L_hybrid: stop-gradient
class TwoHeads(nn.Module):
    """Separate parameters for the prediction and for the variance channels v."""

    def __init__(self, dim: int, T: int):
        super().__init__()
        self.T = T
        self.mean = nn.Linear(dim + 1, dim)
        self.var = nn.Linear(dim + 1, dim)

    def forward(self, x, t):
        h = torch.cat([x, t.to(x.dtype)[:, None] / self.T], 1)
        return torch.cat([self.mean(h), torch.tanh(self.var(h))], 1)


def _grads(net: nn.Module, loss: torch.Tensor):
    net.zero_grad()
    loss.backward()
    return {k: p.grad.clone() for k, p in net.named_parameters()}


def test_hybrid_gradient_on_the_mean_is_that_of_l_simple():
    T, B, D = 50, 64, 3
    d = dl.GaussianDiffusion("linear", T, variance="learned")
    torch.manual_seed(0)
    net = TwoHeads(D, T).double()
    x0 = torch.randn(B, D, generator=gen(1), dtype=F64)
    noise = torch.randn(B, D, generator=gen(2), dtype=F64)
    t = torch.randint(0, T, (B,), generator=gen(3))
    t[:4] = 0  # the decoder term is in the batch too

    def grads(objective, **kw):
        return _grads(net, d.loss(net, x0, t=t, noise=noise, objective=objective, **kw).mean())

    hybrid, vlb = grads("hybrid"), grads("vlb")
    fixed = dl.GaussianDiffusion("linear", T)
    simple = _grads(net, fixed.loss(lambda x, tt: net(x, tt)[:, :D], x0, t=t, noise=noise).mean())
    for k in ("mean.weight", "mean.bias"):
        torch.testing.assert_close(hybrid[k], simple[k], rtol=1e-12, atol=1e-15)  # L_vlb trains no mean
        assert not torch.allclose(vlb[k], torch.zeros_like(vlb[k]))  # pure L_vlb does
    for k in ("var.weight", "var.bias"):
        assert simple[k].abs().max() == 0
        torch.testing.assert_close(hybrid[k], 1e-3 * vlb[k], rtol=1e-10, atol=1e-15)
        assert hybrid[k].abs().max() > 0
    # the value: L_simple + 0.001 * T * L_t
    h = d.loss(net, x0, t=t, noise=noise, objective="hybrid")
    s_ = fixed.loss(lambda x, tt: net(x, tt)[:, :D], x0, t=t, noise=noise)
    v_ = d.loss(net, x0, t=t, noise=noise, objective="vlb")
    torch.testing.assert_close(h, s_ + 1e-3 * v_, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------ importance sampling of t
def test_importance_sampler_is_uniform_until_filled_then_follows_the_rms():
    T, H = 25, 10
    d = dl.GaussianDiffusion("linear", T)
    sampler = ImportanceTimesteps(T, history=H)
    base = np.arange(1, H + 1) / H  # loss k/H at the k-th visit, scaled by (t + 1)
    for k in range(H):
        p = sampler.probabilities()
        np.testing.assert_array_equal(p.numpy(), np.full(T, 1 / T))
        t, w = sampler.sample(32, gen(k))
        assert torch.equal(w, torch.ones(32, dtype=F64))
        # drawn exactly as GaussianDiffusion.sample_t draws U{0..T-1}
        assert torch.equal(t, torch.randint(0, T, (32,), generator=gen(k)))
        assert not sampler.ready
        sampler.update(torch.arange(T), torch.from_numpy((np.arange(T) + 1) * base[k]))
    assert sampler.ready
    rms = (np.arange(T) + 1) * math.sqrt(np.mean(base**2))
    want = 0.999 * rms / rms.sum() + 0.001 / T
    np.testing.assert_allclose(sampler.probabilities().numpy(), want, rtol=1e-12)

    n = 200_000
    t, w = sampler.sample(n, gen(99))
    np.testing.assert_allclose(w.numpy(), 1 / (T * want[t.numpy()]), rtol=1e-12)
    counts = np.bincount(t.numpy(), minlength=T)
    assert stats.chisquare(counts, n * want).pvalue > 1e-3

    # unbiased: E_p[w L_t] = sum_t p_t L_t / (T p_t) = mean_t L_t, exactly and by Monte Carlo
    L = np.linspace(0.5, 3.0, T) ** 2
    assert float((want * L / (T * want)).sum()) == pytest.approx(L.mean(), rel=1e-12)
    est = w.numpy() * L[t.numpy()]
    assert abs(est.mean() - L.mean()) < 5 * est.std() / math.sqrt(n)

    # a window of the last H losses: one more, large loss at t = 0 replaces its oldest (0.1)
    sampler.update(torch.tensor([0]), torch.tensor([7.0]))
    rms0 = math.sqrt(np.mean(np.concatenate([base[1:], [7.0]]) ** 2))
    rms2 = np.concatenate([[rms0], rms[1:]])
    want2 = 0.999 * rms2 / rms2.sum() + 0.001 / T
    np.testing.assert_allclose(sampler.probabilities().numpy(), want2, rtol=1e-12)

    # the state round-trips: the same draws from the same generator
    clone = make_t_sampler("importance", d)
    clone.load_state_dict(sampler.state_dict())
    assert torch.equal(clone.sample(50, gen(7))[0], sampler.sample(50, gen(7))[0])


# ------------------------------------------------------------------------ weightings
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_weights_match_their_formulas(prediction):
    d = dl.GaussianDiffusion("cosine", 1000, prediction=prediction)
    ab = d.schedule.alpha_bar.numpy()
    snr = ab / (1 - ab)
    got_min = snr_weight(Objective(weighting="min_snr", min_snr_gamma=5.0), prediction, torch.from_numpy(snr))
    clipped = np.minimum(snr, 5)
    want_min = {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}
    np.testing.assert_allclose(got_min.numpy(), want_min[prediction], rtol=1e-12)
    assert snr.min() < 5 < snr.max()  # both branches of the min are exercised
    got_p2 = snr_weight(Objective(weighting="p2", p2_k=2.0, p2_gamma=0.5), prediction, torch.from_numpy(snr))
    lam = (2.0 + snr) ** -0.5  # P2's factor on the eps error
    want_p2 = {"eps": lam, "x0": snr * lam, "v": snr / (snr + 1) * lam}
    np.testing.assert_allclose(got_p2.numpy(), want_p2[prediction], rtol=1e-12)
    assert snr_weight(Objective(), prediction, torch.from_numpy(snr)) is None


@pytest.mark.parametrize(
    "weighting, x0_weight",
    [
        ("min_snr", lambda snr: np.minimum(snr, 5.0)),
        ("p2", lambda snr: snr / (1.0 + snr)),  # k = 1, gamma = 1
        ("none", None),
    ],
)
def test_weighted_losses_agree_in_x0_space_for_every_target(weighting, x0_weight):
    """The same x0_hat expressed as an eps, x0 or v prediction gives the same weighted loss, equal to
    ``w_x0(SNR) ||x_0 - x0_hat||^2`` (min-SNR: ``min(SNR, 5)``; P2: ``SNR / (1 + SNR)``)."""
    T, B, D = 1000, 400, 3
    x0 = torch.randn(B, D, generator=gen(0), dtype=F64)
    noise = torch.randn(B, D, generator=gen(1), dtype=F64)
    t = torch.randint(0, T, (B,), generator=gen(2))
    ab = dl.GaussianDiffusion("cosine", T).schedule.alpha_bar.numpy()[t.numpy()][:, None]
    snr = (ab / (1 - ab))[:, 0]

    def x0_hat_of(x):
        return 0.7 * torch.tanh(x) + 0.1

    losses = {}
    for prediction in ("eps", "x0", "v"):
        d = dl.GaussianDiffusion("cosine", T, prediction=prediction)

        def net(x, tt, prediction=prediction, d=d):
            a, sg = d.alpha_sigma(tt.double(), x)
            xh = x0_hat_of(x)
            eh = (x - a * xh) / sg
            return {"eps": eh, "x0": xh, "v": a * eh - sg * xh}[prediction]

        losses[prediction] = d.loss(net, x0, t=t, noise=noise, weighting=weighting).numpy()
    xt = np.sqrt(ab) * x0.numpy() + np.sqrt(1 - ab) * noise.numpy()
    err = ((x0.numpy() - x0_hat_of(torch.from_numpy(xt)).numpy()) ** 2).mean(1)
    if x0_weight is None:  # unweighted L_simple: each target measures the error in its own space
        np.testing.assert_allclose(losses["eps"], snr * err, rtol=1e-6)
        np.testing.assert_allclose(losses["v"], (snr + 1) * err, rtol=1e-6)
        np.testing.assert_allclose(losses["x0"], err, rtol=1e-9)
        return
    for prediction in ("eps", "x0", "v"):
        np.testing.assert_allclose(losses[prediction], x0_weight(snr) * err, rtol=1e-6, err_msg=prediction)


# ------------------------------------------------------------------------ respaced learned sampling
def test_respaced_ancestral_with_the_optimal_learned_variance_has_the_right_spread():
    """N(0, s^2) data, exact denoiser, 25 of 1000 steps (linear schedule). With the network's v set to
    the fraction that makes ``sigma^2 = Var(x_s | x_t)`` on the respaced chain, ancestral sampling is
    exact: sample std = s. With v at the one-step optimum of the full chain (what a network trained on
    the T-step chain learns), the std is still much closer to s than fixed_small's."""
    T, steps, s, N, D = 1000, 25, 0.5, 20_000, 2
    d = dl.GaussianDiffusion("linear", T, variance="learned")
    oracle = GaussianOracle(d, 0.0, s)
    ab = np.cumprod(1 - linear_betas_np(T))
    ts = [int(v) for v in d.timesteps_for(steps)]
    nxt = dict(zip(ts[:-1], ts[1:]))

    def frac_for(t: int, prev: int) -> float:  # solve eq. 15 for the true variance
        beta = 1 - ab[t] / ab[prev]
        bt = (1 - ab[prev]) / (1 - ab[t]) * beta
        var = true_reverse_variance(ab, s, t, prev)
        return (math.log(var) - math.log(bt)) / (math.log(beta) - math.log(bt))

    def v_net(rule):
        def v_fn(x, t):
            ti = int(t[0])
            frac = 0.5 if ti not in nxt else rule(ti)  # the last step adds no noise
            return torch.full_like(x, 2 * frac - 1)

        return with_v(oracle, v_fn)

    x_T = torch.randn(N, D, generator=gen(0), dtype=F64)

    def std(model, diffusion):
        x = diffusion.sample(model, (N, D), steps=steps, x_T=x_T, generator=gen(1), dtype=F64)
        return float(x.std())

    small = std(oracle, dl.GaussianDiffusion("linear", T, variance="fixed_small"))
    respaced = std(v_net(lambda t: frac_for(t, nxt[t])), d)
    one_step = std(v_net(lambda t: frac_for(t, t - 1)), d)
    se = s / math.sqrt(2 * N * D)
    assert abs(respaced - s) < 4 * se  # measured 0.499
    assert abs(small - s) > 40 * se  # measured 0.404: respaced fixed_small is far too narrow
    assert abs(one_step - s) < 0.25 * abs(small - s)  # measured 0.487


def test_other_samplers_ignore_the_variance_channels():
    d = dl.GaussianDiffusion("linear", 200, variance="learned")
    fixed = dl.GaussianDiffusion("linear", 200)
    oracle = GaussianOracle(d, 0.2, 0.4)
    net = with_v(oracle, lambda x, t: torch.sin(3 * x))
    x_T = torch.randn(50, 2, generator=gen(0), dtype=F64)
    for sampler in ("ddim", "dpm++2m", "heun"):
        a = d.sample(net, (50, 2), sampler=sampler, steps=10, x_T=x_T, dtype=F64)
        b = fixed.sample(oracle, (50, 2), sampler=sampler, steps=10, x_T=x_T, dtype=F64)
        assert torch.equal(a, b), sampler
    # and the ancestral sampler can be told to use a fixed variance on a learned-variance model
    a = d.sample(net, (50, 2), variance="fixed_large", steps=10, x_T=x_T, generator=gen(1), dtype=F64)
    b = fixed.sample(oracle, (50, 2), variance="fixed_large", steps=10, x_T=x_T, generator=gen(1), dtype=F64)
    assert torch.equal(a, b)


# ------------------------------------------------------------------------ clear errors
def test_output_shapes_and_objectives_are_checked():
    x0 = torch.zeros(4, 3)
    learned = dl.GaussianDiffusion(timesteps=50, variance="learned", objective="hybrid")
    fixed = dl.GaussianDiffusion(timesteps=50)
    c_model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    two_c = lambda x, t: torch.zeros(x.shape[0], 2 * x.shape[1])  # noqa: E731
    with pytest.raises(ValueError, match=r"returned \(4, 3\).*variance='learned'.*\(4, 6\)"):
        learned.loss(c_model, x0)
    with pytest.raises(ValueError, match=r"returned \(4, 6\).*use variance='learned'"):
        fixed.loss(two_c, x0)
    with pytest.raises(ValueError, match=r"variance='learned'.*objective is 'simple'"):
        learned.loss(two_c, x0, objective="simple")
    with pytest.raises(ValueError, match=r"objective 'hybrid'.*variance='fixed_small'"):
        fixed.loss(c_model, x0, objective="hybrid")
    fixed.loss(c_model, x0, objective="vlb")  # L_vlb with a fixed variance trains the mean: allowed
    with pytest.raises(ValueError, match=r"unknown objective 'kl'; choose one of simple, hybrid, vlb"):
        dl.GaussianDiffusion(objective="kl")
    with pytest.raises(ValueError, match=r"unknown weighting 'snr'; choose one of none, min_snr, p2"):
        fixed.loss(c_model, x0, weighting="snr")
    with pytest.raises(ValueError, match=r"weighting 'min_snr'.*objective 'vlb' has none"):
        Objective("vlb", "min_snr")
    with pytest.raises(ValueError, match=r"min_snr_gamma must be a finite number > 0, got 0"):
        Objective(weighting="min_snr", min_snr_gamma=0)
    with pytest.raises(ValueError, match=r"variance='learned' needs a network that outputs variance"):
        fixed.sample(c_model, (4, 3), variance="learned", steps=5)
    with pytest.raises(ValueError, match=r"learned variances belong to the DDPM chain"):
        EDMDiffusion(variance="learned")
    with pytest.raises(ValueError, match=r"t_sampler='importance'.*EDMDiffusion.*use 'uniform'"):
        make_t_sampler("importance", EDMDiffusion())
    with pytest.raises(ValueError, match=r"unknown t_sampler 'rms'"):
        make_t_sampler("rms", fixed)


def test_config_keys_wire_the_objective_and_check_learn_sigma():
    sets = ["diffusion.variance=learned", "model.learn_sigma=true", "diffusion.objective=hybrid",
            "diffusion.weighting=p2", "diffusion.p2_k=2.0"]
    cfg = config_mod.load("toy2d", sets)
    d = build_diffusion(cfg)
    assert d.variance == "learned" and d.objective == Objective("hybrid", "p2", p2_k=2.0)
    with pytest.raises(ValueError, match=r"diffusion.variance = 'learned' needs model.learn_sigma = true"):
        build_diffusion(config_mod.load("toy2d", ["diffusion.variance=learned"]))
    with pytest.raises(ValueError, match=r"model.learn_sigma = true.*set diffusion.variance = 'learned'"):
        build_diffusion(config_mod.load("toy2d", ["model.learn_sigma=true"]))
    with pytest.raises(ValueError, match=r"diffusion.objective='vlb' applies to the DDPM chain"):
        build_diffusion(config_mod.load("toy2d", ["diffusion.process=edm", "diffusion.objective=vlb"]))
    with pytest.raises(ValueError, match=r"\[diffusion\] unknown weighting 'minsnr'"):
        build_diffusion(config_mod.load("toy2d", ["diffusion.weighting=minsnr"]))
    with pytest.raises(ValueError, match=r"train.t_sampler must be one of uniform, importance"):
        Trainer(dl.GaussianDiffusion(timesteps=50), MLPDenoiser(2, 8, 0, 8, 50), torch.zeros(4, 2),
                TrainConfig(t_sampler="loss"), "unused")


# ------------------------------------------------------------------------ trainer
def _trainer(run, seed=0, **train):
    T = 50
    torch.manual_seed(seed)
    model = MLPDenoiser(2, hidden=32, depth=1, emb_dim=16, timesteps=T, learn_sigma=True)
    opts = dict(steps=40, batch_size=64, lr=5e-3, warmup=3, ckpt_every=10, log_every=1, keep_checkpoints=4,
                t_sampler="importance")
    opts.update(train)
    objective = Objective("hybrid", decoder="gaussian")
    d = dl.GaussianDiffusion("linear", T, variance="learned", objective=objective)
    return Trainer(d, model, make_toy2d("moons", 256, seed=0), TrainConfig(**opts), run)


def _log(run):
    with open(Path(run) / "log.csv", newline="") as fh:
        return [row[:4] for row in csv.reader(fh)]


def test_importance_sampled_training_resumes_exactly(tmp_path):
    full = _trainer(tmp_path / "full")
    full.fit(progress_bar=False)
    assert full.t_sampler.ready  # the sampler left its uniform warm-up during the run
    first_ready = None
    for step in (10, 20, 30):
        state = load_checkpoint(tmp_path / "full", step)["t_sampler"]
        if first_ready is None and bool((state["counts"] == 10).all()):
            first_ready = step
    assert first_ready is not None and first_ready <= 30  # so the resumed stretch samples by importance

    split = _trainer(tmp_path / "split")
    split.fit(progress_bar=False, until=first_ready)
    again = _trainer(tmp_path / "split", seed=123)
    assert again.resume() == first_ready
    again.fit(progress_bar=False)
    assert _log(tmp_path / "split") == _log(tmp_path / "full")
    pairs = zip(again.model.state_dict().values(), full.model.state_dict().values())
    assert all(torch.equal(a, b) for a, b in pairs)
    assert torch.equal(again.t_sampler.losses, full.t_sampler.losses)


def test_cli_trains_samples_and_scores_a_learned_variance_hybrid_model(tmp_path):
    from difflab.cli import main

    run = tmp_path / "run"
    sets = ["diffusion.timesteps=100", "model.hidden=32", "model.depth=1", "model.emb_dim=16",
            "train.steps=20", "train.batch_size=64", "train.ckpt_every=10", "data.n_train=1000",
            "data.n_test=100", "sample.n=200", "eval.bound_n=20", "diffusion.variance=learned",
            "model.learn_sigma=true", "diffusion.objective=hybrid", "diffusion.weighting=min_snr",
            "train.t_sampler=importance"]
    args = [a for kv in sets for a in ("--set", kv)]
    assert main(["train", "--config", "toy2d", "--run", str(run), "--no-progress", *args]) == 0
    assert load_checkpoint(run)["t_sampler"]["kind"] == "importance"
    assert main(["sample", "--run", str(run), "--steps", "10", "--no-progress"]) == 0  # ancestral, learned
    x = np.load(run / "samples.npy")
    assert x.shape == (200, 2) and np.isfinite(x).all()
    assert main(["eval", "bpd", "--run", str(run), "--no-progress"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert math.isfinite(m["bound_nats_per_dim"])


def test_guidance_keeps_the_conditional_variance_channels():
    from difflab.guidance import cfg as guide

    def net(x, t, y):  # prediction and v both depend on the label
        shift = y.to(x.dtype)[:, None]
        return torch.cat([x + shift, 0.1 * shift.expand_as(x)], 1)

    x, t = torch.randn(6, 2, generator=gen(0), dtype=F64), torch.zeros(6)
    out = guide(net, torch.full((6,), 1), scale=3.0, null_class=2)(x, t)
    cond, uncond = net(x, t, torch.full((6,), 1)), net(x, t, torch.full((6,), 2))
    torch.testing.assert_close(out[:, :2], uncond[:, :2] + 3.0 * (cond[:, :2] - uncond[:, :2]))
    torch.testing.assert_close(out[:, 2:], cond[:, 2:])
