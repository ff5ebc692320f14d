"""Every sampler on one timestep list, measured against exact answers (no training needed).

For Gaussian data ``x_0 ~ N(mu, s^2)`` the exact denoiser is affine and the probability-flow ODE is
solved in closed form (:func:`exact_flow`), so a deterministic sampler's error is measured per sample
against the exact map from the same ``x_T``; stochastic samplers are checked on the mean and standard
deviation of many samples, or against their own exact linear-Gaussian moment recursions.
"""

import math
import sys

import pytest
import torch

import difflab as dl
from difflab.metrics import sliced_wasserstein
from difflab.oracles import GaussianMixtureOracle, GaussianOracle
from difflab.samplers import DEFAULT_SPACING, SAMPLERS, time_of_sigma_ve

MU, S = 0.5, 0.3
ODE_SAMPLERS = {"euler": 1, "heun": 2, "dpm++2m": 2, "dpm++3m": 3}  # name -> order of convergence


@pytest.fixture(scope="module")
def diffusion():
    return dl.GaussianDiffusion("linear", 1000)


@pytest.fixture(scope="module")
def oracle(diffusion):
    return GaussianOracle(diffusion, MU, S)


def sigma_ve(diffusion, t) -> float:
    a, s = diffusion.schedule.alpha_sigma(torch.tensor(float(t), dtype=torch.float64))
    return float(s / a)


def exact_flow(x_T, sigma_T, sigma_to=0.0):
    """The probability-flow ODE of N(MU, S^2) data in closed form, from ``sigma~ = sigma_T`` to ``sigma_to``.

    In ``x~ = x/alpha`` the exact denoiser is ``D = MU + S^2 (x~ - MU)/(S^2 + sigma~^2)``, so
    ``dx~/dsigma~ = (x~ - D)/sigma~ = (x~ - MU) sigma~/(S^2 + sigma~^2)``, so that
    ``(x~ - MU)/sqrt(S^2 + sigma~^2)`` is constant along a trajectory. ``x_T`` is given in ``x~`` coordinates.
    """
    return MU + (x_T - MU) * math.sqrt(S**2 + sigma_to**2) / math.sqrt(S**2 + sigma_T**2)


def reference(diffusion, x_T):
    """What a perfect solver returns on a full-range list: the exact flow from level ``T-1`` to level 0,
    then the shared last step to the data, ``x0_hat`` at level 0."""
    s_T, s_0 = sigma_ve(diffusion, 999), sigma_ve(diffusion, 0)
    a_T = diffusion.schedule.alpha_sigma(torch.tensor(999.0, dtype=torch.float64))[0]
    x_0 = exact_flow(x_T / float(a_T), s_T, s_0)
    return MU + S**2 * (x_0 - MU) / (S**2 + s_0**2)


def standard_normal(n, d=1, seed=0):
    """``x_T`` with exactly zero mean and unit std per coordinate: for Gaussian data every deterministic
    sampler is an affine map, so the std of its output is the map's slope, free of sampling noise."""
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (z - z.mean(0)) / z.std(0)


