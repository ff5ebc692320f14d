"""The probability-flow ODE likelihood against closed forms (no training needed).

For Gaussian data ``N(mu, diag s^2)`` the exact denoiser is affine, every noisy marginal is
``N(alpha mu, v)`` with ``v = alpha^2 s^2 + sigma^2``, and the flow of the ODE is the affine map that
keeps ``(x - alpha mu)/sqrt(v)`` constant. The model's density at the data end is therefore known
exactly: the prior ``N(0, I)`` pushed through that map (:func:`model_nll`). It differs from the true
marginal at index 0, ``N(alpha_0 mu, v_0)``, only by the prior's mismatch at the last level
(``N(0, I)`` instead of ``N(alpha_T mu, v_T)``), and that marginal differs from the data density
``N(mu, s^2)`` by the tiny noise at index 0 (``1 - alpha_bar_0 = 1e-4`` for the linear schedule), which
matters only for data narrower than about ``1e-2``. For a Gaussian mixture every marginal is again a
mixture, computed here independently with ``logsumexp``.
"""

import math
import warnings

import pytest
import torch

import difflab as dl
from difflab.gaussian import discretized_gaussian_log_likelihood
from difflab.ode_likelihood import ODEView, ode_bits_per_dim, ode_nll
from difflab.oracles import GaussianMixtureOracle, GaussianOracle

MU = torch.tensor([0.5, -0.3], dtype=torch.float64)
S = torch.tensor([0.4, 1.3], dtype=torch.float64)
MEANS = torch.tensor([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]], dtype=torch.float64)
STDS = torch.tensor([0.3, 0.5, 0.4], dtype=torch.float64)
WEIGHTS = torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64)


@pytest.fixture(scope="module")
def diffusion():
    return dl.GaussianDiffusion("linear", 1000)


def ends(diffusion):
    """``(alpha, sigma)`` at the data end (index 0) and the prior end (index T-1), float64."""
    lam = diffusion.schedule.lambdas[[0, -1]]
    return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()


def normal_nll(x, mean, var):
    """``-log N(x; mean, diag var)`` summed over the last dimension."""
    return (0.5 * torch.log(2 * math.pi * var) + 0.5 * (x - mean) ** 2 / var).flatten(1).sum(1)


def model_nll(diffusion, x, mu, s):
    """Exact ``-log p`` of the ODE model for Gaussian data: ``x`` flows to
    ``x_T = alpha_T mu + sqrt(v_T / v_0)(x - alpha_0 mu)`` and the prior is ``N(0, I)``.
    Returns ``(nll, x_T)``."""
    (a0, aT), (s0, sT) = ends(diffusion)
    v0, vT = a0**2 * s**2 + s0**2, aT**2 * s**2 + sT**2
    x_T = aT * mu + (vT / v0).sqrt() * (x - a0 * mu)
    log_det = 0.5 * torch.log(vT / v0).expand_as(x).flatten(1).sum(1)
    return normal_nll(x_T, 0.0, torch.ones(())) - log_det, x_T


def mixture_nll(x, alpha, sigma):
    """``-log sum_k pi_k N(x; alpha m_k, (alpha^2 s_k^2 + sigma^2) I)``, the mixture's noisy marginal."""
    var = alpha**2 * STDS**2 + sigma**2  # [K]
    d2 = ((x[:, None, :] - alpha * MEANS[None]) ** 2).sum(-1)  # [B, K]
    log_comp = torch.log(WEIGHTS) - 0.5 * d2 / var - x.shape[1] * 0.5 * torch.log(2 * math.pi * var)
    return -torch.logsumexp(log_comp, dim=1)


def gaussian_data(n, seed=0, mu=MU, s=S):
    g = torch.Generator().manual_seed(seed)
    return mu + s * torch.randn(n, mu.numel(), generator=g, dtype=torch.float64)


