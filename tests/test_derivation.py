"""Numerical checks of the DDPM derivation in the study notes (seeds 000..004, see docs/derivation.md).

Every test compares a number produced by difflab with an independent computation: a closed form
evaluated here in numpy, a 1-D quadrature on a fine grid, exact Gaussian algebra, or Monte Carlo.
Where a note states an equation wrongly, the wrong form is put through the same check and must
fail it. ``docs/derivation.md`` maps each equation (and each erratum) to the test below.

Conventions: the notes' time ``t = 1..T`` is difflab's index ``i = t - 1``. Monte Carlo checks use
a tolerance of ``Z = 5`` standard errors (false-alarm probability ~6e-7 per comparison); the seeds
are fixed, so the suite is deterministic anyway. Everything runs in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special

import difflab as dl
from difflab import gaussian
from difflab.oracles import GaussianOracle
from difflab.schedules import DiscreteSchedule, linear_betas

F64 = torch.float64
LN2 = math.log(2.0)
Z = 5.0  # Monte Carlo tolerance in standard errors

# a short schedule with large steps: every index error of the notes changes the numbers visibly
SHORT_BETAS = np.array([0.05, 0.1, 0.2, 0.3, 0.5])
MU, S = 0.3, 0.5  # 1-D Gaussian data N(MU, S^2)


# --------------------------------------------------------------------------- independent helpers
class Notes:
    """The notes' schedule quantities, computed here in numpy from the betas alone.

    Arrays are indexed by ``i = t - 1``: ``beta[i] = beta_t``, ``abar[i] = prod_{s<=t} alpha_s``,
    ``abar_prev[i] = abar_{t-1}`` (1 at t = 1), ``beta_tilde[i] = (1-abar_{t-1})/(1-abar_t) beta_t``.
    """

    def __init__(self, betas):
        self.beta = np.asarray(betas, dtype=np.float64)
        self.T = self.beta.size
        self.alpha = 1.0 - self.beta
        self.abar = np.cumprod(self.alpha)
        self.abar_prev = np.concatenate([[1.0], self.abar[:-1]])
        self.beta_tilde = self.beta * (1.0 - self.abar_prev) / (1.0 - self.abar)

    def reverse_var(self, kind: str = "fixed_small") -> np.ndarray:
        """sigma_t^2 of p(x_{t-1}|x_t): beta~_t or beta_t for t >= 2. At t = 1 beta~_1 = 0, so the
        decoder uses beta~_2 (difflab's documented convention, as in improved DDPM; beta_1 if T = 1)."""
        var = (self.beta_tilde if kind == "fixed_small" else self.beta).copy()
        var[0] = self.beta_tilde[1] if self.T > 1 else self.beta[0]
        return var


def seed001_linear_betas(T=1000, beta_1=1e-4, beta_T=0.02):
    """beta_t = beta_1 + (t-1)(beta_T - beta_1)/(T-1), as written in seed 001."""
    t = np.arange(1, T + 1, dtype=np.float64)
    return beta_1 + (t - 1) * (beta_T - beta_1) / (T - 1)


def log_normal(x, mean, var):
    return -0.5 * (np.log(2 * np.pi * var) + (x - mean) ** 2 / var)


class LinearEps:
    """A deterministic eps-model ``eps_theta(x_t, t) = a_t x_t + b_t`` (its reverse chain is
    linear-Gaussian, so every density of p_theta is available in closed form)."""

    def __init__(self, a, b):
        self.a = torch.as_tensor(np.asarray(a), dtype=F64)
        self.b = torch.as_tensor(np.asarray(b), dtype=F64)

    def __call__(self, x, t):
        i = t.round().long()
        shape = (-1,) + (1,) * (x.dim() - 1)
        return self.a[i].reshape(shape).to(x.dtype) * x + self.b[i].reshape(shape).to(x.dtype)


def imperfect_gaussian_eps(n: Notes, mu=MU, s=S, shrink=0.9, shift=0.05):
    """Coefficients of a deliberately imperfect eps-model for N(mu, s^2) data: the exact
    E[eps|x_t] = sigma (x_t - alpha mu) / (alpha^2 s^2 + sigma^2), slope shrunk and offset shifted."""
    alpha, sigma = np.sqrt(n.abar), np.sqrt(1 - n.abar)
    v = alpha**2 * s**2 + sigma**2
    return shrink * sigma / v, -sigma * alpha * mu / v + shift


def mu_theta_coeffs(n: Notes, a, b):
    """mu_theta = (x_t - beta_t / sqrt(1-abar_t) eps_theta) / sqrt(alpha_t) = A_t x_t + C_t."""
    k = n.beta / np.sqrt(1 - n.abar)
    return (1 - k * a) / np.sqrt(n.alpha), -k * b / np.sqrt(n.alpha)


def reverse_chain_gaussian(A, C, var):
    """Mean and covariance of (x_0, ..., x_T) under p(x_T) = N(0,1), x_{t-1} = A_t x_t + C_t + sd_t z."""
    T = len(A)
    m = np.zeros(T + 1)
    L = np.zeros((T + 1, T + 1))
    L[T, T] = 1.0
    for t in range(T, 0, -1):
        m[t - 1] = A[t - 1] * m[t] + C[t - 1]
        L[t - 1] = A[t - 1] * L[t]
        L[t - 1, t - 1] += math.sqrt(var[t - 1])
    return m, L @ L.T


def forward_chain_gaussian(n: Notes, x0: float):
    """Mean and covariance of (x_1..x_T) given x_0 under x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps."""
    T = n.T
    L = np.zeros((T, T))
    for t in range(1, T + 1):
        if t > 1:
            L[t - 1] = math.sqrt(n.alpha[t - 1]) * L[t - 2]
        L[t - 1, t - 1] = math.sqrt(n.beta[t - 1])
    return np.sqrt(n.abar) * x0, L @ L.T


def mvn_kl(m1, S1, m2, S2):
    """KL(N(m1,S1) || N(m2,S2)) = 1/2 [log|S2|/|S1| - d + tr(S2^-1 S1) + (m2-m1)^T S2^-1 (m2-m1)]."""
    S2inv = np.linalg.inv(S2)
    dm = m2 - m1
    logdet = np.linalg.slogdet(S2)[1] - np.linalg.slogdet(S1)[1]
    return 0.5 * (logdet - len(m1) + np.trace(S2inv @ S1) + dm @ S2inv @ dm)


def mc_agrees(samples, value, z=Z):
    """|mean(samples) - value| <= z standard errors of the mean."""
    samples = np.asarray(samples, dtype=np.float64)
    se = samples.std(ddof=1) / math.sqrt(samples.size)
    return abs(samples.mean() - value) <= z * se


def mean_var_agree(x, mean, var, z=Z):
    """Sample mean and variance of ``x`` match (mean, var).

    SE(mean) = sqrt(var/N), SE(var) = var sqrt(2/(N-1)) (Gaussian samples)."""
    x = np.asarray(x, dtype=np.float64)
    N = x.size
    ok_mean = abs(x.mean() - mean) <= z * math.sqrt(var / N)
    ok_var = abs(x.var(ddof=1) - var) <= z * var * math.sqrt(2.0 / (N - 1))
    return bool(ok_mean and ok_var)


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    """The arrays here are small (<= 40k elements) and the samplers take 1000 small steps; on a busy
    2-core machine torch's intra-op thread pool costs ~20 ms per parallel op, 1000x the op itself."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- forward process
def test_forward_step_iterated_matches_closed_form():
    """x_t = sqrt(1-beta_t) x_{t-1} + sqrt(beta_t) eps iterated t times has the law of q_sample's
    closed form N(sqrt(abar_t) x_0, 1 - abar_t); the notes' variants of the step do not."""
    T = 1000
    n = Notes(seed001_linear_betas(T))
    diffusion = dl.GaussianDiffusion("linear", T)
    checkpoints = [0, 9, 99, 999]

    # (1) q_sample is exactly sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with abar computed here
    x0 = torch.linspace(-1, 1, 7, dtype=F64).reshape(7, 1)
    eps = torch.randn(7, 1, generator=gen(0), dtype=F64)
    for i in checkpoints:
        want = math.sqrt(n.abar[i]) * x0 + math.sqrt(1 - n.abar[i]) * eps
        torch.testing.assert_close(diffusion.q_sample(x0, i, eps), want, rtol=1e-12, atol=1e-14)

    # (2) exact moment recursion of the one-step chain: m_t = sqrt(alpha_t) m_{t-1},
    #     v_t = alpha_t v_{t-1} + beta_t  =>  v_t = 1 - prod_{s=1}^t alpha_s = 1 - abar_t
    m, v = 1.0, 0.0  # m_t: the coefficient of x_0
    for i in range(T):
        m, v = math.sqrt(n.alpha[i]) * m, n.alpha[i] * v + n.beta[i]
    abar_T = float(diffusion.schedule.alpha_bar[-1])
    assert m**2 == pytest.approx(abar_T, rel=1e-12) and v == pytest.approx(1 - abar_T, rel=1e-12)
    # seed 002 starts the product at alpha_0: one factor too many (alpha_0 read as alpha_1) no longer
    # matches the chain's coefficient of x_0; seed 003's alpha_0..alpha_{t-(T-1)} is alpha_0 alpha_1 at t = T
    assert m**2 != pytest.approx(n.alpha[0] * abar_T, rel=1e-6)
    assert m**2 != pytest.approx(n.alpha[0] * n.alpha[0], rel=1e-6)

    # (3) Monte Carlo: iterate the step for N samples from x_0 = c; the notes' variants share the noise
    N, c = 20000, 0.8
    variants = {
        "correct": lambda x, i, e: math.sqrt(n.alpha[i]) * x + math.sqrt(n.beta[i]) * e,
        "seed001 (beta_t eps)": lambda x, i, e: math.sqrt(n.alpha[i]) * x + n.beta[i] * e,
        "seed003 (drops x_{t-1})": lambda x, i, e: math.sqrt(n.beta[i]) + math.sqrt(n.beta[i]) * e,
        "seed003 (mean sqrt(1-alpha_t))": lambda x, i, e: math.sqrt(n.beta[i]) * (x + e),
        "seed002 (kernel with abar_t)": lambda x, i, e: (
            math.sqrt(n.abar[i]) * x + math.sqrt(1 - n.abar[i]) * e
        ),
    }
    g = gen(1)
    xs = {k: torch.full((N,), c, dtype=F64) for k in variants}
    passes = {k: True for k in variants}
    for i in range(T):
        e = torch.randn(N, generator=g, dtype=F64)
        for k, step in variants.items():
            xs[k] = step(xs[k], i, e)
        if i in checkpoints:
            # the law difflab's closed form gives: mean q_sample(c, t, 0), std q_sample(c,t,1) - mean
            one = torch.full((1, 1), c, dtype=F64)
            m = float(diffusion.q_sample(one, i, torch.zeros_like(one)))
            sd = float(diffusion.q_sample(one, i, torch.ones_like(one))) - m
            for k in variants:
                passes[k] &= mean_var_agree(xs[k].numpy(), m, sd**2)
    assert passes.pop("correct")
    failed_to_fail = [k for k, ok in passes.items() if ok]
    assert not failed_to_fail, f"typo'd forward steps that were not caught: {failed_to_fail}"


def test_merging_two_gaussian_noises():
    """sqrt(alpha_t (1 - alpha_{t-1})) eps_1 + sqrt(1 - alpha_t) eps_2 ~ N(0, 1 - alpha_t alpha_{t-1}):
    the step from the two-step chain to q(x_2|x_0) (seeds 000, 001, 002)."""
    diffusion = dl.GaussianDiffusion(schedule=torch.tensor([0.3, 0.5], dtype=F64))
    a1, a2 = 0.7, 0.5
    # exact algebra: alpha_t (1 - alpha_{t-1}) + 1 - alpha_t = 1 - alpha_t alpha_{t-1} = 1 - abar_2
    assert a2 * (1 - a1) + (1 - a2) == pytest.approx(1 - float(diffusion.schedule.alpha_bar[1]), rel=1e-14)

    N = 200000
    g = gen(2)
    e1, e2 = (torch.randn(N, generator=g, dtype=F64).numpy() for _ in range(2))
    merged = math.sqrt(a2 * (1 - a1)) * e1 + math.sqrt(1 - a2) * e2
    var = 1 - a1 * a2
    assert mean_var_agree(merged, 0.0, var)
    # Gaussian: E[y^4] = 3 var^2; SE from the sample of y^4
    assert mc_agrees(merged**4, 3 * var**2)
    # the two-step chain x_2 = sqrt(a2)(sqrt(a1) x0 + sqrt(b1) e1) + sqrt(b2) e2 against q_sample
    x0 = 0.6
    x2 = math.sqrt(a2) * (math.sqrt(a1) * x0 + math.sqrt(0.3) * e1) + math.sqrt(0.5) * e2
    one = torch.full((1, 1), x0, dtype=F64)
    m = float(diffusion.q_sample(one, 1, torch.zeros_like(one)))
    sd = float(diffusion.q_sample(one, 1, torch.ones_like(one))) - m
    assert mean_var_agree(x2, m, sd**2)
    # adding standard deviations instead of variances fails the same check
    assert not mean_var_agree(merged, 0.0, (math.sqrt(a2 * (1 - a1)) + math.sqrt(1 - a2)) ** 2)


# --------------------------------------------------------------------------- posterior q(x_{t-1}|x_t,x_0)
def _grid_posterior(x_t, lik_mean_coef, lik_var, prior_mean, prior_var, n_grid=40001):
    """Mean and variance of p(g) ∝ N(x_t; coef g, lik_var) N(g; prior_mean, prior_var) on a grid."""
    half = 12 * math.sqrt(prior_var)
    g = np.linspace(prior_mean - half, prior_mean + half, n_grid)
    logw = log_normal(x_t, lik_mean_coef * g, lik_var) + log_normal(g, prior_mean, prior_var)
    w = np.exp(logw - logw.max())
    w /= w.sum()
    mean = (w * g).sum()
    return mean, (w * (g - mean) ** 2).sum()


def test_posterior_matches_bayes_on_grid():
    """q(x_{t-1}|x_t,x_0) = N(mu~_t, beta~_t) with beta~_t = (1-abar_{t-1})/(1-abar_t) beta_t and
    mu~_t = sqrt(abar_{t-1}) beta_t/(1-abar_t) x_0 + sqrt(alpha_t)(1-abar_{t-1})/(1-abar_t) x_t,
    checked against Bayes' rule q(x_t|x_{t-1}) q(x_{t-1}|x_0) normalised numerically on a grid."""
    T = 1000
    n = Notes(seed001_linear_betas(T))
    diffusion = dl.GaussianDiffusion("linear", T)
    x0v, zv = 0.8, 0.6
    for i in [1, 5, 50, 500, 999]:
        x_t = math.sqrt(n.abar[i]) * x0v + math.sqrt(1 - n.abar[i]) * zv
        a, ab, abp, b = n.alpha[i], n.abar[i], n.abar_prev[i], n.beta[i]
        g_mean, g_var = _grid_posterior(x_t, math.sqrt(a), b, math.sqrt(abp) * x0v, 1 - abp)
        mean, var, log_var = diffusion.q_posterior(
            torch.full((1, 1), x0v, dtype=F64), torch.full((1, 1), x_t, dtype=F64), i
        )
        assert float(mean) == pytest.approx(g_mean, rel=1e-9, abs=1e-12)
        assert float(var) == pytest.approx(g_var, rel=1e-7)
        assert float(log_var) == pytest.approx(math.log(g_var), abs=1e-7)

        def close(m_, v_=None, gm=g_mean, gv=g_var):
            v_ = gv if v_ is None else v_
            return m_ == pytest.approx(gm, rel=1e-9, abs=1e-12) and v_ == pytest.approx(gv, rel=1e-7)

        # the notes' wrong forms fail the same comparison with the grid.
        # seed 001: mu_q = sqrt(abar_t)(1-abar_{t-1})/(1-abar_t) x_t + ... (bar on alpha_t)
        bt = (1 - abp) / (1 - ab) * b
        assert not close(math.sqrt(ab) * (1 - abp) / (1 - ab) * x_t + math.sqrt(abp) * b / (1 - ab) * x0v)
        # seed 002: sqrt(abar_{t-1} beta_t) x_0 instead of sqrt(abar_{t-1}) beta_t x_0
        assert not close(math.sqrt(a) * (1 - abp) / (1 - ab) * x_t + math.sqrt(abp * b) / (1 - ab) * x0v)
        # seed 002: 1/(1 - abar_t) instead of 1/(1 - abar_{t-1}) in the x_{t-1}^2 coefficient
        if i < T - 1:  # at t = T, 1 - abar_t and 1 - abar_{t-1} are both 1 - O(e^-10): no difference
            assert not close(float(mean), 1 / (a / b + 1 / (1 - ab)))
        if i >= 2:  # seed 000: 2 sqrt(alpha_{t-1}) x_0/(1-abar_{t-1}) in the linear term (missing bar)
            wrong = (math.sqrt(a) / b * x_t + math.sqrt(n.alpha[i - 1]) / (1 - abp) * x0v) * bt
            assert not close(wrong)
        # seed 001: likelihood (x_t - sqrt(abar_t) x_{t-1})^2 / beta_t;
        # seed 002: kernel N(sqrt(abar_t) x_{t-1}, 1 - abar_t)
        assert not close(*_grid_posterior(x_t, math.sqrt(ab), b, math.sqrt(abp) * x0v, 1 - abp))
        assert not close(*_grid_posterior(x_t, math.sqrt(ab), 1 - ab, math.sqrt(abp) * x0v, 1 - abp))

    # t = 1 (index 0): beta~_1 = 0, the posterior is the point x_0
    x_1 = torch.full((1, 1), 0.3, dtype=F64)
    mean, var, _ = diffusion.q_posterior(torch.full((1, 1), x0v, dtype=F64), x_1, 0)
    assert float(mean) == pytest.approx(x0v, rel=1e-12) and float(var) == 0.0


def test_bayes_normaliser_and_sign_of_the_denominator():
    """Bayes: q(x_t|x_{t-1}) q(x_{t-1}|x_0) / q(x_t|x_0) integrates to 1 over x_{t-1} for every
    (x_t, x_0), so q(x_t|x_0) (difflab's closed form and gaussian_log_density) is the normaliser.
    Seed 002 adds the exponent of q(x_t|x_0) instead of subtracting it, seed 001 divides it by abar_t
    instead of 1 - abar_t: both break the normalisation (the posterior's shape is unaffected)."""
    n = Notes(SHORT_BETAS)
    diffusion = dl.GaussianDiffusion(schedule=torch.tensor(SHORT_BETAS))
    i, x0v = 3, 0.8
    a, ab, abp, b = n.alpha[i], n.abar[i], n.abar_prev[i], n.beta[i]
    g = np.linspace(-12, 12, 200001)
    dg = g[1] - g[0]
    for x_t in [-1.3, 0.2, 1.7]:
        joint = np.exp(log_normal(x_t, math.sqrt(a) * g, b) + log_normal(g, math.sqrt(abp) * x0v, 1 - abp))
        evidence = joint.sum() * dg
        one = torch.full((1, 1), x0v, dtype=F64)
        alpha, sigma = diffusion.alpha_sigma(i, one)
        log_q = gaussian.gaussian_log_density(torch.tensor(x_t, dtype=F64), alpha * one, torch.log(sigma**2))
        assert evidence == pytest.approx(math.exp(float(log_q)), rel=1e-9)
        C = (x_t - math.sqrt(ab) * x0v) ** 2
        # seed 002: exp(-(... + C/(1-abar_t))/2) in place of exp(-(... - C/(1-abar_t))/2)
        plus = (joint / math.exp(log_normal(x_t, math.sqrt(ab) * x0v, 1 - ab))) * math.exp(-C / (1 - ab))
        assert abs(plus.sum() * dg - 1) > 1e-3
        # seed 001: variance abar_t instead of 1 - abar_t in the denominator term
        ratio = joint / math.exp(log_normal(x_t, math.sqrt(ab) * x0v, ab))
        assert abs(ratio.sum() * dg - 1) > 1e-3


def test_gaussian_oracle_is_bayes_posterior_mean():
    """E[x_0|x_t] for N(mu, s^2) data (difflab.oracles.GaussianOracle) equals the mean of
    q(x_0) q(x_t|x_0) normalised on a grid; and the joint is q(x_0) q(x_t|x_0), not seed 001's
    q(x_0) q(x_0|x_t)."""
    diffusion = dl.GaussianDiffusion(schedule=torch.tensor(SHORT_BETAS), prediction="x0")
    oracle = GaussianOracle(diffusion, MU, S)
    n = Notes(SHORT_BETAS)
    for i in range(n.T):
        al, sg = math.sqrt(n.abar[i]), math.sqrt(1 - n.abar[i])
        x_t = 0.9
        g_mean, g_var = _grid_posterior(x_t, al, sg**2, MU, S**2)
        got = float(oracle(torch.full((1, 1), x_t, dtype=F64), torch.tensor([float(i)])))
        assert got == pytest.approx(g_mean, rel=1e-9)
        # bivariate normal density of (x_0, x_t) at a point, from its covariance matrix
        x0v = 0.1
        cov = np.array([[S**2, al * S**2], [al * S**2, al**2 * S**2 + sg**2]])
        d = np.array([x0v - MU, x_t - al * MU])
        log_joint = -np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(cov)[1] - 0.5 * d @ np.linalg.solve(cov, d)
        right = log_normal(x0v, MU, S**2) + log_normal(x_t, al * x0v, sg**2)
        wrong = log_normal(x0v, MU, S**2) + log_normal(x0v, g_mean, g_var)  # seed 001: q(x_0) q(x_0|x_t)
        assert right == pytest.approx(log_joint, rel=1e-12)
        assert abs(wrong - log_joint) > 1e-3


def test_posterior_mean_in_eps_form():
    """mu~_t(x_t, x_0(x_t, eps)) = (x_t - beta_t/sqrt(1-abar_t) eps)/sqrt(alpha_t), and p_theta's mean
    for an eps-, x0- or v-model that predicts exactly equals it (seeds 000, 001, 002, 003)."""
    T = 1000
    n = Notes(seed001_linear_betas(T))
    g = gen(3)
    x0 = torch.randn(64, 2, generator=g, dtype=F64)
    eps = torch.randn(64, 2, generator=g, dtype=F64)
    diffusion = dl.GaussianDiffusion("linear", T)
    for i in [1, 10, 500, 999]:
        x_t = math.sqrt(n.abar[i]) * x0 + math.sqrt(1 - n.abar[i]) * eps
        eps_form = (x_t - n.beta[i] / math.sqrt(1 - n.abar[i]) * eps) / math.sqrt(n.alpha[i])
        mean, _, _ = diffusion.q_posterior(x0, x_t, i)
        torch.testing.assert_close(mean, eps_form, rtol=1e-10, atol=1e-12)
        al, sg = math.sqrt(n.abar[i]), math.sqrt(1 - n.abar[i])
        truth = {"eps": eps, "x0": x0, "v": al * eps - sg * x0}
        for prediction, target in truth.items():
            for variance, var in [("fixed_small", n.beta_tilde[i]), ("fixed_large", n.beta[i])]:
                d = dl.GaussianDiffusion("linear", T, prediction=prediction, variance=variance)
                p_mean, p_log_var, x0_hat = d.p_mean_variance(lambda x, t, y=target: y, x_t, i)
                torch.testing.assert_close(p_mean, eps_form, rtol=1e-9, atol=1e-11)
                torch.testing.assert_close(x0_hat, x0, rtol=1e-9, atol=1e-10)
                assert float(p_log_var[0, 0]) == pytest.approx(math.log(var), rel=1e-12)
        # a wrong coefficient (1 - alpha_t)/(1 - abar_t) on eps would not match (while 1 - abar_t < 1)
        wrong = (x_t - n.beta[i] / (1 - n.abar[i]) * eps) / math.sqrt(n.alpha[i])
        if i <= 10:
            assert not torch.allclose(mean, wrong, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------- KL and the terms of the bound
def test_gaussian_kl_monte_carlo():
    """KL(N(m1,v1) || N(m2,v2)) = 1/2 (log v2/v1 + v1/v2 + (m1-m2)^2/v2 - 1) (seed 001's formula with
    d = 1) equals E_{x~N(m1,v1)}[log N(x;m1,v1) - log N(x;m2,v2)] by Monte Carlo. Seed 001's L_t line
    swaps the roles (log|Sigma_q|/|Sigma_theta| + tr(Sigma_q^-1 Sigma_theta), i.e. KL(p||q)) and fails
    unless the variances are equal."""
    m1, v1, m2, v2 = 0.3, 0.5, -0.2, 1.7

    def t(v):
        return torch.tensor(v, dtype=F64)

    kl = float(gaussian.normal_kl(t(m1), t(math.log(v1)), t(m2), t(math.log(v2))))
    x = m1 + math.sqrt(v1) * torch.randn(200000, generator=gen(4), dtype=F64).numpy()
    log_ratio = log_normal(x, m1, v1) - log_normal(x, m2, v2)
    assert mc_agrees(log_ratio, kl)
    swapped = 0.5 * (math.log(v1 / v2) - 1 + v2 / v1 + (m2 - m1) ** 2 / v1)
    assert not mc_agrees(log_ratio, swapped)
    # the d-dimensional form with determinants and traces = sum of the elementwise KLs (diagonal case)
    M1, V1 = np.array([0.1, -0.4, 0.9]), np.array([0.3, 1.2, 0.8])
    M2, V2 = np.array([0.0, 0.5, 1.0]), np.array([0.6, 0.9, 2.0])
    elementwise = gaussian.normal_kl(
        torch.tensor(M1), torch.tensor(np.log(V1)), torch.tensor(M2), torch.tensor(np.log(V2))
    )
    assert float(elementwise.sum()) == pytest.approx(mvn_kl(M1, np.diag(V1), M2, np.diag(V2)), rel=1e-12)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_vlb_terms_are_weighted_eps_errors(variance):
    """L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p_theta(x_{t-1}|x_t)) for an eps-model is
    beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)) ||eps - eps_theta||^2 (plus the variance mismatch
    1/2 (log sigma_t^2/beta~_t + beta~_t/sigma_t^2 - 1) when sigma_t^2 != beta~_t).

    With point-mass data x_0 = c the model eps_theta = (x_t - sqrt(abar_t) c)/sqrt(1-abar_t) + delta_t
    has eps - eps_theta = -delta_t whatever the noise, so every column of vlb_terms is exact: prior
    L_T, each L_{t-1}, and the decoder L_0 (Gaussian and discretized). Seed 001's weight without the
    square and seed 000's 1/(2 ||Sigma_theta||_2^2) = 1/(2 sigma_t^4) are put through the same check."""
    n = Notes(SHORT_BETAS)
    diffusion = dl.GaussianDiffusion(schedule=torch.tensor(SHORT_BETAS), variance=variance)
    c = 2 * 178 / 255 - 1  # a level of the 256-level grid, for the discretized decoder
    delta = np.array([0.3, -0.2, 0.5, 0.1, -0.4])
    sab, s1ab = torch.tensor(np.sqrt(n.abar)), torch.tensor(np.sqrt(1 - n.abar))

    def model(x, t):
        i = t.round().long()
        return (x - sab[i, None] * c) / s1ab[i, None] + torch.tensor(delta)[i, None]

    x0 = torch.full((3, 2), c, dtype=F64)
    sig2 = n.reverse_var(variance)
    for decoder in ["gaussian", "discretized"]:
        terms = diffusion.vlb_terms(model, x0, decoder=decoder, generator=gen(5))
        nats = terms.terms * LN2  # bits/dim -> nats/dim; every dimension carries the same value
        for i in range(1, n.T):
            w = n.beta[i] ** 2 / (2 * sig2[i] * n.alpha[i] * (1 - n.abar[i]))
            var_term = 0.5 * (math.log(sig2[i] / n.beta_tilde[i]) + n.beta_tilde[i] / sig2[i] - 1)
            want = w * delta[i] ** 2 + var_term
            torch.testing.assert_close(nats[:, i], torch.full((3,), want, dtype=F64), rtol=1e-9, atol=1e-12)
            if variance == "fixed_small":
                assert var_term == 0.0
                no_square = (1 - n.alpha[i]) / (math.sqrt(n.alpha[i]) * math.sqrt(1 - n.abar[i]))
                assert float(nats[0, i]) != pytest.approx(no_square / (2 * sig2[i]) * delta[i] ** 2, rel=1e-3)
                w_sigma4 = n.beta[i] ** 2 / (2 * sig2[i] ** 2 * n.alpha[i] * (1 - n.abar[i]))
                assert float(nats[0, i]) != pytest.approx(w_sigma4 * delta[i] ** 2, rel=1e-3)
        # decoder L_0 = -log p(x_0|x_1), mean mu_theta(x_1) = x0_hat = c - sqrt(1-abar_1) delta_1/sqrt(abar_1)
        mean0 = c - math.sqrt(1 - n.abar[0]) * delta[0] / math.sqrt(n.abar[0])
        if decoder == "gaussian":
            want0 = -log_normal(c, mean0, sig2[0])
        else:
            sd, h = math.sqrt(sig2[0]), 1 / 255
            want0 = -math.log(special.ndtr((c + h - mean0) / sd) - special.ndtr((c - h - mean0) / sd))
        assert float(nats[0, 0]) == pytest.approx(want0, rel=1e-9)
        # prior L_T = KL(N(sqrt(abar_T) c, 1 - abar_T) || N(0, 1))
        abT = n.abar[-1]
        want_T = 0.5 * (abT * c**2 + (1 - abT) - 1 - math.log(1 - abT))
        assert float(terms.prior[0]) * LN2 == pytest.approx(want_T, rel=1e-12)


def test_prior_term_entropy_form():
    """L_T = KL(q(x_T|x_0) || N(0,I)) = -E_q[log p(x_T)] - H_q(x_T|x_0): seed 004's K_1 = -H_p(x^T)
    (a cross-entropy) and the entropy H_q(x^T|x^0) that its K_32 leaves over."""
    diffusion = dl.GaussianDiffusion(schedule=torch.tensor(SHORT_BETAS))
    n = Notes(SHORT_BETAS)
    abT = n.abar[-1]
    x0 = torch.tensor([[-0.9], [0.0], [0.4], [1.0]], dtype=F64)
    prior = diffusion.prior_kl(x0).numpy()
    g = gen(6)
    for k, x0v in enumerate(x0[:, 0].tolist()):
        x_T = math.sqrt(abT) * x0v + math.sqrt(1 - abT) * torch.randn(100000, generator=g, dtype=F64).numpy()
        entropy = 0.5 * math.log(2 * math.pi * math.e * (1 - abT))
        # Monte Carlo of -E log p(x_T) - H
        assert mc_agrees(-log_normal(x_T, 0.0, 1.0) - entropy, prior[k])
        closed = 0.5 * math.log(2 * math.pi) + 0.5 * (abT * x0v**2 + 1 - abT) - entropy
        assert prior[k] == pytest.approx(closed, rel=1e-12)


def _short_setup():
    n = Notes(SHORT_BETAS)
    a, b = imperfect_gaussian_eps(n)
    A, C = mu_theta_coeffs(n, a, b)
    return n, LinearEps(a, b), A, C


def test_full_bound_by_forward_trajectories():
    """E_q[-log p(x_T) - sum_t log p_theta(x_{t-1}|x_t) + sum_t log q(x_t|x_{t-1})], estimated from
    whole forward trajectories, equals L_T + sum L_{t-1} + L_0 from vlb_terms (decoder="gaussian").
    The bound exceeds the cross-entropy E_data[-log p_theta(x_0)], which exceeds the data entropy.
    Seed 001's signs (E[log p/q] = L_T + sum L_{t-1} + log p(x_0|x_1)) fail; seed 004's K_31 with
    the product q(x^0) q(x^t) in place of the joint q(x^0, x^t) fails against the columns."""
    n, model, A, C = _short_setup()
    diffusion = dl.GaussianDiffusion(schedule=torch.tensor(SHORT_BETAS))
    sig2 = n.reverse_var()
    N = 40000
    g = gen(7)
    x = MU + S * torch.randn(N, generator=g, dtype=F64).numpy()
    x0 = x.copy()
    log_p_over_q = np.zeros(N)
    for t in range(1, n.T + 1):
        x_new = (
            math.sqrt(n.alpha[t - 1]) * x
            + math.sqrt(n.beta[t - 1]) * torch.randn(N, generator=g, dtype=F64).numpy()
        )
        log_p_over_q -= log_normal(x_new, math.sqrt(n.alpha[t - 1]) * x, n.beta[t - 1])
        log_p_over_q += log_normal(x, A[t - 1] * x_new + C[t - 1], sig2[t - 1])
        x = x_new
    log_p_over_q += log_normal(x, 0.0, 1.0)

    terms = diffusion.vlb_terms(model, torch.tensor(x0).reshape(N, 1), decoder="gaussian", generator=gen(8))
    total = (terms.total * LN2).numpy()
    se = math.sqrt(log_p_over_q.var() / N + total.var() / N)
    assert abs(-log_p_over_q.mean() - total.mean()) <= Z * se
    # seed 001 as written: E[log p/q] = L_T + sum L_{t-1} + L_0 with L_0 = log p(x_0|x_1)
    seed001 = ((terms.prior + terms.diffusion - terms.decoder) * LN2).numpy()
    assert abs(log_p_over_q.mean() - seed001.mean()) > Z * se

    # -log p_theta(x_0) of this linear-Gaussian model, exactly; cross-entropy >= entropy of the data
    m_p, S_p = reverse_chain_gaussian(A, C, sig2)
    cross_entropy = 0.5 * math.log(2 * math.pi * S_p[0, 0]) + (S**2 + (MU - m_p[0]) ** 2) / (2 * S_p[0, 0])
    entropy = 0.5 * math.log(2 * math.pi * math.e * S**2)
    assert cross_entropy > entropy
    assert total.mean() - Z * total.std() / math.sqrt(N) > cross_entropy

    # each column i >= 1 against E_{q(x_0, x_t)} of the closed-form KL; seed 004's product measure fails
    c0 = np.sqrt(n.abar_prev) * n.beta / (1 - n.abar)
    ct = np.sqrt(n.alpha) * (1 - n.abar_prev) / (1 - n.abar)
    for i in range(1, n.T):
        u, w = c0[i], ct[i] - A[i]  # mu~ - mu_theta = u x_0 + w x_t - C
        r = u + w * math.sqrt(n.abar[i])
        mean_sq = (r * MU - C[i]) ** 2
        joint = (mean_sq + r * r * S**2 + w * w * (1 - n.abar[i])) / (2 * sig2[i])
        product = (mean_sq + u * u * S**2 + w * w * (n.abar[i] * S**2 + 1 - n.abar[i])) / (2 * sig2[i])
        col = (terms.terms[:, i] * LN2).numpy()
        assert mc_agrees(col, joint)
        assert not mc_agrees(col, product)


@pytest.mark.parametrize("T", [1, 5])
def test_bound_equals_nll_plus_posterior_gap(T):
    """For a fixed x_0: E_q[bound] = -log p_theta(x_0) + KL(q(x_{1:T}|x_0) || p_theta(x_{1:T}|x_0))
    (seed 003's log p(x) = ELBO + KL(q(z|x) || p(z|x)); seed 000's first line), all in closed form for
    a linear-Gaussian model, against vlb_terms and against forward trajectories. Seed 004's Lemma 1:
    p_theta(x_0) = E_q[p(x_T) prod p_theta(x_{t-1}|x_t) / q(x_t|x_{t-1})]. For T = 1 seed 003's
    p(x) = int p(x|z) dz fails while int p(x, z) dz holds."""
    betas = SHORT_BETAS if T == 5 else np.array([0.4])
    n = Notes(betas)
    a, b = imperfect_gaussian_eps(n)
    A, C = mu_theta_coeffs(n, a, b)
    sig2 = n.reverse_var()
    diffusion = dl.GaussianDiffusion(schedule=torch.tensor(betas))
    x0v = 0.9

    m_p, S_p = reverse_chain_gaussian(A, C, sig2)
    nll = -log_normal(x0v, m_p[0], S_p[0, 0])
    cond_m = m_p[1:] + S_p[1:, 0] / S_p[0, 0] * (x0v - m_p[0])
    cond_S = S_p[1:, 1:] - np.outer(S_p[1:, 0], S_p[0, 1:]) / S_p[0, 0]
    q_m, q_S = forward_chain_gaussian(n, x0v)
    gap = mvn_kl(q_m, q_S, cond_m, cond_S)
    assert gap > 0.0
    expected = nll + gap

    B = 20000
    terms = diffusion.vlb_terms(
        LinearEps(a, b), torch.full((B, 1), x0v, dtype=F64), decoder="gaussian", generator=gen(9)
    )
    assert mc_agrees((terms.total * LN2).numpy(), expected)

    # forward trajectories from x_0: log w = log p(x_T) + sum log p_theta - sum log q
    g = gen(10)
    x = np.full(B, x0v)
    log_w = np.zeros(B)
    for t in range(1, T + 1):
        x_new = (
            math.sqrt(n.alpha[t - 1]) * x
            + math.sqrt(n.beta[t - 1]) * torch.randn(B, generator=g, dtype=F64).numpy()
        )
        log_w += log_normal(x, A[t - 1] * x_new + C[t - 1], sig2[t - 1])
        log_w -= log_normal(x_new, math.sqrt(n.alpha[t - 1]) * x, n.beta[t - 1])
        x = x_new
    log_w += log_normal(x, 0.0, 1.0)
    assert mc_agrees(-log_w, expected)
    # Lemma 1: E_q[w] = p_theta(x_0); Jensen (log is concave): E log w <= log E w
    assert mc_agrees(np.exp(log_w), math.exp(-nll))
    assert log_w.mean() < math.log(np.exp(log_w).mean())

    if T == 1:  # z = x_1: p(x_0) = int p(x_1) p(x_0|x_1) dx_1, not int p(x_0|x_1) dx_1 (seed 003 eq. 3)
        z = np.linspace(-12, 12, 200001)
        dz = z[1] - z[0]
        lik = np.exp(log_normal(x0v, A[0] * z + C[0], sig2[0]))
        assert (np.exp(log_normal(z, 0, 1)) * lik).sum() * dz == pytest.approx(math.exp(-nll), rel=1e-9)
        assert abs(lik.sum() * dz - math.exp(-nll)) > 1e-2
        # p(x, z) / p(z|x) = p(x) holds with the true posterior, not with the encoder q(z|x)
        z0 = 0.25
        log_joint = log_normal(z0, 0, 1) + log_normal(x0v, A[0] * z0 + C[0], sig2[0])
        assert log_joint - log_normal(z0, cond_m[0], cond_S[0, 0]) == pytest.approx(-nll, rel=1e-10)
        assert abs(log_joint - log_normal(z0, q_m[0], q_S[0, 0]) + nll) > 1e-3


# --------------------------------------------------------------------------- the schedule
def test_linear_schedule_reaches_e_minus_10():
    """DDPM's linear schedule beta_1 = 1e-4 .. beta_T = 0.02, T = 1000 gives abar_T ~ e^-10 (seed 001,
    which bounds log abar_T < -(beta_1 + beta_T) T / 2); seed 002's end point 0.002 gives ~ e^-1."""
    betas = linear_betas(1000)
    np.testing.assert_allclose(betas.numpy(), seed001_linear_betas(1000), rtol=1e-12)
    log_abT = math.log(float(DiscreteSchedule(betas).alpha_bar[-1]))
    assert log_abT == pytest.approx(float(np.log1p(-seed001_linear_betas(1000)).sum()), rel=1e-12)
    assert abs(log_abT + 10) < 0.5
    assert log_abT < -(1e-4 + 0.02) / 2 * 1000
    # with beta_T = 0.002 the chain ends far from pure noise
    log_abT_002 = math.log(float(DiscreteSchedule(linear_betas(1000, beta_T=0.002)).alpha_bar[-1]))
    assert abs(log_abT_002 + 1) < 0.5 and abs(log_abT_002 + 10) > 0.5
    # so the prior term L_T at x_0 = 1 is negligible for 0.02 and large for 0.002
    x0 = torch.ones(1, 1, dtype=F64)
    good = float(dl.GaussianDiffusion("linear", 1000).prior_kl(x0))
    bad = float(dl.GaussianDiffusion(linear_betas(1000, beta_T=0.002)).prior_kl(x0))
    assert good < 1e-4 < 0.1 < bad
    # difflab scales both end points by 1000/T (improved DDPM), keeping abar_T near e^-10 (not in the
    # notes; larger steps make log abar_T = sum log(1 - beta_t) fall below -sum beta_t = -10.05)
    for T in [100, 250]:
        log_ab = math.log(float(dl.GaussianDiffusion("linear", T).schedule.alpha_bar[-1]))
        assert -11 < log_ab < -10.05


# --------------------------------------------------------------------------- Algorithm 1
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_training_loss_is_algorithm1(prediction):
    """diffusion.loss(model, x_0, t, eps) = mean ||target - model(x_t, t)||^2 with
    x_t = sqrt(abar_t) x_0 + sqrt(1-abar_t) eps and target eps (Algorithm 1 / L_simple), x_0,
    or v = sqrt(abar_t) eps - sqrt(1-abar_t) x_0."""
    T = 1000
    n = Notes(seed001_linear_betas(T))
    diffusion = dl.GaussianDiffusion("linear", T, prediction=prediction)
    g = gen(11)
    x0 = torch.randn(16, 3, generator=g, dtype=F64)
    eps = torch.randn(16, 3, generator=g, dtype=F64)
    t = torch.randint(0, T, (16,), generator=g)

    def model(x, tt):
        return torch.tanh(x) * (1 + tt.to(x.dtype)[:, None] / T) - 0.1

    al = torch.tensor(np.sqrt(n.abar))[t][:, None]
    sg = torch.tensor(np.sqrt(1 - n.abar))[t][:, None]
    x_t = al * x0 + sg * eps
    target = {"eps": eps, "x0": x0, "v": al * eps - sg * x0}[prediction]
    want = ((target - model(x_t, t.to(torch.float32))) ** 2).mean(1)
    torch.testing.assert_close(diffusion.loss(model, x0, t, eps), want, rtol=1e-12, atol=1e-14)
    # a wrong noise scale (1 - abar_t instead of its square root) would give another loss
    wrong = ((target - model(al * x0 + sg**2 * eps, t.to(torch.float32))) ** 2).mean(1)
    assert not torch.allclose(diffusion.loss(model, x0, t, eps), wrong, rtol=1e-6)

    if prediction == "eps":  # t ~ Uniform({1..T}), i.e. indices 0..T-1
        seen = []

        def spy(x, tt):
            seen.append(tt.clone())
            return torch.zeros_like(x)

        diffusion.loss(spy, torch.zeros(40000, 1, dtype=F64), generator=gen(12))
        ts = torch.cat(seen).to(F64).numpy()
        assert ts.min() == 0 and ts.max() == T - 1 and np.all(ts == np.round(ts))
        # mean (T-1)/2, SE sqrt((T^2-1)/12 / N)
        assert abs(ts.mean() - (T - 1) / 2) <= Z * math.sqrt((T**2 - 1) / 12 / ts.size)


# --------------------------------------------------------------------------- Algorithm 2 and DDIM
def _exact_eps(n: Notes, i, x):
    """E[eps | x_t] for N(MU, S^2) data, written out here (independent of difflab.oracles)."""
    al, sg = math.sqrt(n.abar[i]), math.sqrt(1 - n.abar[i])
    return sg * (x - al * MU) / (al**2 * S**2 + sg**2)


def _algorithm2(n: Notes, x_T, g, noise_scale):
    """Algorithm 2 by hand: x_{t-1} = (x_t - beta_t/sqrt(1-abar_t) eps_theta)/sqrt(alpha_t) + scale_t z."""
    x = x_T
    for i in range(n.T - 1, -1, -1):
        eps = _exact_eps(n, i, x)
        x = (x - n.beta[i] / math.sqrt(1 - n.abar[i]) * eps) / math.sqrt(n.alpha[i])
        if i > 0:
            x = x + noise_scale[i] * torch.randn(x.shape, generator=g, dtype=F64)
    return x


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ancestral_sampler_is_algorithm2(variance):
    """diffusion.sample(sampler="ancestral") with the exact denoiser of N(mu, s^2) data equals a
    hand-written Algorithm 2 draw for draw (same generator), sigma_t^2 = beta~_t or beta_t."""
    T = 1000
    n = Notes(seed001_linear_betas(T))
    diffusion = dl.GaussianDiffusion("linear", T, variance=variance)
    sd = np.sqrt(n.beta_tilde if variance == "fixed_small" else n.beta)
    shape = (2000, 1)
    got = diffusion.sample(GaussianOracle(diffusion, MU, S), shape, generator=gen(13), dtype=F64)
    g = gen(13)
    want = _algorithm2(n, torch.randn(shape, generator=g, dtype=F64), g, sd)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_ancestral_sampler_std_and_seed001_variance_typo():
    """Output law of Algorithm 2 on N(mu, s^2) data: its variance is computed exactly here by the
    linear recursion v_{t-1} = A_t^2 v_t + sigma_t^2 (within 2% of s^2 for T = 1000), difflab's
    samples match it; seed 001's sigma_t^2 z (variance instead of standard deviation) does not."""
    T = 1000
    n = Notes(seed001_linear_betas(T))
    diffusion = dl.GaussianDiffusion("linear", T)
    sd = np.sqrt(n.beta_tilde)

    def output_law(scale):
        m, v = 0.0, 1.0
        for i in range(T - 1, -1, -1):
            al, sg = math.sqrt(n.abar[i]), math.sqrt(1 - n.abar[i])
            vv = al**2 * S**2 + sg**2
            k = n.beta[i] / sg
            A_i = (1 - k * sg / vv) / math.sqrt(n.alpha[i])
            C_i = k * sg * al * MU / vv / math.sqrt(n.alpha[i])
            m, v = A_i * m + C_i, A_i**2 * v + (scale[i] ** 2 if i > 0 else 0.0)
        return m, v

    m_ok, v_ok = output_law(sd)
    assert abs(v_ok / S**2 - 1) < 0.02 and abs(m_ok - MU) < 1e-3
    N = 20000  # SE of the variance ~1%; the typo'd sampler's variance is off by a factor ~280
    x = diffusion.sample(GaussianOracle(diffusion, MU, S), (N, 1), generator=gen(14), dtype=F64)
    assert mean_var_agree(x.numpy().ravel(), m_ok, v_ok)
    g = gen(15)
    typo = _algorithm2(n, torch.randn(N, 1, generator=g, dtype=F64), g, sd**2).numpy().ravel()
    m_bad, v_bad = output_law(sd**2)
    assert mean_var_agree(typo, m_bad, v_bad)  # the recursion itself is right...
    assert not mean_var_agree(typo, MU, S**2)  # ...and the typo'd sampler misses the data (std ~0.03)


def test_ddim_sampler():
    """DDIM (seed 003's reference, Song et al. eq. 12) on a 20-step subsequence:
    x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - c^2) eps_hat + c z with c = eta sqrt(beta~_{t->s});
    eta = 0 equals a hand-written loop, eta = 1 equals ancestral sampling on the same subsequence."""
    T, steps = 1000, 20
    n = Notes(seed001_linear_betas(T))
    diffusion = dl.GaussianDiffusion("linear", T)
    oracle = GaussianOracle(diffusion, MU, S)
    ts = np.round(np.linspace(T - 1, 0, steps)).astype(int)
    shape = (500, 1)
    got = diffusion.sample(oracle, shape, sampler="ddim", steps=steps, generator=gen(16), dtype=F64)
    x = torch.randn(shape, generator=gen(16), dtype=F64)
    for k, i in enumerate(ts):
        eps = _exact_eps(n, i, x)
        x0_hat = (x - math.sqrt(1 - n.abar[i]) * eps) / math.sqrt(n.abar[i])
        ab_s = n.abar[ts[k + 1]] if k + 1 < steps else 1.0
        x = math.sqrt(ab_s) * x0_hat + math.sqrt(1 - ab_s) * eps
    torch.testing.assert_close(got, x, rtol=1e-9, atol=1e-10)
    kw = dict(steps=steps, dtype=F64)
    ddim1 = diffusion.sample(oracle, shape, sampler="ddim", eta=1.0, generator=gen(17), **kw)
    anc = diffusion.sample(oracle, shape, sampler="ancestral", generator=gen(17), **kw)
    torch.testing.assert_close(ddim1, anc, rtol=1e-9, atol=1e-10)
    assert not torch.allclose(got, anc, atol=1e-3)


# --------------------------------------------------------------------------- log-SNR, v, decoder
def test_log_snr_and_v_parameterisation():
    """lambda_t = log(abar_t / (1 - abar_t)), alpha_t = sqrt(sigmoid(lambda)),
    sigma_t = sqrt(sigmoid(-lambda)), fractional t interpolating lambda linearly;
    v = alpha eps - sigma x_0 inverts to x_0 = alpha x_t - sigma v and eps = sigma x_t + alpha v
    (not derived in the notes; seed 003 cites the v-prediction paper)."""
    T = 1000
    n = Notes(seed001_linear_betas(T))
    diffusion = dl.GaussianDiffusion("linear", T)
    lam = np.log(n.abar) - np.log1p(-n.abar)
    idx = np.array([0, 1, 10, 500, 998, 999])
    np.testing.assert_allclose(diffusion.log_snr(torch.tensor(idx, dtype=F64)).numpy(), lam[idx], rtol=1e-12)
    frac = torch.tensor([0.25, 10.5, 998.75], dtype=F64)
    lo = np.floor(frac.numpy()).astype(int)
    w = frac.numpy() - lo
    want = (1 - w) * lam[lo] + w * lam[lo + 1]
    np.testing.assert_allclose(diffusion.log_snr(frac).numpy(), want, rtol=1e-12)
    x = torch.zeros(len(idx), 1, dtype=F64)
    al, sg = diffusion.alpha_sigma(torch.tensor(idx, dtype=F64), x)
    np.testing.assert_allclose(al.numpy().ravel(), np.sqrt(n.abar[idx]), rtol=1e-12)
    np.testing.assert_allclose(sg.numpy().ravel(), np.sqrt(1 - n.abar[idx]), rtol=1e-12)

    g = gen(18)
    x0 = torch.randn(6, 4, generator=g, dtype=F64)
    eps = torch.randn(6, 4, generator=g, dtype=F64)
    x_t = al * x0 + sg * eps
    v = al * eps - sg * x0
    for pred, out in [("eps", eps), ("x0", x0), ("v", v)]:
        x0_hat, eps_hat = gaussian.to_x0_eps(out, pred, x_t, al, sg)
        torch.testing.assert_close(x0_hat, x0, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(eps_hat, eps, rtol=1e-9, atol=1e-9)
    # the opposite sign convention v = sigma x_0 - alpha eps would not invert
    x0_bad, _ = gaussian.to_x0_eps(-v, "v", x_t, al, sg)
    assert not torch.allclose(x0_bad, x0, atol=1e-3)


def test_discretized_decoder_likelihood():
    """L_0 = -log p(x_0|x_1) for data on 256 levels: each level owns [x - 1/255, x + 1/255], the edge
    levels extend to -inf / +inf (seed 001's code block), checked against scipy's normal CDF."""
    levels = torch.linspace(-1, 1, 256, dtype=F64)
    for mean, sd in [(0.1, 0.05), (-0.97, 0.01), (0.9, 0.3), (0.0, 1e-3)]:
        log_p = gaussian.discretized_gaussian_log_likelihood(
            levels, torch.full_like(levels, mean), torch.full_like(levels, 2 * math.log(sd))
        )
        assert float(torch.logsumexp(log_p, 0)) == pytest.approx(0.0, abs=1e-12)
        x = levels.numpy()
        up = np.where(x > 1 - 1 / 255 / 2, np.inf, (x + 1 / 255 - mean) / sd)
        lo = np.where(x < -1 + 1 / 255 / 2, -np.inf, (x - 1 / 255 - mean) / sd)
        # Phi(up) - Phi(lo) from scipy's erfc: 0.5 (erfc(-up/r2) - erfc(-lo/r2)), or for intervals right
        # of 0 the mirrored 0.5 (erfc(lo/r2) - erfc(up/r2)), which keeps relative accuracy in the tails
        r2 = math.sqrt(2.0)
        with np.errstate(divide="ignore"):
            right = (up + lo) > 0
            prob = np.where(
                right,
                0.5 * (special.erfc(lo / r2) - special.erfc(up / r2)),
                0.5 * (special.erfc(-up / r2) - special.erfc(-lo / r2)),
            )
            want = np.log(prob)
        finite = prob > 1e-300
        assert finite.sum() >= 3
        np.testing.assert_allclose(log_p.numpy()[finite], want[finite], rtol=1e-9, atol=1e-12)