class Counting:
    """Counts calls of the model independently of the Denoiser's own counter."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.model(x, t)


# ---------------------------------------------------------------------------------- the exact map
def test_closed_form_solves_the_probability_flow_ode(diffusion):
    """Finite differences of :func:`exact_flow` equal ``(x~ - D)/sigma~`` with the oracle's ``D``,
    and at ``sigma~ = 0`` it is ``MU + S/sqrt(alpha_T^2 S^2 + sigma_T^2) (x_T - alpha_T MU)``."""
    den = diffusion.denoiser(GaussianOracle(diffusion, MU, S))
    x_T = torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None]
    s_T = sigma_ve(diffusion, 999)
    for t in (900.0, 500.5, 100.25, 3.0):
        s = sigma_ve(diffusion, t)
        x = exact_flow(x_T, s_T, s)
        slope = (exact_flow(x_T, s_T, s * (1 + 1e-6)) - exact_flow(x_T, s_T, s * (1 - 1e-6))) / (2e-6 * s)
        a = diffusion.schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64))[0]
        x0_hat, _ = den(float(a) * x, torch.tensor(t, dtype=torch.float64))
        torch.testing.assert_close(slope, (x - x0_hat) / s, rtol=1e-6, atol=1e-9)
    a_T, sig_T = diffusion.schedule.alpha_sigma(torch.tensor(999.0, dtype=torch.float64))
    x_T_vp = float(a_T) * x_T
    want = MU + S / math.sqrt(float(a_T) ** 2 * S**2 + float(sig_T) ** 2) * (x_T_vp - float(a_T) * MU)
    torch.testing.assert_close(exact_flow(x_T, s_T), want, rtol=1e-12, atol=1e-12)


def test_ode_with_tight_tolerance_matches_the_exact_map(diffusion, oracle):
    x_T = torch.randn(64, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    counting = Counting(oracle)
    x, nfe = diffusion.sample(counting, x_T.shape, sampler="ode", x_T=x_T, rtol=1e-8, atol=1e-8,
                              return_nfe=True)
    assert nfe == counting.calls
    torch.testing.assert_close(x, reference(diffusion, x_T), rtol=0, atol=2e-6)
    # the exact map all the way to sigma~ = 0 differs only by the shared last (denoising) step
    a_T = float(diffusion.schedule.alpha_sigma(torch.tensor(999.0, dtype=torch.float64))[0])
    exact = exact_flow(x_T / a_T, sigma_ve(diffusion, 999))
    torch.testing.assert_close(x, exact, rtol=0, atol=1e-3)


def test_euler_in_edm_coordinates_is_ddim(diffusion, oracle):
    """Euler on ``dx~/dsigma~`` is DDIM (eta = 0) step by step (Song et al. 2021, sec. 4.3)."""
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for spacing in ("uniform", "edm"):
        a = diffusion.sample(oracle, x_T.shape, sampler="euler", steps=17, spacing=spacing, x_T=x_T)
        b = diffusion.sample(oracle, x_T.shape, sampler="ddim", steps=17, spacing=spacing, x_T=x_T)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------- orders
def _order(diffusion, oracle, name, spacing, steps=(80, 160)):
    x_T = torch.randn(64, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = reference(diffusion, x_T)
    errs = [
        float((diffusion.sample(oracle, x_T.shape, sampler=name, steps=n, spacing=spacing, x_T=x_T)
               - ref).pow(2).mean().sqrt())
        for n in steps
    ]
    return math.log(errs[0] / errs[1]) / math.log(steps[1] / steps[0]), errs


@pytest.mark.parametrize("name", list(ODE_SAMPLERS))
def test_deterministic_samplers_converge_at_their_order(diffusion, oracle, name):
    """On EDM's spacing the error against the exact map falls as ``steps^-p``: p = 1 for Euler,
    2 for Heun and DPM-Solver++(2M), 3 for DPM-Solver++(3M) (a 3M whose quadratic term is off by a
    factor, as in DPM-Solver's published multistep code, shows 2)."""
    p = ODE_SAMPLERS[name]
    order, errs = _order(diffusion, oracle, name, "edm")
    assert abs(order - p) < 0.4, (order, errs)
    assert errs[1] < 1e-2


@pytest.mark.parametrize("name", ["dpm++2m", "dpm++3m"])
def test_multistep_order_on_equal_log_snr_steps(diffusion, oracle, name):
    """On their default (equal log-SNR) steps the multistep solvers reach at least their order; 3M
    converges faster than third order on this linear problem (superconvergence on equal steps)."""
    order, errs = _order(diffusion, oracle, name, "logsnr")
    assert order > ODE_SAMPLERS[name] - 0.3, (order, errs)


def test_issue_targets_at_10_and_20_nfe(diffusion, oracle):
    """Linear schedule, T = 1000, N(0.5, 0.3^2): the best sampler within 10 NFE has its std within 3%
    of the truth, within 20 NFE within 1% (each sampler on its default spacing)."""
    x_T = standard_normal(256)
    for budget, tol in ((10, 0.03), (20, 0.01)):
        best = math.inf
        for name in ODE_SAMPLERS:
            steps = (budget + 1) // 2 if name == "heun" else budget
            x, nfe = diffusion.sample(oracle, x_T.shape, sampler=name, steps=steps, x_T=x_T, return_nfe=True)
            assert nfe <= budget
            best = min(best, abs(float(x.std()) / S - 1))
        assert best < tol, (budget, best)


# ---------------------------------------------------------------------------------- NFE
@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("ancestral", {}, lambda n: n),
        ("ddim", {}, lambda n: n),
        ("euler", {}, lambda n: n),
        ("heun", {}, lambda n: 2 * n - 1),
        ("heun", {"s_churn": 10.0}, lambda n: 2 * n - 1),
        ("dpm++2m", {}, lambda n: n),
        ("dpm++3m", {}, lambda n: n),
        ("dpm++2m-sde", {}, lambda n: n),
        ("pc", {"corrector_steps": 2}, lambda n: 3 * n),
        ("langevin", {"n_steps_each": 3}, lambda n: 3 * n + 1),
        ("langevin", {"n_steps_each": 3, "denoise": False}, lambda n: 3 * n),
        ("ode", {"rtol": 1e-3, "atol": 1e-3}, None),
    ],
)
def test_reported_nfe_counts_every_model_call(diffusion, oracle, name, options, expected):
    counting = Counting(oracle)
    x, nfe = diffusion.sample(counting, (16, 2), sampler=name, steps=12, return_nfe=True,
                              generator=torch.Generator().manual_seed(4), **options)
    assert nfe == counting.calls
    if expected is not None:
        assert nfe == expected(12)
    assert bool(torch.isfinite(x).all()) and x.dtype == torch.float32