# ----------------------------------------------------------------- exact divergence, Gaussian data
def test_exact_divergence_matches_the_models_closed_form(diffusion):
    x = gaussian_data(16)
    nll, stats = ode_nll(diffusion, GaussianOracle(diffusion, MU, S), x, return_stats=True)
    want, x_T = model_nll(diffusion, x, MU, S)
    assert nll.dtype == torch.float64 and nll.shape == (16,)
    assert (nll - want).abs().max() / 2 < 1e-3  # measured 7e-5 nats/dim at rtol = atol = 1e-5
    assert (stats.x_end - x_T).abs().max() < 1e-3
    assert stats.std_err is None and stats.nfe > 10
    assert torch.allclose(stats.prior_nll, normal_nll(stats.x_end, 0.0, torch.ones(())))
    tight = ode_nll(diffusion, GaussianOracle(diffusion, MU, S), x[:4], rtol=1e-7, atol=1e-7)
    assert (tight - want[:4]).abs().max() / 2 < 1e-5  # the solver converges to the closed form


def test_exact_divergence_matches_the_true_densities(diffusion):
    """The ODE measures the model's marginal at index 0; it differs from the true one only by the prior's
    mismatch at index T-1 (``log p_T(x_T) - log N(x_T; 0, I)``, up to 5e-3 nats/dim here), and the
    true index-0 marginal is within 5e-4 nats/dim of the data density for these widths."""
    x = gaussian_data(16, seed=1)
    nll, stats = ode_nll(diffusion, GaussianOracle(diffusion, MU, S), x, return_stats=True)
    (a0, aT), (s0, sT) = ends(diffusion)
    marginal0 = normal_nll(x, a0 * MU, a0**2 * S**2 + s0**2)
    data = normal_nll(x, MU, S**2)
    mismatch = normal_nll(stats.x_end, aT * MU, aT**2 * S**2 + sT**2) - stats.prior_nll
    assert (nll - marginal0).abs().max() / 2 < 0.01
    assert (nll - data).abs().max() / 2 < 0.01
    assert (nll + mismatch - marginal0).abs().max() / 2 < 1e-3


def test_narrow_data_measure_the_index0_marginal_not_the_data_density(diffusion):
    """For ``s = 0.02`` the noise at index 0 (``sigma_0^2 = 1e-4``) widens the marginal by 25%: the ODE
    likelihood follows ``N(alpha_0 mu, alpha_0^2 s^2 + sigma_0^2)``, whose log-ratio to ``N(mu, s^2)``
    is ``0.5 log 1.25 + 0.5 (x - alpha_0 mu)^2 / v_0 - 0.5 (x - mu)^2 / s^2`` per dimension (0.11 at the
    mean, -0.29 two widths away)."""
    mu, s = torch.tensor([0.2, -0.4], dtype=torch.float64), torch.full((2,), 0.02, dtype=torch.float64)
    x = gaussian_data(8, seed=2, mu=mu, s=s)
    nll = ode_nll(diffusion, GaussianOracle(diffusion, mu, s), x)
    (a0, _), (s0, _) = ends(diffusion)
    marginal0 = normal_nll(x, a0 * mu, a0**2 * s**2 + s0**2)
    data = normal_nll(x, mu, s**2)
    assert (nll - marginal0).abs().max() / 2 < 0.01
    assert ((nll - data) / 2).abs().max() > 0.05  # log N(mu, s^2) / N(alpha_0 mu, v_0): up to 0.2 here


def test_every_parameterization_gives_the_same_likelihood():
    """eps, x0 and v oracles of one mixture: equal up to the float32 model time the network receives
    (the Denoiser's conversion uses the float64 time), about 1e-6 nats."""
    x = GaussianMixtureOracle(dl.GaussianDiffusion("cosine", 1000), MEANS, STDS, WEIGHTS).sample(
        4, torch.Generator().manual_seed(3)
    )
    answers = []
    for pred in ("eps", "x0", "v"):
        d = dl.GaussianDiffusion("cosine", 1000, prediction=pred)
        answers.append(d.ode_nll(GaussianMixtureOracle(d, MEANS, STDS, WEIGHTS), x, rtol=1e-4, atol=1e-4))
    assert (answers[1] - answers[0]).abs().max() < 1e-5
    assert (answers[2] - answers[0]).abs().max() < 1e-5


