"""The LSGM bound of latent diffusion (difflab.vae.latent) on a linear autoencoder with Gaussian latents,
where -log p(x) and the posterior are known in closed form."""

import math

import torch

import difflab as dl
from difflab.oracles import GaussianOracle
from difflab.vae.elbo import gaussian_log_prob
from difflab.vae.latent import LatentDiffusion, latent_scale, lsgm_bound
from difflab.vae.vae import LatentVariableModel

D, d = 5, 3


class LinearModel(LatentVariableModel):
    """p(z) = N(0, diag v), p(x|z) = N(W z, s^2 I) with orthogonal columns in W, so the posterior
    p(z|x) = N(P W^T x / s^2, P), P = (diag 1/v + W^T W / s^2)^-1, is diagonal. The encoder is the exact
    posterior, optionally shifted and widened."""

    def __init__(self, shift=0.0, widen=0.0):
        super().__init__((D,), bins=256)
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(D, d, generator=g, dtype=torch.float64))
        self.w = torch.tensor([1.5, 0.8, 0.3], dtype=torch.float64)
        self.W, self.s2 = q * self.w, 0.2**2
        self.v = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
        self.post_var = 1.0 / (1.0 / self.v + self.w**2 / self.s2)
        self.shift, self.widen, self.latent_shape = shift, widen, (d,)

    def q(self, x):
        mean = self.post_var * (x @ self.W) / self.s2
        return mean + self.shift, (torch.log(self.post_var) + self.widen).expand_as(mean)

    def encoders(self):
        return [self.q]

    def decode(self, z):
        return z @ self.W.T, torch.full((z.shape[0], D), 0.5 * math.log(self.s2), dtype=torch.float64)

    def decoder_nll(self, x, z):
        return -gaussian_log_prob(x, z @ self.W.T, torch.full_like(x, math.log(self.s2)))

    def log_px(self, x):
        cov = self.W @ torch.diag(self.v) @ self.W.T + self.s2 * torch.eye(D, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(torch.zeros(D, dtype=torch.float64), cov).log_prob(x)

    def latent_nll(self, z):
        return -gaussian_log_prob(z, torch.zeros_like(z), torch.log(self.v).expand_as(z))

    def sample_x(self, n, g):
        z = torch.randn(n, d, generator=g, dtype=torch.float64) * self.v.sqrt()
        return z @ self.W.T + math.sqrt(self.s2) * torch.randn(n, D, generator=g, dtype=torch.float64)


def test_lsgm_bound_is_exact_with_the_posterior_and_its_gap_is_the_kl():
    g = torch.Generator().manual_seed(1)
    exact = LinearModel()
    x = exact.sample_x(6, g)
    truth = -exact.log_px(x)
    n = 20_000
    xs = x.repeat(n, 1)
    b = lsgm_bound(xs, exact.q, exact.decoder_nll, exact.latent_nll, g).total.reshape(n, 6)
    se = b.std(0) / math.sqrt(n)
    assert bool(((b.mean(0) - truth).abs() < 4 * se).all())
    assert bool((se < 0.02).all())  # a sharp check: the bound's spread is small
    wrong = LinearModel(shift=0.4, widen=0.7)
    b = lsgm_bound(xs, wrong.q, wrong.decoder_nll, wrong.latent_nll, g).total.reshape(n, 6)
    mq, lq = wrong.q(x)
    mp, lp = exact.q(x)
    kl = 0.5 * (lp - lq + (lq.exp() + (mq - mp) ** 2) / lp.exp() - 1).sum(1)  # KL(q || p(z|x))
    assert bool((kl > 0.3).all())
    assert bool(((b.mean(0) - truth - kl).abs() < 4 * b.std(0) / math.sqrt(n)).all())


def test_latent_diffusion_bound_with_exact_denoiser_is_an_upper_bound_close_to_log_px():
    """The latent model is continuous-time VDM (linear log-SNR from 13.3 to -5) on s z with the exact
    denoiser of the latents' Gaussian. With the exact denoiser its bound is tight in expectation over
    the data (not for each z: the bound's integrand is ||x - E[x|z_t]||^2), so averaged over latents
    drawn from p(z), and over x drawn from the model, the bounds match the closed forms. (DDPM's
    T = 1000 linear chain would not: its log-SNR steps of up to 0.8 at the data end overcount the
    integral by about 0.5 nats/dim, docs/likelihood.md.)"""
    g = torch.Generator().manual_seed(2)
    ae = LinearModel()
    z = torch.randn(4000, d, generator=g, dtype=torch.float64) * ae.v.sqrt()
    scale = latent_scale(z)
    assert abs(scale - 1 / math.sqrt(float(ae.v.mean()))) < 0.03  # LDM's 1 / std(z)
    diffusion = dl.VDMDiffusion("linear")
    oracle = GaussianOracle(diffusion, 0.0, scale * ae.v.sqrt())
    ld = LatentDiffusion(diffusion, ae, scale)
    zz = z[:64]
    lat = ld.latent_nll(oracle, zz, generator=g, t_samples=64)
    gap = (lat - ae.latent_nll(zz)) / d  # nats per latent dimension
    assert abs(float(gap.mean())) < 3 * float(gap.std()) / 8
    x = ae.sample_x(64, g)
    truth = -ae.log_px(x)
    b = ld.bound_terms(oracle, x, generator=g, t_samples=64)
    diff = (b.total - truth) / D
    assert abs(float(diff.mean())) < 3 * float(diff.std()) / 8