# ---------------------------------------------------------------------------------- stochastic
def _moments(diffusion, oracle, name, steps, n=10_000, seed=5, **options):
    x = diffusion.sample(oracle, (n, 1), sampler=name, steps=steps, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(seed), **options)
    return float(x.mean()), float(x.std())


@pytest.mark.parametrize(
    "name, steps, options, std_tol",
    [
        ("dpm++2m-sde", 100, {}, 0.03),
        ("heun", 100, {"s_churn": 80.0}, 0.03),
        ("pc", 200, {}, 0.05),
        ("ancestral", 1000, {}, 0.03),
        ("langevin", 20, {"n_steps_each": 50, "epsilon": 1e-4}, 0.05),
    ],
)
def test_stochastic_samplers_reproduce_mean_and_std(diffusion, oracle, name, steps, options, std_tol):
    mean, std = _moments(diffusion, oracle, name, steps, **options)
    assert abs(mean - MU) < 0.02 * MU, mean
    assert abs(std - S) < std_tol * S, std


def _predictor_moments(diffusion, steps):
    """Exact mean and variance after the reverse-diffusion predictor alone, from x_T ~ N(0, 1): with the
    exact score ``-(x - alpha MU)/V``, ``V = alpha^2 S^2 + sigma^2``, every step is affine in ``x``."""
    lv = dl.samplers.make_levels(diffusion.schedule, diffusion.timesteps_for(steps, "uniform"))
    m, v = 0.0, 1.0
    for _, a_t, s_t, a_s, s_s in lv.pairs():
        a = float(a_t / a_s)
        b = float(s_t**2 - a**2 * s_s**2)
        V = float(a_t) ** 2 * S**2 + float(s_t) ** 2
        c = 2 - a - b / V
        m, v = c * m + b * float(a_t) * MU / V, c * c * v + (b if float(s_s) > 0 else 0.0)
    return m, v


def _langevin_moments(diffusion, steps, n_steps_each, epsilon=None, m=0.0, v=1.0):
    """Exact moments of annealed Langevin with the exact score from ``x ~ N(m, v)``, and of the final
    denoising step. Step ``h_i = epsilon (sigma_i / sigma_L)^2`` (NCSN); ``epsilon=None``: the
    documented default ``h_i = 0.2 sigma_i^2``."""
    lv = dl.samplers.make_levels(diffusion.schedule, diffusion.timesteps_for(steps, "logsnr"))
    for a, sig in zip(lv.alpha.tolist(), lv.sigma.tolist()):
        h = 0.2 * sig * sig if epsilon is None else epsilon * (sig / float(lv.sigma[-1])) ** 2
        V = a * a * S**2 + sig * sig
        for _ in range(n_steps_each):
            c = 1 - h / (2 * V)
            m, v = c * m + h * a * MU / (2 * V), c * c * v + h
    a = float(lv.alpha[-1])
    g = a * S**2 / (a * a * S**2 + float(lv.sigma[-1]) ** 2)  # x0_hat = MU + g (x - a MU)
    return MU + g * (m - a * MU), g * g * v


