"""UniPC, DEIS, iPNDM, singlestep DPM-Solver++ and the adaptive DPM-Solver against exact answers.

For Gaussian data ``N(MU, S^2)`` the probability-flow ODE has a closed-form solution (in ``x~ = x/alpha``,
``(x~ - MU)/sqrt(S^2 + sigma~^2)`` is constant along a trajectory), so every deterministic sampler is
compared per sample with the exact endpoint from the same ``x_T``: the flow to the last level followed
by the shared last step (``x0_hat`` there). Orders are slopes of log(error) against log(NFE); special
cases are checked against other samplers of the package, computed independently.
"""

import math

import pytest
import torch

import difflab as dl
from difflab.oracles import GaussianOracle
from difflab.samplers import DEFAULT_SPACING, SAMPLERS, make_levels
from difflab.samplers.budget import RECOMMENDED, levels_for_nfe, plan, recommend

MU, S = 0.5, 0.3


@pytest.fixture(scope="module")
def oracle():
    """The exact denoiser of ``N(MU, S^2)`` data on DDPM's linear schedule (T = 1000)."""
    return GaussianOracle(dl.GaussianDiffusion("linear", 1000), MU, S)


@pytest.fixture(scope="module")
def diffusion(oracle):
    return oracle.diffusion


def exact_endpoint(diffusion, x_T, steps=2, spacing="logsnr"):
    """The exact flow from the first to the last level, then ``x0_hat`` at the last level (closed form)."""
    lv = make_levels(diffusion.schedule, diffusion.timesteps_for(steps, spacing))
    s_T, s_0 = float(lv.sigma_ve[0]), float(lv.sigma_ve[-1])
    x = MU + (x_T / float(lv.alpha[0]) - MU) * math.sqrt(S**2 + s_0**2) / math.sqrt(S**2 + s_T**2)
    return MU + S**2 * (x - MU) / (S**2 + s_0**2)


def counted(model):
    """``model`` and a list that gets one entry per call: an NFE count kept apart from the Denoiser's."""
    calls: list[int] = []

    def call(x, t):
        calls.append(1)
        return model(x, t)

    return call, calls


def x_T(n=64, seed=3):
    return torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def error_and_nfe(diffusion, oracle, name, steps, spacing="edm", **options):
    z = x_T()
    x, nfe = diffusion.sample(oracle, z.shape, sampler=name, steps=steps, spacing=spacing, x_T=z,
                              return_nfe=True, **options)
    return float((x - exact_endpoint(diffusion, z)).pow(2).mean().sqrt()), nfe


# name, options, order of convergence in NFE on EDM's spacing
ORDERS = [
    ("unipc", {}, 4),  # UniP-3 + UniC: order 3 + 1
    ("unipc", {"variant": "bh2"}, 4),
    ("unipc", {"prediction": "data"}, 4),
    ("unipc", {"order": 2}, 3),
    ("unipc", {"order": 2, "corrector": False}, 2),
    ("unipc", {"order": 1}, 2),
    ("deis", {}, 3),
    ("deis", {"basis": "t"}, 3),
    ("deis", {"basis": "rho", "order": 2}, 2),
    ("ipndm", {}, 2),  # equal-step Adams-Bashforth weights on unequal steps: second order
    ("dpm++2s", {}, 2),
    ("dpm++2s", {"solver_type": "heun"}, 2),
    ("dpm++3s", {}, 3),
    ("dpm++3s", {"solver_type": "heun"}, 3),
]


@pytest.mark.parametrize("name, options, order", ORDERS)
def test_order_of_convergence_against_the_exact_flow(diffusion, oracle, name, options, order):
    steps = (30, 60) if name.startswith("dpm++") else (60, 120)  # the singlestep ones: 2-3 NFE a level
    (e1, n1), (e2, n2) = (error_and_nfe(diffusion, oracle, name, n, **options) for n in steps)
    slope = math.log(e1 / e2) / math.log(n2 / n1)
    assert abs(slope - order) < 0.35, (slope, e1, e2)
    assert e2 < 1e-3


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("unipc", {}, lambda n: n),
        ("unipc", {"corrector": False}, lambda n: n),
        ("deis", {"basis": "t"}, lambda n: n),
        ("ipndm", {}, lambda n: n),
        ("dpm++2s", {}, lambda n: 2 * n - 1),
        ("dpm++3s", {}, lambda n: 3 * n - 2),
    ],
)
def test_nfe_is_counted_and_as_documented(diffusion, oracle, name, options, expected):
    counting, calls = counted(oracle)
    x, nfe = diffusion.sample(counting, (8, 2), sampler=name, steps=9, return_nfe=True, **options)
    assert nfe == len(calls) == expected(9)
    assert bool(torch.isfinite(x).all()) and x.dtype == torch.float32


