"""Exact denoisers for data whose noisy marginals are known in closed form.

With ``x_t = alpha x_0 + sigma eps`` the best denoiser is ``E[x_0 | x_t]`` (Tweedie). For

* Gaussian data ``x_0 ~ N(mu, s^2 I)``:
  ``E[x_0|x_t] = mu + alpha s^2 (x_t - alpha mu) / (alpha^2 s^2 + sigma^2)``;
* a Gaussian mixture ``sum_k pi_k N(m_k, s_k^2 I)``: the noisy marginal is the mixture
  ``sum_k pi_k N(alpha m_k, (alpha^2 s_k^2 + sigma^2) I)``, and ``E[x_0|x_t]`` is the
  responsibility-weighted sum of each component's Gaussian answer;
* data on a grid with independent coordinates (each a categorical over levels ``c_k`` with
  probabilities ``pi_k``): the same mixture formula per coordinate with ``s_k = 0``.

Each oracle is a ``model(x_t, t)`` callable returning the diffusion's own prediction (``eps``,
``x0`` or ``v``), so it can stand in for a trained network in any sampler or in the bound. For a
preconditioned process (:mod:`difflab.processes`: VE, EDM) it is the network ``F`` itself: it reads
its input as ``c_in x`` and returns the output ``(E[x_0|x] - c_skip x)/c_out`` that makes ``D`` exact.
"""

from __future__ import annotations

import torch

from .gaussian import target_of


class _Oracle:
    def __init__(self, diffusion):
        self.diffusion = diffusion

    def posterior_mean(self, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
        raise NotImplementedError

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x_t.to(torch.float64)
        t = t.to(torch.float64)
        if bool((t == t[0]).all()):  # samplers pass one shared t: compute its (alpha, sigma) once
            t = t[:1]
        alpha, sigma = (
            v.to(x.device).reshape(-1, *([1] * (x.dim() - 1)))
            for v in self.diffusion.schedule.alpha_sigma(t)
        )
        pre = getattr(self.diffusion, "preconditioning", None)
        if pre is not None:  # VE / EDM: the input is c_in x, the output F with D(x) = E[x_0 | x]
            x = x / (pre.coefficients(sigma)[2])
            return pre.target(self.posterior_mean(x, alpha, sigma), x, t).to(x_t.dtype)
        x0 = self.posterior_mean(x, alpha, sigma)
        eps = (x - alpha * x0) / sigma
        return target_of(self.diffusion.prediction, x0, eps, alpha, sigma).to(x_t.dtype)


class GaussianOracle(_Oracle):
    """Exact denoiser for ``x_0 ~ N(mu, s^2 I)``."""

    def __init__(self, diffusion, mu: float | torch.Tensor = 0.0, s: float | torch.Tensor = 1.0):
        super().__init__(diffusion)
        self.mu = torch.as_tensor(mu, dtype=torch.float64)
        self.s = torch.as_tensor(s, dtype=torch.float64)

    def posterior_mean(self, x_t, alpha, sigma):
        s2 = self.s**2
        return self.mu + alpha * s2 * (x_t - alpha * self.mu) / (alpha**2 * s2 + sigma**2)


class GaussianMixtureOracle(_Oracle):
    """Exact denoiser for ``sum_k pi_k N(m_k, s_k^2 I)`` in ``D`` dimensions.

    ``means`` ``[K, D]``, ``stds`` ``[K]`` (0 allowed: point masses), ``weights`` ``[K]``.
    Inputs are ``[B, D]``.
    """

    def __init__(self, diffusion, means, stds, weights=None):
        super().__init__(diffusion)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        K = self.means.shape[0]
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(K)
        w = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else weights
        self.log_w = torch.log(torch.as_tensor(w, dtype=torch.float64))

    def posterior_mean(self, x_t, alpha, sigma):
        a, s = alpha.reshape(-1, 1, 1), sigma.reshape(-1, 1, 1)  # [B,1,1]
        var = a**2 * self.stds.reshape(1, -1, 1) ** 2 + s**2  # [B,K,1]
        diff = x_t[:, None, :] - a * self.means[None]  # [B,K,D]
        D = x_t.shape[1]
        log_r = self.log_w - 0.5 * (diff**2).sum(-1) / var[..., 0] - 0.5 * D * torch.log(var[..., 0])
        r = torch.softmax(log_r, dim=1)[..., None]  # [B,K,1]
        comp = self.means[None] + a * self.stds.reshape(1, -1, 1) ** 2 * diff / var
        return (r * comp).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(self.log_w.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * z


class GridOracle(_Oracle):
    """Exact denoiser for data whose coordinates are independent categoricals over ``levels``.

    ``levels`` ``[K]`` (e.g. the 256 grid points of 8-bit data in ``[-1, 1]``), ``probs`` ``[K]``
    shared by every coordinate. Inputs may have any shape ``[B, ...]``.
    """

    def __init__(self, diffusion, levels, probs):
        super().__init__(diffusion)
        self.levels = torch.as_tensor(levels, dtype=torch.float64)
        self.log_p = torch.log(torch.as_tensor(probs, dtype=torch.float64))

    def posterior_mean(self, x_t, alpha, sigma):
        x = x_t[..., None]
        a, s = alpha[..., None], sigma[..., None]
        log_r = self.log_p - 0.5 * (x - a * self.levels) ** 2 / s**2
        return (torch.softmax(log_r, dim=-1) * self.levels).sum(-1)

    def sample(self, shape, generator: torch.Generator | None = None) -> torch.Tensor:
        n = int(torch.Size(shape).numel())
        k = torch.multinomial(self.log_p.exp(), n, replacement=True, generator=generator)
        return self.levels[k].reshape(shape)