@pytest.mark.parametrize("kind", ["pc", "langevin"])
def test_score_samplers_match_their_exact_moment_recursion(diffusion, oracle, kind):
    """With no corrector the PC chain, and annealed Langevin with NCSN's step rule, are linear-Gaussian
    for Gaussian data: their output moments are known exactly, step by step."""
    n = 20_000
    if kind == "pc":
        want_m, want_v = _predictor_moments(diffusion, 50)
        mean, std = _moments(diffusion, oracle, "pc", 50, n=n, corrector_steps=0)
    else:
        want_m, want_v = _langevin_moments(diffusion, 10, 20, 2e-5)
        mean, std = _moments(diffusion, oracle, "langevin", 10, n=n, n_steps_each=20, epsilon=2e-5)
    se = math.sqrt(want_v / n)
    assert abs(mean - want_m) < 4 * se, (mean, want_m)
    assert abs(std - math.sqrt(want_v)) < 4 * math.sqrt(want_v / (2 * n)), (std, math.sqrt(want_v))


@pytest.mark.parametrize("process", ["ddpm", "vdm", "edm"])
def test_langevin_default_step_follows_the_level_on_every_schedule(process):
    """The default step ``0.2 sigma_i^2`` is NCSN's ``2e-5`` on DDPM's linear schedule (last level
    0.01) and stays stable where the last level is far smaller (VDM 0.0013, EDM 0.002; NCSN's absolute
    ``2e-5`` makes the first step ``e/V`` about 10 and 5 there and diverges): the samples' moments
    match the exact recursion."""
    from difflab.processes import EDMDiffusion, VDMDiffusion

    d = {"ddpm": lambda: dl.GaussianDiffusion("linear", 1000), "vdm": lambda: VDMDiffusion("linear"),
         "edm": EDMDiffusion}[process]()
    v0 = d.prior_std(dl.samplers.make_levels(d.schedule, d.timesteps_for(20, "logsnr"))) ** 2
    want_m, want_v = _langevin_moments(d, 20, 100, m=0.0, v=v0)
    n, g = 20_000, torch.Generator().manual_seed(3)
    x_T = math.sqrt(v0) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    x = d.sample(GaussianOracle(d, MU, S), x_T.shape, sampler="langevin", steps=20, x_T=x_T, generator=g)
    mean, std = float(x.mean()), float(x.std())
    assert abs(mean - want_m) < 4 * math.sqrt(want_v / n), (mean, want_m)
    assert abs(std - math.sqrt(want_v)) < 4 * math.sqrt(want_v / (2 * n)), (std, math.sqrt(want_v))
    assert abs(std - S) < 0.05 * S, std  # and near the data with the default 100 steps per level


# ---------------------------------------------------------------------------------- a 2-D mixture
@pytest.fixture(scope="module")
def mixture(diffusion):
    """A 2-D three-mode mixture, a fixed ``x_T``, its exact probability-flow image (adaptive RK45 at
    rtol 1e-7), data drawn from the mixture, and the sliced W2 between two data sets of that size (what a
    perfect sampler reaches; it is dominated by the random share of each mode, ~0.1 at 4000 points)."""
    means = torch.tensor([[1.0, 1.0], [-1.0, 0.5], [0.0, -1.0]])
    oracle = GaussianMixtureOracle(diffusion, means, stds=0.1, weights=torch.tensor([0.5, 0.3, 0.2]))
    n, g = 4000, torch.Generator().manual_seed(6)
    data, other = oracle.sample(n, generator=g), oracle.sample(n, generator=g)
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    exact = diffusion.sample(oracle, x_T.shape, sampler="ode", x_T=x_T, rtol=1e-7, atol=1e-7)
    return oracle, x_T, exact, data, _sw(data, other)