@pytest.mark.parametrize(
    "name, options, other, other_options",
    [
        ("unipc", {"order": 1, "corrector": False}, "ddim", {}),
        ("deis", {"order": 1}, "ddim", {}),
        ("ipndm", {"order": 1}, "euler", {}),
        # UniP-2 with B2(h) = e^-h - 1 is DPM-Solver++(2M) (paper, sec. 3.3)
        ("unipc", {"order": 2, "corrector": False, "variant": "bh2", "prediction": "data"}, "dpm++2m", {}),
        ("unipc", {"order": 3, "corrector": False, "lower_order_final": False, "prediction": "data"},
         "dpm++3m", {"lower_order_final": False}),
    ],
)
def test_special_cases_are_the_known_samplers(diffusion, oracle, name, options, other, other_options):
    z = x_T(16)
    for spacing in ("edm", "quadratic"):
        a = diffusion.sample(oracle, z.shape, sampler=name, steps=13, spacing=spacing, x_T=z, **options)
        b = diffusion.sample(oracle, z.shape, sampler=other, steps=13, spacing=spacing, x_T=z,
                             **other_options)
        if other == "dpm++3m":  # UniP-3 solves for its coefficients, 3M integrates the quadratic exactly:
            assert float((a - b).abs().max()) < 2e-3  # the same third-order method, not the same numbers
        else:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_deis_log_rho_coefficients_match_their_closed_form(diffusion, oracle):
    """Second-order AB-DEIS in ``log rho`` has ``int L_j drho`` in closed form
    (``int (log r - log c) dr = r (log r - log c - 1)``): a hand-rolled sampler gives the same samples."""
    z = x_T(16)
    lv = make_levels(diffusion.schedule, diffusion.timesteps_for(11, "edm"))
    sig = lv.sigma_ve_to_data()
    den = diffusion.denoiser(oracle)
    x, prev = z / float(lv.alpha[0]), None
    for i in range(len(lv)):
        x0, _ = den(float(lv.alpha[i]) * x, lv.t[i])
        if float(sig[i + 1]) == 0:
            x = x0
            break
        eps = (x - x0) / float(sig[i])
        a, b = float(sig[i]), float(sig[i + 1])
        if prev is None:  # the first step is first order
            x_new = x + (b - a) * eps
        else:
            c = float(sig[i - 1])

            def ind(r, node, other):  # int (log r - log other)/(log node - log other) dr
                return r * (math.log(r) - math.log(other) - 1) / (math.log(node) - math.log(other))

            c0 = ind(b, a, c) - ind(a, a, c)
            c1 = ind(b, c, a) - ind(a, c, a)
            x_new = x + c0 * eps + c1 * prev
        x, prev = x_new, eps
    got = diffusion.sample(oracle, z.shape, sampler="deis", steps=11, spacing="edm", x_T=z, order=2,
                           basis="log_rho")
    torch.testing.assert_close(got, x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("prediction", ["data", "noise"])
@pytest.mark.parametrize("order", [2, 3])
def test_adaptive_pair_has_its_local_orders_against_the_exact_flow(diffusion, oracle, order, prediction):
    """One step of the pair from ``sigma~ = 0.1``: the higher solution's local error against the
    closed-form flow is ``O(h^(order+1))`` and the estimate ``x~_high - x~_low`` is ``O(h^order)``."""
    from difflab.samplers.adaptive import embedded_pair
    from difflab.samplers.ve import VEDenoiser

    ve = VEDenoiser(diffusion.denoiser(oracle), make_levels(diffusion.schedule, diffusion.timesteps_for(2)))
    s0 = 0.1
    x = MU + math.sqrt(S**2 + s0**2) * x_T(64)  # x~ at sigma~ = s0, lambda = -log s0
    d0 = ve.at_sigma(x, s0)
    errs, ests = [], []
    for h in (0.1, 0.05):
        low, high = embedded_pair(ve, x, -math.log(s0), h, d0, order, prediction, "heun")
        exact = MU + (x - MU) * math.sqrt(S**2 + (s0 * math.exp(-h)) ** 2) / math.sqrt(S**2 + s0**2)
        errs.append(float((high - exact).pow(2).mean().sqrt()))
        ests.append(float((high - low).pow(2).mean().sqrt()))
    assert abs(math.log2(errs[0] / errs[1]) - (order + 1)) < 0.25, errs
    assert abs(math.log2(ests[0] / ests[1]) - order) < 0.25, ests


@pytest.mark.parametrize("prediction", ["data", "noise"])
def test_adaptive_reaches_its_tolerance_and_counts_every_evaluation(diffusion, oracle, prediction):
    z = x_T()
    ref = exact_endpoint(diffusion, z)
    errs, nfes = {}, {}
    for order, tol in ((2, 1e-3), (3, 1e-3), (3, 1e-5)):
        counting, calls = counted(oracle)
        x, nfe = diffusion.sample(counting, z.shape, sampler="dpm-adaptive", x_T=z, rtol=tol, atol=tol,
                                  order=order, prediction=prediction, return_nfe=True)
        assert nfe == len(calls)
        errs[order, tol], nfes[order, tol] = float((x - ref).abs().max()), nfe
    assert errs[3, 1e-5] < min(1e-4, errs[3, 1e-3] / 10), errs  # tolerance 1e-5: within 10x of it per sample
    assert nfes[3, 1e-5] > nfes[3, 1e-3], nfes  # tighter costs more
    assert nfes[3, 1e-3] < nfes[2, 1e-3], nfes  # the 2-3 pair needs fewer evaluations than the 1-2 pair


PROCESSES = {
    "ddpm": lambda: dl.GaussianDiffusion("linear", 1000),
    "ve": lambda: __import__("difflab.processes", fromlist=["VEDiffusion"]).VEDiffusion(),
    "edm": lambda: __import__("difflab.processes", fromlist=["EDMDiffusion"]).EDMDiffusion(),
    "vdm": lambda: __import__("difflab.processes", fromlist=["VDMDiffusion"]).VDMDiffusion("linear"),
}
NEW = ("unipc", "deis", "ipndm", "dpm++2s", "dpm++3s", "dpm-adaptive")


@pytest.mark.parametrize("process", list(PROCESSES))
def test_every_new_sampler_solves_every_process(process):
    """VP (DDPM), VE, EDM and VDM: the same ODE in ``x~``; each sampler lands near the exact endpoint."""
    d = PROCESSES[process]()
    oracle = GaussianOracle(d, MU, S)
    lv = make_levels(d.schedule, d.timesteps_for(16, "logsnr"))
    z = d.prior_std(lv) * x_T(16)
    ref = exact_endpoint(d, z, 16, "logsnr")
    adaptive = {"rtol": 1e-3, "atol": 1e-3}
    for name, options in [(n, adaptive if n == "dpm-adaptive" else {}) for n in NEW] + [
        ("dpm-adaptive", {**adaptive, "prediction": "noise"})
    ]:
        x = d.sample(oracle, z.shape, sampler=name, steps=16, spacing="logsnr", x_T=z, **options)
        err = float((x - ref).abs().max()) / max(1.0, float(ref.abs().max()))
        assert err < 0.02, (process, name, options)
    x = d.sample(oracle, z.shape, sampler="restart", steps=16, x_T=z,
                 generator=torch.Generator().manual_seed(2))
    ref = exact_restart_endpoint(d, z, 16, 1, seed=2)
    assert float((x - ref).abs().max()) / max(1.0, float(ref.abs().max())) < 0.05, (process, "restart")


@pytest.mark.parametrize(
    "name, options, word",
    [
        ("unipc", {"order": 4}, "order"),
        ("unipc", {"variant": "bh3"}, "variant"),
        ("unipc", {"prediction": "v"}, "prediction"),
        ("deis", {"basis": "lambda"}, "basis"),
        ("deis", {"order": True}, "order"),
        ("ipndm", {"order": 5}, "order"),
        ("dpm++2s", {"r1": 1.5}, "r1"),
        ("dpm++3s", {"r1": 0.7, "r2": 0.5}, "r1"),
        ("dpm++3s", {"solver_type": "taylor"}, "solver_type"),
        ("dpm-adaptive", {"order": 1}, "order"),
        ("dpm-adaptive", {"rtol": 0.0}, "rtol"),
        ("dpm-adaptive", {"max_growth": -1.0}, "max_growth"),
        ("dpm-adaptive", {"prediction": "v"}, "prediction"),
    ],
)
def test_bad_options_raise_one_line_errors(diffusion, oracle, name, options, word):
    with pytest.raises(ValueError, match=word) as info:
        diffusion.sample(oracle, (4, 1), sampler=name, steps=5, **options)
    assert "\n" not in str(info.value)


def test_new_samplers_are_registered_with_a_default_spacing():
    for name in NEW:
        assert name in SAMPLERS and name in DEFAULT_SPACING


def test_recommended_configuration_fits_each_budget(diffusion, oracle):
    """``recommend(nfe)`` spends at most ``nfe`` evaluations, and beats DDIM at the same budget."""
    z = x_T(32)
    ref = exact_endpoint(diffusion, z)
    for nfe in (3, 5, 8, 10, 20, 50, 200):
        sampler, steps, spacing = recommend(nfe)
        counting, calls = counted(oracle)
        x, used = diffusion.sample(counting, z.shape, sampler=sampler, steps=steps, spacing=spacing, x_T=z,
                                   return_nfe=True)
        assert used <= nfe and used == len(calls)
        assert levels_for_nfe(sampler, nfe) == steps
        ddim = diffusion.sample(oracle, z.shape, sampler="ddim", steps=nfe, x_T=z)
        assert float((x - ref).pow(2).mean()) < float((ddim - ref).pow(2).mean()), nfe
    assert sorted(RECOMMENDED) == list(RECOMMENDED)


def test_edm_jump_spacing_is_one_step_then_karras_from_sigma_10(diffusion):
    t = diffusion.timesteps_for(12, "edm-jump")
    assert float(t[0]) == 999.0 and float(t[-1]) == 0.0 and bool((t[1:] < t[:-1]).all())
    a, s = diffusion.schedule.alpha_sigma(t)
    root = (s / a)[1:] ** (1 / 7)
    want = torch.linspace(10 ** (1 / 7), float(root[-1]), 11, dtype=torch.float64)
    torch.testing.assert_close(root, want, rtol=1e-10, atol=0)
    assert diffusion.timesteps_for(2, "edm-jump").tolist() == [999.0, 0.0]


@pytest.mark.parametrize("steps", [3, 12])
def test_logsnr_jump_spacing_is_one_step_then_equal_log_snr_steps_from_sigma_10(diffusion, steps):
    t = diffusion.timesteps_for(steps, "logsnr-jump")
    assert float(t[0]) == 999.0 and float(t[-1]) == 0.0 and bool((t[1:] < t[:-1]).all())
    a, s = diffusion.schedule.alpha_sigma(t)
    log_sigma = torch.log(s / a)[1:]
    sigma_min = math.exp(-0.5 * float(diffusion.schedule.lambdas[0]))
    want = torch.linspace(math.log(10.0), math.log(sigma_min), steps - 1, dtype=torch.float64)
    torch.testing.assert_close(log_sigma, want, rtol=0, atol=1e-9)
    assert diffusion.timesteps_for(2, "logsnr-jump").tolist() == [999.0, 0.0]


def test_budget_plan_for_the_command_line():
    from difflab.cli import _parser

    args = _parser().parse_args(["sample", "--run", "r", "--nfe", "10"])
    assert plan(args.nfe, args.sampler, args.steps, args.spacing) == recommend(10)
    assert plan(10, "heun", None, None) == ("heun", 5, None)
    assert plan(10, "dpm++3s", None, "edm") == ("dpm++3s", 4, "edm")
    assert plan(None, "ddim", 7, None) == ("ddim", 7, None)
    bad_plans = ((10, None, 5, None), (10, "ode", None, None), (10, "langevin", None, None),
                 (0, None, None, None))
    for bad in bad_plans:
        with pytest.raises(ValueError):
            plan(*bad)


def test_a_learned_variance_network_samples_by_its_eps_channels(oracle):
    """With ``variance="learned"`` the network has variance channels too; the ODE samplers read only
    ``eps``: the samples equal those of the eps-only network on the fixed-variance process."""
    learned = dl.GaussianDiffusion("linear", 1000, variance="learned")
    z = x_T(8)

    def model(x, t):
        return torch.cat([oracle(x, t), torch.zeros_like(x)], dim=1)

    for name in NEW:
        a = learned.sample(model, z.shape, sampler=name, steps=6, x_T=z)
        b = oracle.diffusion.sample(oracle, z.shape, sampler=name, steps=6, x_T=z)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_jump_spacing_is_its_ramp_when_the_top_level_is_at_the_jump():
    from difflab.processes import VEDiffusion

    d = VEDiffusion(sigma_min=0.01, sigma_max=10.0)
    for plain in ("edm", "logsnr"):
        jumped = d.timesteps_for(12, f"{plain}-jump")
        torch.testing.assert_close(jumped, d.timesteps_for(12, plain), rtol=0, atol=0)


def exact_restart_endpoint(diffusion, z, steps, restarts, seed, interval=(0.1, 2.0)):
    """The exact flow with Restart's jumps (Xu et al. 2023, Algorithm 1), closed form: flow to the first
    ``edm`` level at or below ``interval[0]``, ``restarts`` times add ``sqrt(top^2 - lo^2) z`` with the
    sampler's noise and flow back down, then flow to the last level and take ``x0_hat`` there."""
    lv = make_levels(diffusion.schedule, diffusion.timesteps_for(steps, "edm"))
    sig = [float(s) for s in lv.sigma_ve]
    lo = next(s for s in sig[1:] if s <= interval[0])

    def flow(x, a, b):
        return MU + (x - MU) * math.sqrt(S**2 + b**2) / math.sqrt(S**2 + a**2)

    x = flow(z / float(lv.alpha[0]), sig[0], lo)
    g = torch.Generator().manual_seed(seed)
    for _ in range(restarts):
        x = x + math.sqrt(interval[1] ** 2 - lo**2) * torch.randn(x.shape, generator=g, dtype=x.dtype)
        x = flow(x, interval[1], lo)
    x = flow(x, lo, sig[-1])
    return MU + S**2 * (x - MU) / (S**2 + sig[-1] ** 2)


def test_restart_converges_at_second_order_to_the_exact_restarted_flow(diffusion, oracle):
    z, errs, nfes = x_T(), [], []
    for steps in (20, 40):
        counting, calls = counted(oracle)
        x, nfe = diffusion.sample(counting, z.shape, sampler="restart", steps=steps, x_T=z, restarts=2,
                                  restart_steps=steps // 2, generator=torch.Generator().manual_seed(5),
                                  return_nfe=True)
        assert nfe == len(calls) == 2 * steps - 1 + 2 * 2 * (steps // 2)
        ref = exact_restart_endpoint(diffusion, z, steps, 2, seed=5)
        errs.append(float((x - ref).pow(2).mean().sqrt()))
        nfes.append(nfe)
    slope = math.log(errs[0] / errs[1]) / math.log(nfes[1] / nfes[0])
    assert abs(slope - 2) < 0.35 and errs[1] < 1e-3, (slope, errs)


def test_restart_without_restarts_is_heun_and_counts_as_documented(diffusion, oracle):
    z = x_T(16)
    a = diffusion.sample(oracle, z.shape, sampler="restart", steps=11, x_T=z, restarts=0)
    b = diffusion.sample(oracle, z.shape, sampler="heun", steps=11, x_T=z)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    counting, calls = counted(oracle)
    _, nfe = diffusion.sample(counting, z.shape, sampler="restart", steps=11, x_T=z, return_nfe=True)
    assert nfe == len(calls) == 2 * 11 - 1 + 2 * 9 and levels_for_nfe("restart", nfe) == 11
    with pytest.raises(ValueError, match="restart_sigmas"):
        diffusion.sample(oracle, z.shape, sampler="restart", steps=11, restart_sigmas=(2.0, 0.1))