# ----------------------------------------------------------------- Gaussian mixture
def test_mixture_exact_divergence_matches_the_mixture_density():
    """Cosine schedule: ``alpha_T = 5e-5``, so the prior ``N(0, I)`` is the last marginal to 1e-4 nats."""
    d = dl.GaussianDiffusion("cosine", 1000)
    oracle = GaussianMixtureOracle(d, MEANS, STDS, WEIGHTS)
    x = oracle.sample(16, torch.Generator().manual_seed(4))
    nll, stats = d.ode_nll(oracle, x, return_stats=True)
    (a0, aT), (s0, sT) = ends(d)
    marginal0 = mixture_nll(x, a0, s0)
    mismatch = mixture_nll(stats.x_end, aT, sT) - stats.prior_nll
    assert (nll - marginal0).abs().max() / 2 < 0.01
    assert (nll + mismatch - marginal0).abs().max() / 2 < 1e-3
    assert (marginal0 - mixture_nll(x, 1.0, 0.0)).abs().max() / 2 < 0.01  # data density, sigma_0 = 2e-3


def test_hutchinson_rademacher_on_the_mixture_agrees_within_its_standard_error():
    d = dl.GaussianDiffusion("cosine", 1000)
    oracle = GaussianMixtureOracle(d, MEANS, STDS, WEIGHTS)
    x = oracle.sample(8, torch.Generator().manual_seed(5))
    exact = ode_nll(d, oracle, x)
    est, stats = ode_nll(
        d, oracle, x, divergence="hutchinson", probes=8, generator=torch.Generator().manual_seed(6),
        return_stats=True,
    )
    z = (est - exact) / stats.std_err
    assert bool((stats.std_err > 0).all())
    assert z.abs().max() < 4
    assert z.mean().abs() < 3 / math.sqrt(8)


# ----------------------------------------------------------------- Hutchinson, Gaussian data
def probe_part(diffusion, s):
    """``A_ii = int -0.5 sigma d eps_i/dx_i dlambda`` from ``lambda_0`` to ``lambda_{T-1}``, the part of
    the divergence integral that Hutchinson estimates. ``d eps_i/dx_i = sigma/v_i`` and
    ``sigma^2/v_i = 1/(1 + s_i^2 e^lambda)``, whose antiderivative is ``lambda - log(1 + s_i^2 e^lambda)``."""
    lam0, lamT = (float(v) for v in diffusion.schedule.lambdas[[0, -1]])

    def F(lam):
        return lam - torch.log1p(s**2 * math.exp(lam))

    return -0.5 * (F(lamT) - F(lam0))


def test_hutchinson_gaussian_probes_error_and_standard_error(diffusion):
    """With the diagonal Jacobian of Gaussian data a Gaussian probe estimates ``sum_i A_ii z_i^2``: its
    variance is ``2 sum_i A_ii^2`` per probe, the same for every example, so the reported standard
    errors (on average over the batch) and the errors themselves are checked against it. In two
    dimensions the estimate is a skewed chi-square mixture, so one example's reported standard error
    can be far off (its spread is set by the chi-square's kurtosis); the per-example check against the
    reported value is done on the mixture and the image."""
    B, K = 32, 64
    x = gaussian_data(B, seed=7)
    oracle = GaussianOracle(diffusion, MU, S)
    exact = ode_nll(diffusion, oracle, x)
    est, stats = ode_nll(
        diffusion, oracle, x, divergence="hutchinson", probe="gaussian", probes=K,
        generator=torch.Generator().manual_seed(8), return_stats=True,
    )
    true_se = math.sqrt(2 * float((probe_part(diffusion, S) ** 2).sum()) / K)
    err = est - exact
    assert abs(float(stats.std_err.pow(2).mean()) / true_se**2 - 1) < 0.3
    assert (err / true_se).abs().max() < 4
    assert abs(float(err.mean())) < 3 * true_se / math.sqrt(B)  # unbiased: the mean of B*K probes


def test_hutchinson_rademacher_is_exact_for_a_diagonal_jacobian(diffusion):
    """``z_i^2 = 1`` for Rademacher probes, so ``z^T A z = tr A`` whenever ``A`` is diagonal."""
    x = gaussian_data(8, seed=9)
    oracle = GaussianOracle(diffusion, MU, S)
    est, stats = ode_nll(
        diffusion, oracle, x, divergence="hutchinson", probes=2,
        generator=torch.Generator().manual_seed(0), return_stats=True,
    )
    assert (est - ode_nll(diffusion, oracle, x)).abs().max() < 1e-8
    assert stats.std_err.abs().max() < 1e-8
    one = ode_nll(diffusion, oracle, x[:2], divergence="hutchinson", return_stats=True)[1]
    assert bool(one.std_err.isnan().all())  # one probe: no spread to measure


