"""The evidence lower bound of a (hierarchical) VAE, term by term, and the importance-weighted bound.

A Markovian hierarchical VAE with ``L`` latent levels ``z_1 .. z_L`` (``L = 1``: the VAE of Kingma &
Welling 2014) has the encoder ``q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1})`` and the generative model
``p(z_L) p(z_{L-1}|z_L) ... p(z_1|z_2) p(x|z_1)`` with ``p(z_L) = N(0, I)``. Its ELBO (the notes'
Markovian HVAE bound; Sønderby et al. 2016, eq. 4; Vahdat & Kautz 2020, eq. 2) is

    -log p(x) <= E_q[-log p(x|z_1)]                                       reconstruction
                 + sum_{l<L} E_q[log q(z_l|z_{l-1}) - log p(z_l|z_{l+1})]  consistency of level l
                 + E_q[KL(q(z_L|z_{L-1}) || N(0, I))]                      prior matching        (1)

with ``z_0 = x``. For ``L = 1`` it is the VAE's ``-ELBO = E_q[-log p(x|z)] + KL(q(z|x) || N(0, I))``
(Kingma & Welling 2014, eq. 10), with the Gaussian KL in closed form (their appendix B):

    KL(N(mu, sigma^2) || N(0, 1)) = 0.5 (mu^2 + sigma^2 - log sigma^2 - 1).                   (2)

Expectations are estimated with one reparameterized draw ``z = mu + sigma * eps``, ``eps ~ N(0, I)``
(their eq. 4), so the gradient flows through ``mu`` and ``sigma``; the consistency terms take
``E[log q(z_l|z_{l-1})] = -H[q(z_l|z_{l-1})]`` in closed form given ``z_{l-1}``.

The importance-weighted bound (Burda et al. 2016, eq. 8) with ``K`` draws ``z^(k) ~ q(z|x)``,

    L_K = E[log (1/K) sum_k w_k],   w_k = p(x, z^(k)) / q(z^(k)|x),                          (3)

is ``L_1 = ELBO <= L_K <= L_{K+1} <= log p(x)`` and tends to ``log p(x)`` as ``K -> inf``.

Every conditional is a callable returning ``(mean, log_var)`` of a diagonal Gaussian.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..gaussian import discretized_gaussian_log_likelihood, gaussian_log_density, normal_kl

GaussianConditional = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
DecoderNLL = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, z_1) -> -log p(x|z_1), nats [B]

__all__ = [
    "ELBOTerms",
    "discretized_decoder_nll",
    "gaussian_entropy",
    "gaussian_log_prob",
    "iwae_bound",
    "kl_standard_normal",
    "markov_elbo_terms",
    "markov_log_weights",
    "reparameterize",
]


def _per_example(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).sum(1)


def kl_standard_normal(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, e^log_var) || N(0, I))`` in nats per example ``[B]``, eq. (2)."""
    zero = torch.zeros_like(mean)
    return _per_example(normal_kl(mean, log_var, zero, zero))


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """``log N(z; mean, e^log_var)`` summed over dimensions, nats ``[B]``."""
    return _per_example(gaussian_log_density(z, mean, log_var))


def gaussian_entropy(log_var: torch.Tensor) -> torch.Tensor:
    """``H[N(mean, e^log_var)] = 0.5 sum (log(2 pi e) + log_var)``, nats ``[B]``."""
    return _per_example(0.5 * (math.log(2 * math.pi) + 1.0 + log_var))


