"""Continuous-time VDM (difflab.processes.vdm) against independent computations.

The oracle throughout is Gaussian data ``x ~ N(mu, s^2 I)`` with its exact noise predictor
``eps_hat(z) = E[eps | z] = sigma (z - alpha mu) / (alpha^2 s^2 + sigma^2)``. With ``u = e^gamma``,
``a = s^2`` and ``E||eps - eps_hat||^2 = a^2/(a+u)^2 + (x-mu)^2 u/(a+u)^2`` per dimension, the
continuous-time loss ``0.5 int gamma'(t) E||eps - eps_hat||^2 dt = 0.5 int_{gamma_0}^{gamma_1} ... dgamma``
has the closed form (``du = u dgamma``)

    L_inf(x) = 0.5 sum_dims [log(u/(a+u)) + a/(a+u) - (x-mu)^2/(a+u)]_{u = e^gamma_0}^{e^gamma_1},

whose mean over the data is ``0.5 log((1 + a e^-gamma_0)/(1 + a e^-gamma_1))`` per dimension: the same
for every schedule with these endpoints.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from difflab.oracles import GaussianOracle
from difflab.processes.vdm import VDMDiffusion, VDMModel, find_vdm_model
from difflab.processes.vdm.diffusion import categorical_decoder_nll
from difflab.processes.vdm.schedule import CosineSchedule, LearnedSchedule, LinearSchedule, make_schedule
from difflab.samplers import time_of_log_snr

LN2 = math.log(2.0)
MU, S = 0.3, 0.5


@pytest.fixture(autouse=True)
def one_thread():
    """These tests compute on small tensors, where intra-op threads only add synchronisation (on a busy
    machine an elementwise op on 4096 numbers took 8 ms with 2 threads and 9 us with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def perturbed_learned(gamma_min=-13.3, gamma_max=5.0, features=64, seed=0, learn_endpoints=True):
    """A learned schedule far from linear (random weights of order 1), so the tests are not vacuous."""
    torch.manual_seed(seed)
    sched = LearnedSchedule(gamma_min, gamma_max, learn_endpoints=learn_endpoints, features=features)
    with torch.no_grad():
        sched.w1.fill_(1.0)
        sched.b1.fill_(0.0)
        sched.w2.normal_(0.0, 8.0)
        sched.b2.normal_(0.0, 4.0)
        sched.w3.normal_(0.0, 3.0 * features)
    return sched


def exact_diffusion_loss(x: torch.Tensor, g0: float, g1: float, mu=MU, s=S) -> torch.Tensor:
    """``L_inf(x)`` in nats ``[B]`` with the exact eps predictor (module docstring)."""
    a = s * s
    x = x.double()

    def antiderivative(u: float) -> torch.Tensor:
        return math.log(u / (a + u)) + a / (a + u) - (x - mu) ** 2 / (a + u)

    return 0.5 * (antiderivative(math.exp(g1)) - antiderivative(math.exp(g0))).sum(1)


class GammaOracle(nn.Module):
    """The exact eps predictor as a network of VDMModel's noise input ``c = 1000 (gamma - gmin)/(gmax -
    gmin)``: ``gamma`` is recovered from ``c``, then ``eps_hat = sigma (z - alpha mu)/(alpha^2 s^2 +
    sigma^2)``."""

    def __init__(self, gamma_min=-13.3, gamma_max=5.0, mu=MU, s=S):
        super().__init__()
        self.gmin, self.gmax, self.mu, self.s = gamma_min, gamma_max, mu, s

    def forward(self, z, c):
        gamma = (self.gmin + c.double() * (self.gmax - self.gmin) / 1000.0).reshape(-1, 1)
        a2, s2 = torch.sigmoid(-gamma), torch.sigmoid(gamma)
        eps = s2.sqrt() * (z.double() - a2.sqrt() * self.mu) / (a2 * self.s**2 + s2)
        return eps.to(z.dtype)


# ---------------------------------------------------------------------------------------- schedules
def test_learned_schedule_is_monotone_and_hits_its_endpoints():
    sched = perturbed_learned(-10.0, 7.0)
    with torch.no_grad():
        sched.gamma_0.fill_(-9.0)
        sched.span.fill_(-15.5)  # gamma_1 = gamma_0 + |span| = 6.5
    t = torch.linspace(0, 1, 20001, dtype=torch.float64)
    with torch.no_grad():
        gamma = sched(t)
        linear = -9.0 + 15.5 * t
    assert float(gamma[0]) == pytest.approx(-9.0, abs=1e-12)
    assert float(gamma[-1]) == pytest.approx(6.5, abs=1e-12)
    assert bool((gamma[1:] > gamma[:-1]).all())
    assert float((gamma - linear).abs().max()) > 1.0  # genuinely non-linear, so the check means something


@pytest.mark.parametrize("kind", ["linear", "cosine", "learned"])
def test_gamma_derivative_matches_autograd_and_finite_differences(kind):
    sched = perturbed_learned(-12.0, 6.0) if kind == "learned" else make_schedule(kind, -12.0, 6.0)
    t = torch.linspace(0.001, 0.999, 41, dtype=torch.float64, requires_grad=True)
    gamma, dgamma, _ = sched.evaluate(t)
    (auto,) = torch.autograd.grad(gamma.sum(), t)
    torch.testing.assert_close(dgamma.detach(), auto, rtol=1e-10, atol=1e-10)
    h = 1e-6
    with torch.no_grad():
        fd = (sched(t + h) - sched(t - h)) / (2 * h)
    torch.testing.assert_close(dgamma.detach(), fd, rtol=1e-6, atol=1e-6)


def test_cosine_schedule_is_the_cosine_alpha_and_hits_its_endpoints():
    # with endpoints far out, alpha_t = cos(pi t / 2): the cosine schedule without offset
    wide = CosineSchedule(-40.0, 40.0)
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    with torch.no_grad():
        alpha2 = torch.sigmoid(-wide(t))
    torch.testing.assert_close(alpha2, torch.cos(0.5 * math.pi * t) ** 2, rtol=0, atol=1e-8)
    sched = CosineSchedule(-13.3, 5.0)
    with torch.no_grad():
        ends = sched(torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(ends, torch.tensor([-13.3, 5.0], dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["cosine", "learned"])
def test_model_time_inverts_the_continuous_log_snr_exactly(kind):
    sched = perturbed_learned() if kind == "learned" else make_schedule(kind)
    view = VDMDiffusion(sched).schedule
    lam = torch.tensor([13.29, 12.0, 8.0, 0.0, -4.99], dtype=torch.float64)
    tau = time_of_log_snr(view, lam)  # the samplers' entry point defers to the view's bisection
    torch.testing.assert_close(view.log_snr(tau), lam, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="outside the schedule's range"):
        time_of_log_snr(view, torch.tensor([14.0]))


# ---------------------------------------------------------------------------------------- the decoder
@pytest.mark.parametrize("bins", [2, 17, 256])
def test_categorical_decoder_matches_a_softmax_over_the_whole_grid(bins):
    g = torch.Generator().manual_seed(bins)
    levels = torch.linspace(-1, 1, bins, dtype=torch.float64)
    k = torch.randint(0, bins, (300,), generator=g)
    x = levels[k].reshape(100, 3)
    for gamma_0 in (-13.3, -7.0, -2.0, 1.5):
        g0 = torch.tensor(gamma_0, dtype=torch.float64)
        y = x + math.exp(gamma_0 / 2) * torch.randn(x.shape, generator=g, dtype=torch.float64)
        nll = categorical_decoder_nll(x, y, g0, bins)
        logp = torch.log_softmax(-0.5 * (y.unsqueeze(-1) - levels) ** 2 / math.exp(gamma_0), -1)
        want = -logp.gather(-1, k.reshape(100, 3, 1)).squeeze(-1)
        torch.testing.assert_close(nll, want, rtol=1e-9, atol=1e-9)
        # a distribution over the grid: the probabilities of all levels sum to one
        total = sum(
            torch.exp(-categorical_decoder_nll(levels[j].expand(5), y[:5, 0], g0, bins)) for j in range(bins)
        )
        torch.testing.assert_close(total, torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="do not lie on the grid"):
        categorical_decoder_nll(x + 0.4 * 2 / (bins - 1), y, g0, bins)


# ---------------------------------------------------------------------------------------- the bound
def test_bound_on_gaussian_data_matches_the_closed_form_and_the_entropy():
    D, N, K = 3, 3000, 8
    diffusion = VDMDiffusion("linear", learn_endpoints=False)
    g = torch.Generator().manual_seed(0)
    x = MU + S * torch.randn(N, D, generator=g)
    oracle = GaussianOracle(diffusion, MU, S)
    terms = diffusion.vlb_terms(oracle, x, decoder="gaussian", t_samples=K, generator=g)
    g0, g1 = -13.3, 5.0
    bits = 1.0 / (D * LN2)
    # the diffusion part: Monte Carlo over (t, eps) against the closed form at the same x
    exact = exact_diffusion_loss(x, g0, g1) * bits
    err = terms.diffusion - exact
    se = float(err.std()) / math.sqrt(N)
    assert abs(float(err.mean())) < 4 * se, (float(terms.diffusion.mean()), float(exact.mean()), se)
    # the prior is exact; the Gaussian decoder's mean is 0.5 (log 2 pi + gamma_0 + 1) per dimension
    a1, s1 = torch.sigmoid(torch.tensor(-g1)), torch.sigmoid(torch.tensor(g1))
    prior = 0.5 * (a1 * x.double() ** 2 + s1 - torch.log(s1) - 1).sum(1) * bits
    torch.testing.assert_close(terms.prior, prior.double(), rtol=1e-6, atol=1e-9)
    dec = 0.5 * (math.log(2 * math.pi) + g0 + 1) / LN2
    assert abs(float(terms.decoder.mean()) - dec) < 4 * float(terms.decoder.std()) / math.sqrt(N)
    # the expected bound (closed form) is within 1e-3 nats/dim of the true -E log p(x), and the Monte
    # Carlo bound matches it
    a = S * S
    expected = (0.5 * (float(a1) * (MU**2 + a) + float(s1) - math.log(float(s1)) - 1)
                + 0.5 * math.log((1 + a * math.exp(-g0)) / (1 + a * math.exp(-g1)))
                + 0.5 * (math.log(2 * math.pi) + g0 + 1))  # nats/dim
    entropy = 0.5 * math.log(2 * math.pi * math.e * a)
    assert 0 < expected - entropy < 1e-3
    total = terms.total * LN2
    assert abs(float(total.mean()) - expected) < 4 * float(total.std()) / math.sqrt(N)


def test_expected_diffusion_loss_is_the_same_for_every_schedule_between_the_same_endpoints():
    D, N, K = 2, 1000, 64
    g = torch.Generator().manual_seed(1)
    x = MU + S * torch.randn(N, D, generator=g)
    exact = exact_diffusion_loss(x, -13.3, 5.0) / (D * LN2)  # per example: the same for every schedule
    errors = {}
    for kind in ("linear", "cosine", "learned"):
        if kind == "learned":
            sched = perturbed_learned(learn_endpoints=False)
        else:
            sched = make_schedule(kind, learn_endpoints=False)
        diffusion = VDMDiffusion(sched)
        oracle = VDMModel(GammaOracle(), sched)  # eps_hat as a function of gamma, as VDMModel feeds it
        terms = diffusion.vlb_terms(oracle, x, decoder="gaussian", t_samples=K, generator=g)
        err = terms.diffusion - exact
        errors[kind] = err
        assert abs(float(err.mean())) < 4 * float(err.std()) / math.sqrt(N), (kind, float(err.mean()))
    # and against each other (independent Monte Carlo draws): relative differences of a few percent at most
    for a, b in (("linear", "cosine"), ("linear", "learned"), ("cosine", "learned")):
        diff = errors[a] - errors[b]
        assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(N), (a, b, float(diff.mean()))
        assert abs(float(diff.mean())) < 0.03 * float(exact.mean())


def test_antithetic_times_lower_the_variance_of_the_batch_loss():
    D, B, R = 16, 32, 300  # many dimensions: the spread over t dominates that over eps
    g = torch.Generator().manual_seed(2)
    results = {}
    for antithetic in (True, False):
        diffusion = VDMDiffusion("linear", learn_endpoints=False, antithetic=antithetic)
        oracle = GaussianOracle(diffusion, MU, S)
        batch_means, exact = [], []
        for _ in range(R):
            x = MU + S * torch.randn(B, D, generator=g)
            terms = diffusion.loss_terms(oracle, x, generator=g)
            batch_means.append(float(terms.diffusion.mean()))
            exact.append(float(exact_diffusion_loss(x, -13.3, 5.0).mean()) / (D * LN2))
        err = torch.tensor(batch_means) - torch.tensor(exact)
        results[antithetic] = err
        assert abs(float(err.mean())) < 4 * float(err.std()) / math.sqrt(R)
    ratio = float(results[True].var() / results[False].var())
    assert ratio < 0.5, ratio


def test_sample_t_is_stratified_and_on_the_model_clock():
    diffusion = VDMDiffusion("linear", timesteps=1000)
    tau = diffusion.sample_t(8, torch.Generator().manual_seed(0))
    t = torch.sort(tau / 999).values
    assert tau.dtype == torch.float64 and float(tau.min()) >= 0 and float(tau.max()) < 999
    gaps = torch.diff(t)
    torch.testing.assert_close(gaps[gaps > 0.05], torch.full_like(gaps[gaps > 0.05], 1 / 8))


# ---------------------------------------------------------------------------------------- the gradient
class TinyNet(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim + 1, 16), nn.Linear(16, dim)

    def forward(self, z, c):
        return self.fc2(torch.tanh(self.fc1(torch.cat([z, (c.to(z.dtype) / 1000).unsqueeze(1)], 1))))


def reference_terms(model: VDMModel, x0, tau, eps, eps0, bins):
    """The bound's parts in bits/dim, written out from the equations, with ``gamma'`` by autograd."""
    sched, D = model.schedule, x0.shape[1]
    t = (tau / 999).clone().requires_grad_(True)
    gamma = sched(t)
    (dgamma,) = torch.autograd.grad(gamma.sum(), t, create_graph=True)
    alpha, sigma = torch.sigmoid(-gamma).sqrt()[:, None], torch.sigmoid(gamma).sqrt()[:, None]
    c = 1000 * (gamma - sched.gamma_min) / (sched.gamma_max - sched.gamma_min)
    eps_hat = model.net(alpha * x0 + sigma * eps, c)
    diff = 0.5 * dgamma * ((eps - eps_hat) ** 2).sum(1)
    g0, g1 = sched(torch.tensor(0.0, dtype=torch.float64)), sched(torch.tensor(1.0, dtype=torch.float64))
    prior = 0.5 * (torch.sigmoid(-g1) * x0**2 + torch.sigmoid(g1) - torch.log(torch.sigmoid(g1)) - 1).sum(1)
    levels = torch.linspace(-1, 1, bins, dtype=torch.float64)
    y = x0 + torch.exp(0.5 * g0) * eps0
    logp = torch.log_softmax(-0.5 * (y.unsqueeze(-1) - levels) ** 2 * torch.exp(-g0), -1)
    k = torch.round((x0 + 1) * (bins - 1) / 2).long()
    dec = -logp.gather(-1, k.unsqueeze(-1)).squeeze(-1).sum(1)
    return [v / (D * LN2) for v in (prior, diff, dec)]


def test_schedule_shape_gets_the_variance_gradient_the_rest_the_bound_gradient():
    D, B, bins = 3, 16, 5
    sched = perturbed_learned(-6.0, 4.0, features=8, seed=3)
    torch.manual_seed(4)
    model = VDMModel(TinyNet(D), sched).double()
    diffusion = VDMDiffusion(sched, bins=bins)
    g = torch.Generator().manual_seed(5)
    x0 = torch.linspace(-1, 1, bins, dtype=torch.float64)[torch.randint(0, bins, (B, D), generator=g)]
    tau = (torch.rand(B, generator=g) * 999).float().double()
    eps = torch.randn(B, D, generator=g, dtype=torch.float64)
    eps0 = torch.randn(B, D, generator=g, dtype=torch.float64)

    shape = [sched.w1, sched.b1, sched.w2, sched.b2, sched.w3]
    ends = [sched.gamma_0, sched.span]
    net = list(model.net.parameters())
    params = shape + ends + net

    # under test: the loss's backward pass, through a kwargs-transparent wrapper as the trainer's
    loss = diffusion.loss(functools.partial(model), x0, t=tau, noise=eps, noise_0=eps0)
    got = torch.autograd.grad(loss.mean(), params)

    prior, diff, dec = reference_terms(model, x0, tau, eps, eps0, bins)
    torch.testing.assert_close(loss, (prior + diff + dec).detach(), rtol=1e-6, atol=1e-8)
    variance = torch.autograd.grad((diff**2).mean(), shape, retain_graph=True)
    bound = torch.autograd.grad((prior + diff + dec).mean(), params)
    for p, a, b in zip(shape, got[: len(shape)], variance):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9, msg=lambda m, p=p: f"shape grad: {m}")
    for a, b in zip(got[len(shape):], bound[len(shape):]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)
    # the two gradients of the shape differ: the hook is doing something
    assert float((got[2] - bound[2]).abs().max()) > 1e-3 * float(bound[2].abs().max())


# ---------------------------------------------------------------------------------------- sampling
def chain_moments(alpha, sigma, sampler: str) -> tuple[float, float]:
    """Mean and variance (per dimension) of what ``sampler`` returns for the Gaussian oracle, from
    ``z ~ N(0, 1)`` through the levels ``(alpha_i, sigma_i)``: each step is affine in ``z`` plus Gaussian
    noise, with ``x0_hat = A z + b``, ``A = alpha S^2/(alpha^2 S^2 + sigma^2)``, ``b = MU (1 - A alpha)``.
    Ancestral: ``q(z_s | z_t, x0_hat)`` (VDM eq. 5-6 with ``alpha_{t|s} = alpha_t/alpha_s``); DDIM:
    ``alpha_s x0_hat + sigma_s eps_hat``. The last step lands on ``x0_hat``."""
    m, v = 0.0, 1.0
    alpha, sigma = [float(a) for a in alpha] + [1.0], [float(s) for s in sigma] + [0.0]
    for i in range(len(alpha) - 1):
        a_t, s_t, a_s, s_s = alpha[i], sigma[i], alpha[i + 1], sigma[i + 1]
        A = a_t * S**2 / (a_t**2 * S**2 + s_t**2)
        b = MU * (1 - A * a_t)
        if sampler == "ancestral":
            a_ts = a_t / a_s
            s_ts2 = s_t**2 - a_ts**2 * s_s**2
            c0, ct, noise = a_s * s_ts2 / s_t**2, a_ts * s_s**2 / s_t**2, s_s**2 * s_ts2 / s_t**2
        else:  # x_s = a_s (A z + b) + s_s (z - a_t (A z + b)) / s_t
            c0, ct, noise = a_s - s_s * a_t / s_t, s_s / s_t, 0.0
        gain, shift = c0 * A + ct, c0 * b
        m, v = gain * m + shift, gain**2 * v + noise
    return m, v


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_sampling_the_gaussian_oracle_reproduces_its_moments(sampler):
    sched = perturbed_learned(learn_endpoints=False)
    diffusion = VDMDiffusion(sched)
    tau = diffusion.timesteps_for(100)
    m, v = chain_moments(*diffusion.schedule.alpha_sigma(tau), sampler)
    # the chain is close to N(MU, S^2): its mean misses by about S alpha_1 MU = 0.012, since it starts
    # from N(0, 1) and not from q(z_1) = N(alpha_1 MU, ...) (gamma_1 = 5); 100 ancestral steps lose 5% of
    # the standard deviation (1000 steps: 0.5%)
    assert abs(m - MU) < 0.02 and abs(math.sqrt(v) / S - 1) < 0.06, (m, math.sqrt(v))
    g = torch.Generator().manual_seed(6)
    n = 8000
    for model in (GaussianOracle(diffusion, MU, S), VDMModel(GammaOracle(), sched)):
        x = diffusion.sample(model, (n // 2, 2), sampler=sampler, steps=100, generator=g)
        assert abs(float(x.mean()) - m) < 4 * math.sqrt(v / n), (float(x.mean()), m)
        assert abs(float(x.var()) / v - 1) < 4 * math.sqrt(2 / n), (float(x.var()), v)


def test_ode_view_gives_the_exact_eps_at_a_log_snr():
    sched = make_schedule("cosine", -12.0, 6.0, learn_endpoints=False)
    diffusion = VDMDiffusion(sched)
    view = diffusion.ode_view(VDMModel(GammaOracle(-12.0, 6.0), sched))
    assert view.lambda_start == pytest.approx(12.0, abs=1e-6)
    assert view.lambda_end == pytest.approx(-6.0, abs=1e-6)
    z = torch.randn(50, 2, dtype=torch.float64, requires_grad=True)
    for lam in (11.9, 3.0, -5.0):
        a2, s2 = torch.sigmoid(torch.tensor(lam)), torch.sigmoid(torch.tensor(-lam))
        want = s2.sqrt() * (z - a2.sqrt() * MU) / (a2 * S**2 + s2)
        torch.testing.assert_close(view.eps(z, lam), want, rtol=1e-5, atol=1e-6)
    assert view.eps(z, 0.0).sum().requires_grad  # differentiable in x


def test_probability_flow_likelihood_through_the_ode_view_is_the_exact_gaussian_flow():
    """For Gaussian data the probability-flow ODE is affine: it maps ``q(z_0) = N(alpha_0 MU, v_0)`` onto
    ``q(z_1) = N(alpha_1 MU, v_1)`` (``v = alpha^2 S^2 + sigma^2``), so ``z_1 = alpha_1 MU + sqrt(v_1/v_0)
    (x - alpha_0 MU)`` and ``-log p(x) = -log N(z_1; 0, I) - (D/2) log(v_1/v_0)``."""
    pytest.importorskip("torchdiffeq")
    ode_likelihood = pytest.importorskip("difflab.ode_likelihood")
    sched = perturbed_learned(-10.0, 6.0, learn_endpoints=False)
    diffusion = VDMDiffusion(sched)
    model = VDMModel(GammaOracle(-10.0, 6.0), sched).eval()
    x = MU + S * torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    nll = ode_likelihood.ode_nll(diffusion, model, x.float(), rtol=1e-7, atol=1e-7)
    (a0, s0), (a1, s1) = (
        (torch.sigmoid(torch.tensor(-g)).item(), torch.sigmoid(torch.tensor(g)).item()) for g in (-10.0, 6.0)
    )
    v0, v1 = a0 * S**2 + s0, a1 * S**2 + s1
    z1 = math.sqrt(a1) * MU + math.sqrt(v1 / v0) * (x.float().double() - math.sqrt(a0) * MU)
    want = 0.5 * (z1**2).sum(1) + math.log(2 * math.pi) - math.log(v1 / v0)
    torch.testing.assert_close(nll, want, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------- wiring
def test_model_carries_its_schedule_through_wrappers_and_state_dict():
    sched = LearnedSchedule(features=4)
    model = VDMModel(TinyNet(2), sched)
    assert find_vdm_model(model) == (model, True)
    assert find_vdm_model(functools.partial(model, y=None)) == (model, True)
    assert find_vdm_model(lambda x, t: model(x, t)) == (model, False)
    keys = set(model.state_dict())
    assert {"schedule.w2", "schedule.gamma_0", "schedule.span", "net.fc1.weight"} <= keys
    assert {id(p) for p in sched.parameters()} <= {id(p) for p in model.parameters()}
    fixed = LinearSchedule(learn_endpoints=False)
    assert not list(fixed.parameters()) and {"gamma_0", "span"} <= set(fixed.state_dict())


def test_user_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="gamma_min < gamma_max"):
        LinearSchedule(5.0, -13.3)
    with pytest.raises(ValueError, match="unknown VDM schedule 'sigmoid'"):
        make_schedule("sigmoid")
    with pytest.raises(ValueError, match="unknown variance 'learned'"):
        VDMDiffusion("linear", variance="learned")
    with pytest.raises(ValueError, match="bins must be None"):
        VDMDiffusion("linear", bins=1)
    diffusion = VDMDiffusion("linear", timesteps=100)
    with pytest.raises(ValueError, match=r"model time 120.0 is out of range: it must lie in \[0, 99\]"):
        diffusion.q_sample(torch.zeros(2, 3), torch.tensor([1.0, 120.0]))
    with pytest.raises(ValueError, match="the data do not lie on the grid of bins=17"):
        off_grid = torch.full((2, 3), 0.05, dtype=torch.float64)
        VDMDiffusion("linear", learn_endpoints=False, bins=17).loss(TinyNet(3).double(), off_grid)
    with pytest.raises(ValueError, match="timesteps=1000, this diffusion on timesteps=100"):
        diffusion.sample(VDMModel(TinyNet(3), LinearSchedule()), (2, 3), steps=5)
    with pytest.raises(ValueError, match="'learned' schedule has trainable parameters.*VDMModel"):
        VDMDiffusion("learned").loss(TinyNet(3), torch.zeros(2, 3))


# ---------------------------------------------------------------------------------------- end to end
VDM_TOY = [
    "--set", "diffusion.process=vdm", "--set", "model.hidden=32", "--set", "model.depth=1",
    "--set", "model.emb_dim=16", "--set", "train.steps=12", "--set", "train.batch_size=64",
    "--set", "train.ckpt_every=6", "--set", "train.max_minutes=0", "--set", "train.warmup=2",
    "--set", "data.n_train=500", "--set", "data.n_test=100", "--set", "sample.n=200",
    "--set", "eval.bound_n=40",
]


def test_cli_trains_samples_and_bounds_a_vdm_run(tmp_path, capsys):
    import json

    from difflab.cli import main
    from difflab.runs import load_run
    from difflab.train import load_checkpoint

    run = tmp_path / "vdm"
    assert main(["train", "--config", "toy2d", "--run", str(run), "--no-progress", *VDM_TOY]) == 0
    state = load_checkpoint(run)
    assert {"schedule.w2", "schedule.gamma_0", "schedule.span", "net.inp.weight"} <= set(state["model"])
    cfg, diffusion, model, _ = load_run(run)
    assert isinstance(diffusion, VDMDiffusion) and diffusion.gamma_schedule is model.schedule
    # the schedule trained with the rest: its endpoints moved off their initial values
    assert float(model.schedule.gamma_0.detach()) != pytest.approx(-13.3, abs=1e-6)
    assert main(["sample", "--run", str(run), "--sampler", "ddim", "--steps", "10", "--no-progress"]) == 0
    assert '"nfe": 10' in capsys.readouterr().out
    assert main(["eval", "bpd", "--run", str(run), "--no-progress"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    parts = metrics["bound_parts_nats_per_dim"]
    assert metrics["bound_points"] == 40 and math.isfinite(metrics["bound_nats_per_dim"])
    assert sum(parts.values()) == pytest.approx(metrics["bound_nats_per_dim"], rel=1e-9)


def test_cli_vdm_on_digits_with_fourier_features(tmp_path, capsys):
    import json

    from difflab.cli import main

    run = tmp_path / "digits"
    opts = ["--set", "diffusion.process=vdm", "--set", "train.steps=20", "--set", "train.max_minutes=0",
            "--set", "train.batch_size=32", "--set", "model.fourier_features=[7, 8]",
            "--set", "eval.bound_n=20"]
    assert main(["train", "--config", "digits", "--run", str(run), "--no-progress", *opts]) == 0
    assert main(["sample", "--run", str(run), "--steps", "50", "--n", "16", "--no-progress"]) == 0
    assert main(["eval", "bpd", "--run", str(run), "--no-progress"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert math.isfinite(metrics["bound_bits_per_dim"]) and metrics["bound_points"] == 20


def test_weight_decay_spares_the_learned_schedule(tmp_path):
    """One AdamW step from the same state with and without decoupled decay: the network's weights differ
    by exactly ``lr * wd * p`` (Loshchilov & Hutter), the schedule's parameters not at all."""
    from difflab.config import TrainConfig
    from difflab.data import make_toy2d
    from difflab.train import Trainer
    from difflab.train.trainer import param_groups

    lr, wd = 1e-2, 5.0
    after = {}
    for decay in (0.0, wd):
        torch.manual_seed(0)
        model = VDMModel(TinyNet(2), perturbed_learned(features=8))
        start = {k: v.detach().clone() for k, v in model.named_parameters()}
        cfg = TrainConfig(steps=1, batch_size=32, lr=lr, warmup=0, lr_schedule="constant",
                          weight_decay=decay)
        data = make_toy2d("moons", 64, seed=0)
        Trainer(VDMDiffusion("learned"), model, data, cfg, tmp_path / str(decay)).train_step(0.0)
        after[decay] = {k: v.detach().clone() for k, v in model.named_parameters()}
    names = set(start)
    sched_names = {k for k in names if k.startswith("schedule.")}
    assert sched_names and names - sched_names
    for k in names:
        expected = -lr * wd * start[k] if k not in sched_names else torch.zeros_like(start[k])
        torch.testing.assert_close(after[wd][k] - after[0.0][k], expected, rtol=1e-4, atol=1e-6)
    # the groups: one when there is no decay, the schedule in a decay-free group otherwise
    assert len(param_groups(model, 0.0)) == 1
    groups = param_groups(model, wd)
    assert [g["weight_decay"] for g in groups] == [wd, 0.0]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.schedule.parameters()}
