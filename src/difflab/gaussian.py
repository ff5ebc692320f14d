"""Gaussian building blocks of the diffusion: marginals, posteriors, prediction conversions,
the KL of two Gaussians and the discretized decoder likelihood ``L_0``.

Every function works on a general Gaussian diffusion ``x_t = alpha_t x_0 + sigma_t eps``
(``alpha_t = sqrt(alpha_bar_t)``, ``sigma_t = sqrt(1 - alpha_bar_t)`` for DDPM). ``alpha``/``sigma``
arguments broadcast against ``x``.
"""

from __future__ import annotations

import math

import torch

from .checks import check_int

PREDICTIONS = ("eps", "x0", "v", "flow")


def q_sample(x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor):
    """Closed form of the forward process, ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1-alpha_bar_t) eps``."""
    return alpha * x0 + sigma * eps


def posterior_coefficients(
    alpha_t: torch.Tensor, sigma_t: torch.Tensor, alpha_s: torch.Tensor, sigma_s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coefficients of ``q(x_s | x_t, x_0)`` for any earlier level ``s < t``.

    With ``alpha_{t|s} = alpha_t / alpha_s`` and ``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2``
    (for one DDPM step ``s = t-1``: ``alpha_{t|s}^2 = alpha_t`` and ``sigma_{t|s}^2 = beta_t``):

        mu~ = (alpha_s sigma_{t|s}^2 / sigma_t^2) x_0 + (alpha_{t|s} sigma_s^2 / sigma_t^2) x_t
        beta~ = sigma_s^2 sigma_{t|s}^2 / sigma_t^2

    which for one step is the notes' ``sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t)``,
    ``sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)`` and
    ``beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t``.
    Returns ``(coef_x0, coef_xt, variance)``.
    """
    alpha_ts = alpha_t / alpha_s
    sigma_ts2 = transition_variance(alpha_t, sigma_t, alpha_s, sigma_s)
    coef_x0 = alpha_s * sigma_ts2 / sigma_t**2
    coef_xt = alpha_ts * sigma_s**2 / sigma_t**2
    return coef_x0, coef_xt, sigma_s**2 * sigma_ts2 / sigma_t**2


def transition_variance(alpha_t, sigma_t, alpha_s, sigma_s) -> torch.Tensor:
    """``sigma_{t|s}^2 = 1 - alpha_t^2/alpha_s^2`` for variance-preserving processes (the respaced
    ``beta``), written as ``sigma_t^2 - (alpha_t/alpha_s)^2 sigma_s^2`` so it also holds for VE."""
    return sigma_t**2 - (alpha_t / alpha_s) ** 2 * sigma_s**2


def learned_log_variance(v: torch.Tensor, log_small, log_large) -> torch.Tensor:
    """Improved DDPM's learned reverse variance (Nichol & Dhariwal 2021, eq. 15):

        log sigma_t^2 = frac log beta_t + (1 - frac) log beta~_t,     frac = (v + 1) / 2,

    an interpolation in the log domain between the two fixed choices, ``log_small = log beta~_t``
    (``v = -1``) and ``log_large = log beta_t`` (``v = 1``), both broadcast against ``v``. ``v`` is the
    network's raw output, nominally in ``[-1, 1]``; like the paper it is not clamped, so values
    outside extrapolate (still a valid Gaussian, the objective keeps them in range in practice).
    """
    frac = (v + 1) / 2
    return frac * log_large + (1 - frac) * log_small


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}"
        )
    return prediction


def to_x0_eps(
    output: torch.Tensor, prediction: str, x_t: torch.Tensor, alpha, sigma
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a network output of kind ``eps``, ``x0``, ``v`` or ``flow`` into ``(x0_hat, eps_hat)``.

    ``x_t = alpha x0 + sigma eps`` and ``v = alpha eps - sigma x0`` with ``alpha^2 + sigma^2 = 1``
    give ``x0 = alpha x_t - sigma v`` and ``eps = sigma x_t + alpha v`` (Salimans & Ho 2022, sec. 4).
    ``flow`` is the velocity ``u = eps - x0`` of the straight path ``x_t = (1-t) x0 + t eps``
    (Lipman et al. 2023; Liu et al. 2023): on any path, ``x_t - sigma u = (alpha + sigma) x0`` and
    ``x_t + alpha u = (alpha + sigma) eps``, so ``x0 = (x_t - sigma u)/(alpha + sigma)`` and
    ``eps = (x_t + alpha u)/(alpha + sigma)``.
    """
    if prediction == "eps":
        return (x_t - sigma * output) / alpha, output
    if prediction == "x0":
        return output, (x_t - alpha * output) / sigma
    if prediction == "v":
        return alpha * x_t - sigma * output, sigma * x_t + alpha * output
    if prediction == "flow":
        total = alpha + sigma
        return (x_t - sigma * output) / total, (x_t + alpha * output) / total
    check_prediction(prediction)
    raise AssertionError("unreachable")


