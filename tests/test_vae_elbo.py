"""ELBO algebra of difflab.vae against independent numbers: Monte Carlo, closed forms, and linear-Gaussian
(hierarchical) VAEs whose log p(x) and exact posteriors are known from Gaussian conditioning."""

import math

import pytest
import torch

from difflab.vae.elbo import (
    gaussian_log_prob,
    iwae_bound,
    kl_standard_normal,
    markov_elbo_terms,
    markov_log_weights,
    reparameterize,
)


@pytest.fixture(autouse=True)
def float64():
    """These closed forms are checked to 1e-9: float64 by default here, restored after each test."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _log_normal(x, mean, var):
    """log N(x; mean, diag var) summed over the last axis (written out, not through difflab)."""
    return (-0.5 * (math.log(2 * math.pi) + torch.log(var) + (x - mean) ** 2 / var)).sum(-1)


def test_gaussian_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mean = torch.tensor([[0.3, -1.2, 2.0, 0.0]])
    log_var = torch.tensor([[-0.5, 0.7, -2.0, 0.1]])
    n = 400_000
    z = mean + torch.exp(0.5 * log_var) * torch.randn(n, 4, generator=g)
    ratio = _log_normal(z, mean, log_var.exp()) - _log_normal(z, 0 * z, torch.ones_like(z))
    mc, se = ratio.mean(), ratio.std() / math.sqrt(n)
    kl = kl_standard_normal(mean, log_var)
    assert abs(float(kl) - float(mc)) < 4 * float(se)


def test_reparameterized_gradient_matches_score_function_and_closed_form():
    """d/d(mu, log_var) E_q[f(z)] for f(z) = sum(sin z + z^2 / 2): the reparameterized estimate, the
    score-function (REINFORCE) estimate and the closed form E[sin z] = sin(mu) e^{-s^2/2},
    E[z^2] = mu^2 + s^2 agree."""
    g = torch.Generator().manual_seed(1)
    mu0, lv0 = torch.tensor([0.4, -1.0, 1.5]), torch.tensor([-0.3, 0.2, -1.0])
    n = 200_000

    def f(z):
        return (torch.sin(z) + 0.5 * z**2).sum(-1)

    mu, lv = mu0.clone().requires_grad_(True), lv0.clone().requires_grad_(True)
    eps = torch.randn(n, 3, generator=g)
    f(reparameterize(mu, lv, eps)).mean().backward()
    reparam = torch.cat([mu.grad, lv.grad])

    z = mu0 + torch.exp(0.5 * lv0) * torch.randn(n, 3, generator=g)
    var = lv0.exp()
    score_mu = (z - mu0) / var  # d log q / d mu
    score_lv = 0.5 * ((z - mu0) ** 2 / var - 1.0)  # d log q / d log_var
    fz = f(z)
    fc = (fz - fz.mean()).unsqueeze(1)  # a baseline lowers the variance, E[score] = 0 keeps it unbiased
    per = torch.cat([fc * score_mu, fc * score_lv], 1)
    reinforce, se = per.mean(0), per.std(0) / math.sqrt(n)

    s2 = var
    exact = torch.cat([torch.cos(mu0) * torch.exp(-s2 / 2) + mu0,
                       torch.sin(mu0) * torch.exp(-s2 / 2) * (-s2 / 2) + s2 / 2])
    assert torch.allclose(reparam, exact, atol=0.01)
    assert bool(((reinforce - exact).abs() < 4 * se + 1e-3).all())


class LinearGaussianVAE:
    """p(z) = N(0, I_d), p(x|z) = N(W z + b, s^2 I_D) with W = Q diag(w) (orthonormal Q), so that the
    posterior p(z|x) = N(P W^T (x - b) / s^2, P), P = (I + W^T W / s^2)^-1, is diagonal."""

    def __init__(self, D=6, d=3, s=0.5, seed=0):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(D, d, generator=g))
        self.w = torch.tensor([2.0, 1.0, 0.4])[:d]
        self.W, self.b, self.s2 = q * self.w, torch.randn(D, generator=g), s**2
        self.post_var = 1.0 / (1.0 + self.w**2 / self.s2)

    def log_px(self, x):
        cov = self.W @ self.W.T + self.s2 * torch.eye(len(self.b))
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    def decoder_nll(self, x, z):
        return -gaussian_log_prob(x, z @ self.W.T + self.b, torch.full_like(x, math.log(self.s2)))

    def exact_encoder(self, x):
        mean = (x - self.b) @ self.W / self.s2 * self.post_var
        return mean, torch.log(self.post_var).expand_as(mean)

    def sample(self, n, g):
        z = torch.randn(n, len(self.w), generator=g)
        return z @ self.W.T + self.b + math.sqrt(self.s2) * torch.randn(n, len(self.b), generator=g)


def _kl(m1, v1, m2, v2):
    return 0.5 * (torch.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1).sum(-1)


def test_linear_gaussian_vae_elbo_equals_log_px_with_exact_posterior_and_gap_is_kl():
    m = LinearGaussianVAE()
    g = torch.Generator().manual_seed(2)
    x = m.sample(8, g)
    truth = -m.log_px(x)
    # exact posterior: every importance weight equals p(x), the ELBO is log p(x)
    log_w = markov_log_weights(x, [m.exact_encoder], [], m.decoder_nll, g)
    assert torch.allclose(-log_w, truth, atol=1e-9)
    terms = markov_elbo_terms(x.repeat(20_000, 1), [m.exact_encoder], [], m.decoder_nll, g)
    per = terms.total.reshape(20_000, 8)
    assert bool(((per.mean(0) - truth).abs() < 4 * per.std(0) / math.sqrt(20_000) + 1e-9).all())

    def wrong(x):  # a shifted, too-narrow encoder
        mean, log_var = m.exact_encoder(x)
        return mean + 0.3, log_var - 0.5

    terms = markov_elbo_terms(x.repeat(20_000, 1), [wrong], [], m.decoder_nll, g)
    per = terms.total.reshape(20_000, 8)
    mean_w, lv_w = wrong(x)
    mean_e, lv_e = m.exact_encoder(x)
    gap = _kl(mean_w, lv_w.exp(), mean_e, lv_e.exp())  # -ELBO - (-log p(x)) = KL(q || p(z|x))
    assert bool((gap > 0.1).all())
    assert bool(((per.mean(0) - truth - gap).abs() < 4 * per.std(0) / math.sqrt(20_000)).all())
    # IWAE tightens with K towards -log p(x) (64 rows: the 8 examples 8 times, to average its noise)
    xs = x.repeat(8, 1)
    t = float(truth.mean())
    iw = [float(iwae_bound(lambda r: markov_log_weights(r, [wrong], [], m.decoder_nll, g), xs, k).mean()) - t
          for k in (1, 10, 100, 1000)]
    gap = float(gap.mean())  # measured over seeds 0-5: 1.12-1.37, 0.29-0.58, 0.10-0.23, -0.01-0.10
    assert abs(iw[0] - gap) < 0.25 * gap
    assert iw[0] > iw[1] > iw[2] and iw[3] < iw[2] + 0.05
    assert -0.05 < iw[3] < 0.15 * gap


def test_linear_gaussian_hierarchical_vae_exact_markov_posterior():
    """L = 2: z_2 ~ N(0, I), z_1 | z_2 ~ N(a z_2, v_1), x | z_1 ~ N(W z_1 + b, s^2). The posterior
    factorises as p(z_1|x) p(z_2|z_1) (x is independent of z_2 given z_1), so a Markovian encoder can be
    exact: then log w = log p(x) for every draw. A wrong encoder gives a lower ELBO, and IWAE rises."""
    m = LinearGaussianVAE(seed=3)
    a, v1 = torch.tensor([1.5, 0.5, 2.0]), torch.tensor([0.3, 0.8, 0.2])
    prior_var = a**2 + v1  # z_1's marginal variance
    cov_x = m.W @ torch.diag(prior_var) @ m.W.T + m.s2 * torch.eye(6)
    post1_var = 1.0 / (1.0 / prior_var + m.w**2 / m.s2)
    post2_var = 1.0 / (1.0 + a**2 / v1)

    def q1(x):
        mean = post1_var * ((x - m.b) @ m.W / m.s2)
        return mean, torch.log(post1_var).expand_as(mean)

    def q2(z1):
        mean = post2_var * a * z1 / v1
        return mean, torch.log(post2_var).expand_as(mean)

    def p1(z2):
        return a * z2, torch.log(v1).expand_as(z2)

    g = torch.Generator().manual_seed(4)
    x = m.b + torch.randn(6, 6, generator=g) @ torch.linalg.cholesky(cov_x).T
    truth = -torch.distributions.MultivariateNormal(m.b, cov_x).log_prob(x)
    log_w = markov_log_weights(x, [q1, q2], [p1], m.decoder_nll, g)
    assert torch.allclose(-log_w, truth, atol=1e-9)
    n = 20_000
    terms = markov_elbo_terms(x.repeat(n, 1), [q1, q2], [p1], m.decoder_nll, g)
    per = terms.total.reshape(n, 6)
    assert bool(((per.mean(0) - truth).abs() < 4 * per.std(0) / math.sqrt(n)).all())
    assert terms.kl.shape == (n * 6, 2)

    def q2_wrong(z1):
        mean, log_var = q2(z1)
        return 0.5 * mean, log_var + 0.5

    terms = markov_elbo_terms(x.repeat(n, 1), [q1, q2_wrong], [p1], m.decoder_nll, g)
    per = terms.total.reshape(n, 6)
    assert bool((per.mean(0) - truth > 4 * per.std(0) / math.sqrt(n)).all())

    def lw(r):
        return markov_log_weights(r, [q1, q2_wrong], [p1], m.decoder_nll, g)

    iwae = [float(iwae_bound(lw, x.repeat(8, 1), k).mean()) for k in (1, 10, 100)]
    t = float(truth.mean())
    assert iwae[0] > iwae[1] > iwae[2] > t - 0.05