def test_image_shaped_input_with_hutchinson(diffusion):
    B, shape = 4, (1, 4, 4)
    g = torch.Generator().manual_seed(10)
    mu = 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    s = 0.3 + torch.rand(shape, generator=g, dtype=torch.float64)
    x = mu + s * torch.randn(B, *shape, generator=g, dtype=torch.float64)
    oracle = GaussianOracle(diffusion, mu, s)
    want, _ = model_nll(diffusion, x, mu, s)
    est, stats = diffusion.ode_nll(
        oracle, x, divergence="hutchinson", probe="gaussian", probes=8, generator=g, return_stats=True
    )
    assert est.shape == (B,) and stats.x_end.shape == x.shape
    true_se = math.sqrt(2 * float((probe_part(diffusion, s) ** 2).sum()) / 8)
    assert ((est - want) / stats.std_err).abs().max() < 4
    assert ((est - want) / true_se).abs().max() < 4
    rademacher = diffusion.ode_nll(oracle, x, divergence="hutchinson", generator=g)
    assert (rademacher - want).abs().max() / 16 < 1e-3


# ----------------------------------------------------------------- bits per dimension
@pytest.mark.parametrize("bins", [9, 256])
def test_bits_per_dim_matches_the_dequantized_closed_form(diffusion, bins):
    """The model density is ``N(m, W)`` per dimension (the prior pushed back through the affine flow:
    ``m = alpha_0 mu - sqrt(v_0/v_T) alpha_T mu``, ``W = v_0/v_T``), so with ``u ~ U[-w/2, w/2)``

        E_u[-log N(x0 + u; m, W)] = 0.5 log(2 pi W) + ((x0 - m)^2 + w^2/12) / (2 W)

    and the bound is that minus ``log w`` per dimension, over ``ln 2``. It must also lie above the
    exact discrete ``-log P(x0)`` of the cells (normal CDFs), by a small Jensen gap."""
    n, w = 48, 2.0 / (bins - 1)
    levels = torch.tensor([[4, 2], [6, 5]], dtype=torch.float64) * (bins - 1) // 8
    x0 = (levels * w - 1).repeat(n // 2, 1)  # two grid points, n/2 copies each
    oracle = GaussianOracle(diffusion, MU, S)
    bpd = ode_bits_per_dim(diffusion, oracle, x0, bins=bins, generator=torch.Generator().manual_seed(11))
    (a0, aT), (s0, sT) = ends(diffusion)
    v0, vT = a0**2 * S**2 + s0**2, aT**2 * S**2 + sT**2
    m, W = a0 * MU - (v0 / vT).sqrt() * aT * MU, v0 / vT
    expected = (0.5 * torch.log(2 * math.pi * W) + ((x0 - m) ** 2 + w**2 / 12) / (2 * W) - math.log(w))
    expected = expected.sum(1) / (2 * math.log(2))
    discrete = -discretized_gaussian_log_likelihood(x0, m.expand_as(x0), W.log().expand_as(x0), bins)
    discrete = discrete.sum(1) / (2 * math.log(2))
    for k in range(2):
        got, want = bpd[k::2], expected[k::2]
        se = float(got.std()) / math.sqrt(got.numel())
        assert abs(float(got.mean() - want[0])) < 4 * se + 1e-3
        assert float(want[0]) >= float(discrete[k]) - 1e-9
        assert float(want[0] - discrete[k]) < 0.05


def test_bits_per_dim_stats_are_in_bits(diffusion):
    x0 = torch.tensor([[0.0, 0.5], [-0.5, 1.0]], dtype=torch.float64)
    oracle = GaussianOracle(diffusion, MU, S)
    g = torch.Generator().manual_seed(12)
    bpd, stats = diffusion.ode_bits_per_dim(
        oracle, x0, bins=5, divergence="hutchinson", probes=3, generator=g, return_stats=True
    )
    assert bpd.shape == (2,) and stats.std_err.shape == (2,)
    assert torch.allclose(stats.prior_nll, normal_nll(stats.x_end, 0.0, torch.ones(())) / (2 * math.log(2)))


# ----------------------------------------------------------------- the protocol
class ContinuousVP:
    """A continuous-time VP process over ``lambda in [-12, 12]`` with the exact Gaussian ``eps``, in float32:
    ``eps = sigma (x - alpha mu) / v`` (Tweedie), to check the protocol without a ``GaussianDiffusion``."""

    def ode_view(self, model):
        def eps(x, lam):
            a2 = torch.sigmoid(torch.tensor(lam, dtype=torch.float64))
            v = a2 * S**2 + (1 - a2)
            return (((1 - a2).sqrt() / v) * (x.double() - a2.sqrt() * MU)).to(x.dtype)

        return ODEView(12.0, -12.0, eps)


def test_protocol_with_a_continuous_view_in_float32():
    x = gaussian_data(8, seed=13).float()
    nll = ode_nll(ContinuousVP(), None, x)
    a2 = torch.sigmoid(torch.tensor([12.0, -12.0], dtype=torch.float64))
    v = a2[:, None] * S**2 + (1 - a2[:, None])
    x_T = a2[1].sqrt() * MU + (v[1] / v[0]).sqrt() * (x.double() - a2[0].sqrt() * MU)
    want = normal_nll(x_T, 0.0, torch.ones(())) - 0.5 * torch.log(v[1] / v[0]).sum()
    assert nll.dtype == torch.float64
    assert (nll - want).abs().max() / 2 < 1e-3


# ----------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "options, match",
    [
        ({"divergence": "jacobian"}, "unknown divergence 'jacobian'"),
        ({"divergence": "hutchinson", "probe": "normal"}, "unknown probe 'normal'"),
        ({"rtol": 0.0}, "rtol must be a number > 0"),
        ({"atol": -1e-5}, "atol must be a number > 0"),
        ({"method": "rk4"}, "unknown method 'rk4'"),
        ({"divergence": "hutchinson", "probes": 0}, "probes must be an integer >= 1"),
        ({"probes": 4}, "applies to divergence='hutchinson' only"),
    ],
)
def test_bad_options_raise(diffusion, options, match):
    with pytest.raises(ValueError, match=match):
        ode_nll(diffusion, GaussianOracle(diffusion), torch.zeros(2, 2), **options)