def target_of(prediction: str, x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """The regression target of a parameterization: ``eps``, ``x0``, ``v = alpha eps - sigma x0`` or
    the flow velocity ``u = eps - x0``."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha * eps - sigma * x0
    if prediction == "flow":
        return eps - x0
    check_prediction(prediction)
    raise AssertionError("unreachable")


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, e^logvar1) || N(mean2, e^logvar2))`` in nats:

        0.5 * (logvar2 - logvar1 + e^(logvar1 - logvar2) + (mean1 - mean2)^2 e^-logvar2 - 1)
    """
    return 0.5 * (
        logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
        - 1.0
    )


def gaussian_log_density(x, mean, logvar) -> torch.Tensor:
    """Elementwise ``log N(x; mean, e^logvar)`` in nats (continuous decoder)."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def _log_diff_ndtr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``log(Phi(b) - Phi(a))`` for ``a < b``, accurate in both tails.

    Where the interval lies right of 0, the mirrored ``Phi(-a) - Phi(-b)`` is used so that no
    difference of two numbers close to 1 is formed.
    """
    flip = (a + b) > 0
    lo = torch.where(flip, -b, a)
    hi = torch.where(flip, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    log_lo = torch.special.log_ndtr(lo)
    # log(e^log_hi - e^log_lo) = log_hi + log(1 - e^(log_lo - log_hi))
    return log_hi + torch.log(-torch.expm1((log_lo - log_hi).clamp(max=-1e-30)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, bins: int = 256
) -> torch.Tensor:
    """Elementwise ``log p(x_0 | x_1)`` of the decoder ``L_0`` (DDPM eq. 13), in nats.

    The data lie on ``bins`` equally spaced levels over ``[-1, 1]`` (256 for 8-bit images, 17 for
    the 8x8 digits). Each level owns the interval of half-width ``1/(bins-1)`` around it; the
    outermost intervals extend to minus and plus infinity, so the probabilities sum to 1.
    """
    if not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    half = 1.0 / (bins - 1)
    std = torch.exp(0.5 * log_var)
    lower = torch.where(x < -1 + half / 2, torch.full_like(x, -math.inf), (x - half - mean) / std)
    upper = torch.where(x > 1 - half / 2, torch.full_like(x, math.inf), (x + half - mean) / std)
    return _log_diff_ndtr(lower, upper)


def log_to_bits_per_dim(nats: torch.Tensor, dims: int) -> torch.Tensor:
    """Nats per example -> bits per dimension."""
    return nats / (dims * math.log(2.0))


def check_grid(x0: torch.Tensor, bins: int | None) -> None:
    """Refuse data a discretized likelihood cannot score, naming the rule broken: values must be finite,
    lie in ``[-1, 1]`` and, with ``bins``, on the grid ``2 k / (bins - 1) - 1``, ``k = 0..bins-1``
    (within 1e-3 of a level step). ``bins=None`` checks only finiteness (a Gaussian density)."""
    x = x0.detach()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"x0 contains {'NaN' if bool(torch.isnan(x).any()) else 'inf'} values; the bound "
                         "scores finite data only")
    if bins is None:
        return
    check_int("bins", bins, 2)
    x = x.to(torch.float64)
    outside = (x < -1.0 - 1e-6) | (x > 1.0 + 1e-6)
    if bool(outside.any()):
        raise ValueError(
            f"x0 value {x[outside].flatten()[0].item():g} lies outside [-1, 1], the range of the "
            f"{bins}-level data grid; scale the data to [-1, 1]"
        )
    k = (x + 1.0) * (bins - 1) / 2.0
    off = (k - k.round()).abs() > 1e-3
    if bool(off.any()):
        raise ValueError(
            f"x0 value {x[off].flatten()[0].item():g} is not on the {bins}-level grid 2 k / {bins - 1} - 1 "
            f"(k = 0..{bins - 1}) over [-1, 1]; pass the data's own bins, or score continuous data with "
            "the Gaussian decoder or ode_nll"
        )
