"""Samplers and the bound measured against exact answers (no training needed)."""

import math

import numpy as np
import pytest
import torch

import difflab as dl
from difflab.oracles import GaussianMixtureOracle, GaussianOracle, GridOracle
from difflab.processes.ddpm.bound import entropy_bits_per_dim

MU, S = 0.5, 0.3


@pytest.fixture(scope="module")
def diffusion():
    return dl.GaussianDiffusion("linear", 1000)


def test_ancestral_1000_steps_reproduces_mean_and_std(diffusion):
    oracle = GaussianOracle(diffusion, MU, S)
    x, nfe = diffusion.sample(
        oracle, (10_000, 4), generator=torch.Generator().manual_seed(0), return_nfe=True
    )
    assert nfe == 1000
    assert abs(x.mean().item() - MU) < 0.02 * MU
    assert abs(x.std().item() - S) < 0.02 * S


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ancestral_variances_both_reach_the_data(variance):
    d = dl.GaussianDiffusion("linear", 1000, variance=variance)
    x = d.sample(GaussianOracle(d, MU, S), (10_000, 2), generator=torch.Generator().manual_seed(1))
    assert abs(x.std().item() - S) < 0.02 * S


def test_ddim_converges_as_steps_grow(diffusion):
    oracle = GaussianOracle(diffusion, MU, S)
    x_T = torch.randn(10_000, 2, generator=torch.Generator().manual_seed(2))
    errs = []
    for steps in (5, 10, 20, 50, 200, 500):
        x = diffusion.sample(oracle, x_T.shape, sampler="ddim", steps=steps, x_T=x_T)
        errs.append(abs(x.std().item() - S) / S)
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.01
    # first order: the error roughly halves when the steps double (10 -> 20)
    assert 1.5 < errs[1] / errs[2] < 3.0


def test_ddim_eta_one_is_ancestral(diffusion):
    """eta = 1 DDIM and Algorithm 2 are the same update written two ways."""
    oracle = GaussianOracle(diffusion, MU, S)
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a = diffusion.sample(oracle, x_T.shape, sampler="ddim", eta=1.0, steps=50, x_T=x_T,
                         generator=torch.Generator().manual_seed(9))
    b = diffusion.sample(oracle, x_T.shape, sampler="ancestral", steps=50, x_T=x_T,
                         generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("spacing", ["uniform", "quadratic", "logsnr"])
def test_spacings_are_decreasing_and_cover_the_chain(diffusion, spacing):
    t = diffusion.timesteps_for(25, spacing)
    assert t.numel() == 25 and float(t[0]) == pytest.approx(999) and float(t[-1]) == pytest.approx(0)
    assert bool((t[1:] < t[:-1]).all())
    if spacing == "logsnr":
        lam = diffusion.log_snr(t)
        steps = lam[1:] - lam[:-1]
        torch.testing.assert_close(steps, steps.mean().expand_as(steps), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("steps", [1000, 100])
def test_ancestral_on_mixture_matches_modes(steps):
    """Ancestral sampling of a 2-D narrow mixture lands on its modes with the right weights;
    the full chain also reproduces each mode's spread (respacing shrinks it, as DDIM does)."""
    d = dl.GaussianDiffusion("cosine", 1000)
    means = torch.tensor([[1.0, 1.0], [-1.0, 0.5], [0.0, -1.0]])
    oracle = GaussianMixtureOracle(d, means, stds=0.05, weights=torch.tensor([0.5, 0.3, 0.2]))
    x = d.sample(oracle, (6000, 2), steps=steps, generator=torch.Generator().manual_seed(4))
    k = torch.cdist(x, means).argmin(1)
    frac = torch.bincount(k, minlength=3).double() / len(k)
    want = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    torch.testing.assert_close(frac, want, atol=0.03, rtol=0)
    if steps == 1000:
        spread = (x - means[k]).std().item()
        assert abs(spread - 0.05) < 0.05 * 0.05


@pytest.mark.parametrize("bins", [17, 256])
def test_bound_with_exact_denoiser_is_above_entropy(bins, capsys):
    d = dl.GaussianDiffusion("linear", 1000)
    levels = torch.linspace(-1, 1, bins, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    probs = torch.softmax(torch.randn(bins, generator=g, dtype=torch.float64) * 1.5, 0)
    oracle = GridOracle(d, levels, probs)
    x0 = oracle.sample((128, 4), generator=g)
    terms = d.vlb_terms(oracle, x0, bins=bins, generator=g)
    bpd = terms.total
    h = entropy_bits_per_dim(probs)
    se = bpd.std().item() / math.sqrt(len(bpd))
    gap = bpd.mean().item() - h
    with capsys.disabled():
        print(f"\n  bins={bins}: bound {bpd.mean():.4f} bits/dim, entropy {h:.4f}, gap {gap:.4f} +- {se:.4f}")
    assert gap > -3 * se
    # the prior term is tiny for the linear schedule (alpha_bar_T ~ 4e-5) and all terms are >= 0
    assert float(terms.prior.max()) < 1e-3
    assert float(terms.terms.min()) > -1e-9


def _analytic_bound_nats_per_dim(d, mu, s):
    """The bound for N(mu, s^2) data and its exact denoiser, in closed form.

    Everything is linear-Gaussian: with ``v_t = Var[x_0 | x_t] = s^2 sigma_t^2 / (alpha_t^2 s^2 +
    sigma_t^2)`` the model mean misses the true posterior mean by ``c0_t (x_0 - E[x_0|x_t])``, so
    ``E L_{t-1} = KL of the variances + c0_t^2 v_t / (2 sigma_p^2)`` and
    ``E L_0 = 0.5 log(2 pi sigma_p^2) + v_1 / (2 sigma_p^2)``.
    """
    b = d.schedule.betas.numpy()
    ab = np.cumprod(1 - b)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    v = s**2 * (1 - ab) / (ab * s**2 + 1 - ab)
    post_var = b * (1 - ab_prev) / (1 - ab)
    c0 = np.sqrt(ab_prev) * b / (1 - ab)
    sp2 = np.concatenate([[post_var[1]], post_var[1:]])  # fixed_small, index 0 clipped
    ratio = post_var[1:] / sp2[1:]
    kl = 0.5 * (ratio - 1 - np.log(ratio)) + c0[1:] ** 2 * v[1:] / (2 * sp2[1:])
    dec = 0.5 * np.log(2 * np.pi * sp2[0]) + v[0] / (2 * sp2[0])
    m2 = mu**2 + s**2
    prior = 0.5 * (ab[-1] * m2 + (1 - ab[-1]) - 1 - np.log(1 - ab[-1]))
    return prior + kl.sum() + dec


def test_bound_of_gaussian_data_matches_closed_form():
    """Continuous decoder: the Monte Carlo bound equals its closed form and exceeds the data's
    differential entropy."""
    d = dl.GaussianDiffusion("linear", 1000)
    g = torch.Generator().manual_seed(6)
    x0 = MU + S * torch.randn(256, 2, generator=g, dtype=torch.float64)
    bpd = d.bits_per_dim(GaussianOracle(d, MU, S), x0, decoder="gaussian", generator=g)
    nats = bpd * math.log(2)
    se = nats.std().item() / math.sqrt(len(nats))
    want = _analytic_bound_nats_per_dim(d, MU, S)
    assert nats.mean().item() == pytest.approx(want, abs=4 * se)
    h = 0.5 * math.log(2 * math.pi * math.e * S**2)
    assert want > h
