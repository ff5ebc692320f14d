"""Schedules, Gaussian algebra and the discretized decoder against independent computations."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import difflab as dl
from difflab import gaussian
from difflab.schedules import DiscreteSchedule, cosine_betas, linear_betas, sigmoid_betas


def test_linear_schedule_endpoints_and_rescaling():
    b = linear_betas(1000)
    assert b.dtype == torch.float64
    assert float(b[0]) == pytest.approx(1e-4) and float(b[-1]) == pytest.approx(0.02)
    # rescaled for other T: alpha_bar_T stays near e^-10 (sum of betas is T-invariant; the
    # second-order term sum beta^2/2 grows like 1/T and moves log alpha_bar_T by ~0.2 at T = 250)
    for T in (250, 4000):
        ab = np.prod(1 - linear_betas(T).numpy())
        assert abs(math.log(ab) - math.log(np.prod(1 - b.numpy()))) < 0.25


def test_cosine_schedule_matches_closed_form():
    T, s = 1000, 0.008
    ab = DiscreteSchedule(cosine_betas(T)).alpha_bar.numpy()
    u = np.arange(1, T + 1) / T
    f = np.cos((u + s) / (1 + s) * np.pi / 2) ** 2 / np.cos(s / (1 + s) * np.pi / 2) ** 2
    # identical until the beta clip at 0.999 acts in the very last steps
    np.testing.assert_allclose(ab[: T - 20], f[: T - 20], rtol=1e-10)
    assert float(cosine_betas(T).max()) <= 0.999


def test_sigmoid_schedule_is_monotone_and_ends_near_zero():
    ab = DiscreteSchedule(sigmoid_betas(1000)).alpha_bar
    assert bool((ab[1:] < ab[:-1]).all())
    assert float(ab[0]) > 0.999 and float(ab[-1]) < 1e-3


def test_log_snr_integer_and_fractional():
    d = dl.GaussianDiffusion("linear", 1000)
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    lam = np.log(ab / (1 - ab))
    t = torch.tensor([0.0, 10.0, 500.0, 999.0])
    np.testing.assert_allclose(d.log_snr(t).numpy(), lam[[0, 10, 500, 999]], rtol=1e-9)
    frac = d.log_snr(torch.tensor([10.25])).item()
    assert frac == pytest.approx(0.75 * lam[10] + 0.25 * lam[11], rel=1e-12)
    with pytest.raises(ValueError, match=r"out of range.*\[0, 999\]"):
        d.log_snr(torch.tensor([1000.0]))
    with pytest.raises(ValueError, match="out of range"):
        d.log_snr(-0.5)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_prediction_conversions_are_exact(prediction):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(64, 3, generator=g, dtype=torch.float64)
    ab = torch.rand(64, 1, generator=g, dtype=torch.float64) * 0.98 + 0.01
    alpha, sigma = ab.sqrt(), (1 - ab).sqrt()
    x_t = alpha * x0 + sigma * eps
    # v defined directly from its definition, independent of target_of
    target = {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0}[prediction]
    torch.testing.assert_close(gaussian.target_of(prediction, x0, eps, alpha, sigma), target)
    x0_hat, eps_hat = gaussian.to_x0_eps(target, prediction, x_t, alpha, sigma)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, eps)


def test_respaced_posterior_matches_gaussian_conditioning():
    """q(x_s | x_t, x_0) for s several steps before t, by conditioning the joint Gaussian."""
    d = dl.GaussianDiffusion("cosine", 1000)
    ab = d.schedule.alpha_bar
    s, t = 300, 420
    a_s, a_t = ab[s].sqrt(), ab[t].sqrt()
    # Given x0, x_s = a_s x0 + sqrt(1-ab_s) e1 and x_t = (a_t/a_s) x_s + sqrt(1 - ab_t/ab_s) e2.
    var_s = 1 - ab[s]
    cov_st = (a_t / a_s) * var_s
    var_t = 1 - ab[t]
    reg = cov_st / var_t  # regression coefficient of x_s on x_t
    cond_var = var_s - cov_st**2 / var_t
    c0, ct, v = gaussian.posterior_coefficients(a_t, (1 - ab[t]).sqrt(), a_s, (1 - ab[s]).sqrt())
    assert float(ct) == pytest.approx(float(reg), rel=1e-12)
    assert float(c0) == pytest.approx(float(a_s - reg * a_t), rel=1e-12)
    assert float(v) == pytest.approx(float(cond_var), rel=1e-10)


def test_q_posterior_one_step_matches_notes_coefficients():
    d = dl.GaussianDiffusion("linear", 1000)
    b = d.schedule.betas.numpy()
    ab = np.cumprod(1 - b)
    t = 500
    x0 = torch.tensor([[0.3]], dtype=torch.float64)
    xt = torch.tensor([[-0.7]], dtype=torch.float64)
    mean, var, log_var = d.q_posterior(x0, xt, torch.tensor([t]))
    c0 = np.sqrt(ab[t - 1]) * b[t] / (1 - ab[t])
    ct = np.sqrt(1 - b[t]) * (1 - ab[t - 1]) / (1 - ab[t])
    assert mean.item() == pytest.approx(c0 * 0.3 + ct * -0.7, rel=1e-10)
    assert var.item() == pytest.approx((1 - ab[t - 1]) / (1 - ab[t]) * b[t], rel=1e-10)
    assert log_var.item() == pytest.approx(math.log(var.item()), rel=1e-10)


@pytest.mark.parametrize("bins", [256, 17, 2])
@pytest.mark.parametrize("mean,std", [(0.0, 0.01), (0.9, 0.3), (-3.0, 0.5), (0.2, 1e-4)])
def test_discretized_likelihood_is_a_distribution(bins, mean, std):
    levels = torch.linspace(-1, 1, bins, dtype=torch.float64)
    m = torch.full_like(levels, mean)
    lv = torch.full_like(levels, 2 * math.log(std))
    logp = gaussian.discretized_gaussian_log_likelihood(levels, m, lv, bins)
    assert float(torch.logsumexp(logp, 0)) == pytest.approx(0.0, abs=1e-9)
    # independent: scipy's normal CDF over the same bin edges
    half = 1 / (bins - 1)
    lo = np.where(levels.numpy() < -1 + half / 2, -np.inf, levels.numpy() - half)
    hi = np.where(levels.numpy() > 1 - half / 2, np.inf, levels.numpy() + half)
    # right of the mean use survival functions so the reference itself does not cancel
    right = lo > mean
    p = np.where(
        right,
        stats.norm.sf(lo, mean, std) - stats.norm.sf(hi, mean, std),
        stats.norm.cdf(hi, mean, std) - stats.norm.cdf(lo, mean, std),
    )
    ok = p > 1e-200
    np.testing.assert_allclose(logp.numpy()[ok], np.log(p[ok]), rtol=1e-6, atol=1e-9)


def test_discretized_likelihood_tails_are_finite():
    x = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    m = torch.tensor([-1.0, 1.0, -0.5], dtype=torch.float64)
    lv = torch.full_like(x, 2 * math.log(0.05))
    logp = gaussian.discretized_gaussian_log_likelihood(x, m, lv, 256)
    assert bool(torch.isfinite(logp).all())
    # far tail: log(Phi(b) - Phi(a)) with a, b ~ -10..-30 standard deviations, versus scipy
    ref = np.log(stats.norm.sf(20 - 1 / 255 / 0.05) - stats.norm.sf(20 + 1 / 255 / 0.05))
    got = gaussian.discretized_gaussian_log_likelihood(
        torch.tensor([0.5], dtype=torch.float64),
        torch.tensor([-0.5], dtype=torch.float64),
        torch.tensor([2 * math.log(0.05)], dtype=torch.float64),
        256,
    )
    assert got.item() == pytest.approx(ref, rel=1e-6)


def test_normal_kl_against_monte_carlo():
    g = torch.Generator().manual_seed(3)
    m1, lv1, m2, lv2 = 0.3, math.log(0.5), -0.2, math.log(1.7)
    x = m1 + math.exp(0.5 * lv1) * torch.randn(400_000, generator=g, dtype=torch.float64)
    log_q = stats.norm.logpdf(x.numpy(), m1, math.exp(0.5 * lv1))
    log_p = stats.norm.logpdf(x.numpy(), m2, math.exp(0.5 * lv2))
    mc = log_q - log_p
    got = gaussian.normal_kl(*(torch.tensor(v, dtype=torch.float64) for v in (m1, lv1, m2, lv2)))
    assert got.item() == pytest.approx(mc.mean(), abs=5 * mc.std() / math.sqrt(len(mc)))


def test_q_sample_moments():
    d = dl.GaussianDiffusion("linear", 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1), 0.8, dtype=torch.float64)
    xt = d.q_sample(x0, torch.full((200_000,), 300), torch.randn(x0.shape, generator=g, dtype=torch.float64))
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[300]
    assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.8, abs=0.005)
    assert xt.var().item() == pytest.approx(1 - ab, rel=0.01)


def test_loss_targets():
    """L_simple for each parameterization, by hand."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 2, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    noise = torch.randn(8, 2, generator=g)

    def model(x, tt):
        return 0.5 * x

    for pred in ("eps", "x0", "v"):
        d = dl.GaussianDiffusion(prediction=pred)
        ab = d.schedule.alpha_bar[t].float()[:, None]
        a, s = ab.sqrt(), (1 - ab).sqrt()
        xt = a * x0 + s * noise
        target = {"eps": noise, "x0": x0, "v": a * noise - s * x0}[pred]
        want = ((0.5 * xt - target) ** 2).mean(1)
        torch.testing.assert_close(d.loss(model, x0, t=t, noise=noise), want, rtol=1e-5, atol=1e-6)