def reparameterize(mean: torch.Tensor, log_var: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``z = mean + exp(log_var / 2) * eps`` (Kingma & Welling 2014, eq. 4): a draw of ``q`` that is
    differentiable in its parameters."""
    return mean + torch.exp(0.5 * log_var) * eps


def discretized_decoder_nll(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, bins: int
) -> torch.Tensor:
    """``-log p(x|z)`` in nats ``[B]`` of a factorised Gaussian decoder ``N(mean, e^(2 log_scale))``
    discretized on the data's grid of ``bins`` levels over ``[-1, 1]``, as the diffusion decoder
    ``L_0`` (DDPM eq. 13, :func:`difflab.gaussian.discretized_gaussian_log_likelihood`): a probability
    of the discrete data, so the ELBO bounds ``-log P(x)`` and compares with the diffusion bounds."""
    return -_per_example(discretized_gaussian_log_likelihood(x, mean, 2.0 * log_scale, bins))


@dataclass
class ELBOTerms:
    """The parts of ``-ELBO`` (1) in nats, each ``[B]``: ``reconstruction`` ``E[-log p(x|z_1)]`` and
    ``kl`` ``[B, L]``, column ``l`` the term of level ``l + 1`` (the last column is the prior
    matching KL of ``z_L``; for ``L = 1`` the only column is ``KL(q(z|x) || N(0, I))``)."""

    reconstruction: torch.Tensor
    kl: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        """``-ELBO`` in nats ``[B]``."""
        return self.reconstruction + self.kl.sum(1)


def _draw(mean: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)


def markov_elbo_terms(
    x: torch.Tensor,
    encoders: Sequence[GaussianConditional],
    priors: Sequence[GaussianConditional],
    decoder_nll: DecoderNLL,
    generator: torch.Generator | None = None,
) -> ELBOTerms:
    """The terms of (1) with one reparameterized draw per level (differentiable).

    ``encoders[l]`` maps ``z_l`` to ``q(z_{l+1}|z_l)`` (``encoders[0]`` takes ``x``); ``priors[l]`` maps
    ``z_{l+2}`` to ``p(z_{l+1}|z_{l+2})`` (``L - 1`` of them; none for a VAE); ``decoder_nll(x, z_1)``
    is ``-log p(x|z_1)`` in nats ``[B]``. ``eps`` comes from ``generator`` (the global RNG if None)."""
    if len(priors) != len(encoders) - 1:
        raise ValueError(f"{len(encoders)} encoder levels need {len(encoders) - 1} conditional priors, "
                         f"got {len(priors)}")
    zs, params, h = [], [], x
    for enc in encoders:
        mean, log_var = enc(h)
        h = reparameterize(mean, log_var, _draw(mean, generator))
        zs.append(h)
        params.append((mean, log_var))
    terms = []
    for lvl, prior in enumerate(priors):  # consistency terms of levels 1 .. L-1
        p_mean, p_log_var = prior(zs[lvl + 1])
        terms.append(-gaussian_entropy(params[lvl][1]) - gaussian_log_prob(zs[lvl], p_mean, p_log_var))
    terms.append(kl_standard_normal(*params[-1]))  # prior matching of z_L
    return ELBOTerms(reconstruction=decoder_nll(x, zs[0]), kl=torch.stack(terms, 1))


def markov_log_weights(
    x: torch.Tensor,
    encoders: Sequence[GaussianConditional],
    priors: Sequence[GaussianConditional],
    decoder_nll: DecoderNLL,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``log w = log p(x, z_{1:L}) - log q(z_{1:L}|x)`` for one draw ``z ~ q`` per example, nats ``[B]``:
    the summand of the IWAE bound (3)."""
    log_w, h = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device), x
    zs = []
    for enc in encoders:
        mean, log_var = enc(h)
        h = reparameterize(mean, log_var, _draw(mean, generator))
        log_w = log_w - gaussian_log_prob(h, mean, log_var)
        zs.append(h)
    for lvl, prior in enumerate(priors):
        p_mean, p_log_var = prior(zs[lvl + 1])
        log_w = log_w + gaussian_log_prob(zs[lvl], p_mean, p_log_var)
    top = zs[-1]
    log_w = log_w + gaussian_log_prob(top, torch.zeros_like(top), torch.zeros_like(top))
    return log_w - decoder_nll(x, zs[0])


def iwae_bound(
    log_weights: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, k: int, max_batch: int = 4096
) -> torch.Tensor:
    """``-L_K`` of (3) in nats ``[B]``: ``-(logsumexp_k log w_k - log K)`` with ``K`` independent draws per
    example, ``log_weights(x_rows) -> [rows]`` called on at most ``max_batch`` rows at a time."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"the number of importance samples K must be a whole number >= 1, got {k!r}")
    B = x.shape[0]
    rows = torch.arange(B, device=x.device).repeat(k)  # draw-major: row j*B + b is draw j of example b
    out = torch.empty(k * B, dtype=torch.float64, device=x.device)
    step = max(1, max_batch)
    for start in range(0, k * B, step):
        part = slice(start, start + step)
        out[part] = log_weights(x[rows[part]]).to(torch.float64)
    return -(torch.logsumexp(out.reshape(k, B), 0) - math.log(k))