def _sw(x, y):
    return sliced_wasserstein(x, y, 200, generator=torch.Generator().manual_seed(0))


def test_mixture_samples_by_sliced_wasserstein(diffusion, mixture):
    """The exact ODE image of ``x_T ~ N(0, I)`` and SDE samples are as close to the data as a second data
    set is (within the mode-share noise)."""
    oracle, x_T, exact, data, floor = mixture
    sde = diffusion.sample(oracle, x_T.shape, sampler="dpm++2m-sde", steps=50, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(8))
    for x in (exact, sde):
        assert _sw(x, data) < 2 * floor, (_sw(x, data), floor)


@pytest.mark.parametrize("name, steps, bound", [("dpm++3m", 20, 0.04), ("heun", 20, 0.04), ("ode", 2, 1e-3)])
def test_mixture_deterministic_samplers_reach_the_exact_image(diffusion, mixture, name, steps, bound):
    """From the same ``x_T`` the mode shares cancel and sliced W2 resolves the solver error; five Euler
    steps visibly miss (the check can fail)."""
    oracle, x_T, exact, _, _ = mixture
    x = diffusion.sample(oracle, x_T.shape, sampler=name, steps=steps, x_T=x_T)
    assert _sw(x, exact) < bound
    crude = diffusion.sample(oracle, x_T.shape, sampler="euler", steps=5, x_T=x_T)
    assert _sw(crude, exact) > 0.2


# ---------------------------------------------------------------------------------- levels, defaults, errors
def test_edm_spacing_is_karras_rho_7_between_the_schedule_ends(diffusion):
    t = diffusion.timesteps_for(12, "edm")
    assert float(t[0]) == 999.0 and float(t[-1]) == 0.0 and bool((t[1:] < t[:-1]).all())
    a, s = diffusion.schedule.alpha_sigma(t)
    root = (s / a) ** (1 / 7)
    want = torch.linspace(float(root[0]), float(root[-1]), 12, dtype=torch.float64)
    torch.testing.assert_close(root, want, rtol=1e-10, atol=0)


def test_time_of_sigma_inverts_the_schedule(diffusion):
    sig = torch.tensor([sigma_ve(diffusion, 999), 37.0, 1.0, 0.3, 0.05, sigma_ve(diffusion, 0)],
                       dtype=torch.float64)
    t = time_of_sigma_ve(diffusion.schedule, sig)
    a, s = diffusion.schedule.alpha_sigma(t)
    torch.testing.assert_close(s / a, sig, rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="outside the schedule"):
        time_of_sigma_ve(diffusion.schedule, torch.tensor([1e4], dtype=torch.float64))


def test_spacing_none_uses_the_sampler_default(diffusion, oracle):
    assert set(DEFAULT_SPACING) == set(SAMPLERS)
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for name in ("heun", "dpm++2m", "ddim"):
        a = diffusion.sample(oracle, x_T.shape, sampler=name, steps=10, x_T=x_T)
        b = diffusion.sample(oracle, x_T.shape, sampler=name, steps=10, x_T=x_T,
                             spacing=DEFAULT_SPACING[name])
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ode_without_torchdiffeq_says_how_to_install(diffusion, oracle, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchdiffeq", None)
    with pytest.raises(ImportError, match="pip install"):
        diffusion.sample(oracle, (4, 2), sampler="ode", steps=5)


@pytest.mark.parametrize(
    "name, options",
    [
        ("heun", {"s_churn": -1.0}),
        ("dpm++2m", {"solver_type": "rk4"}),
        ("dpm++2m-sde", {"eta": -0.5}),
        ("pc", {"snr": 0.0}),
        ("pc", {"corrector_steps": 1.5}),
        ("langevin", {"n_steps_each": 0}),
        ("ode", {"rtol": 0.0}),
    ],
)
def test_bad_options_raise_clear_errors(diffusion, oracle, name, options):
    with pytest.raises(ValueError, match=next(iter(options))):
        diffusion.sample(oracle, (4, 2), sampler=name, steps=5, **options)