def test_bad_inputs_raise(diffusion):
    oracle = GaussianOracle(diffusion)
    with pytest.raises(ValueError, match=r"batch tensor \[B, ...\]"):
        ode_nll(diffusion, oracle, torch.zeros(2))
    with pytest.raises(ValueError, match="floating-point"):
        ode_nll(diffusion, oracle, torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN or infinite"):
        ode_nll(diffusion, oracle, torch.full((2, 2), math.nan))
    with pytest.raises(ValueError, match="bins must be an integer >= 2"):
        ode_bits_per_dim(diffusion, oracle, torch.zeros(2, 2), bins=1)
    with pytest.raises(ValueError, match="not on the 256-level grid"):
        ode_bits_per_dim(diffusion, oracle, torch.full((2, 2), 0.001))
    with pytest.raises(ValueError, match="lambda_start"):
        ODEView(-1.0, 1.0, lambda x, lam: x)
    with pytest.raises(TypeError, match="no ode_view"):
        ode_nll(object(), oracle, torch.zeros(2, 2))


def test_a_model_without_gradients_is_refused(diffusion):
    def detached(x, t):
        return x.detach() * 0.5

    with pytest.raises(ValueError, match="does not depend differentiably"):
        ode_nll(diffusion, detached, torch.zeros(2, 2))


def test_warnings_for_many_dimensions_and_training_mode(diffusion):
    class Net(torch.nn.Module):
        def forward(self, x, t):
            return 0.5 * x

    with pytest.warns(UserWarning, match="hutchinson"):
        ode_nll(diffusion, GaussianOracle(diffusion), torch.zeros(1, 65), rtol=1e-2, atol=1e-2)
    with pytest.warns(UserWarning, match="model.eval"):
        ode_nll(diffusion, Net(), torch.zeros(2, 2), rtol=1e-2, atol=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ode_nll(diffusion, Net().eval(), torch.zeros(2, 2), rtol=1e-2, atol=1e-2)
