"""Exact likelihood through the probability-flow ODE (Song et al. 2021, sec. 4.3 and app. D.2).

**The ODE in log-SNR.** For a variance-preserving diffusion ``x = alpha x_0 + sigma eps`` with
``alpha^2 = sigmoid(lambda)`` and ``sigma^2 = sigmoid(-lambda)``, the probability-flow ODE
``dx = [f x - g^2 score / 2] dt`` written in the log-SNR ``lambda`` reads

    dx/dlambda = 0.5 sigma^2 x - 0.5 sigma eps_hat(x, lambda).                              (1)

Derivation: ``f = d log alpha / dlambda = 0.5 d log sigmoid(lambda) / dlambda = 0.5 sigma^2``;
``g^2 = d sigma^2/dlambda - 2 f sigma^2 = -alpha^2 sigma^2 - sigma^4 = -sigma^2``; with the score
``-eps_hat / sigma`` the drift is ``0.5 sigma^2 x - 0.5 (-sigma^2)(-eps_hat / sigma)``, which is (1).
Check through DDIM's form: ``x/alpha = x_0 + e^(-lambda/2) eps`` gives
``d(x/alpha)/dlambda = -0.5 (sigma/alpha) eps_hat``, and ``dx = alpha d(x/alpha) + x d log alpha``
is (1) again. The drift is smooth in ``lambda`` for any schedule, unlike in model time.

**The likelihood.** Along a solution, ``d log p_lambda(x(lambda)) / dlambda = -div f`` (the
instantaneous change of variables), so integrating from the data end ``lambda_start`` to the prior
end ``lambda_end < lambda_start``

    -log p(x) = -log N(x(lambda_end); 0, I) - int_{lambda_start}^{lambda_end} div f dlambda,   (2)
    div f     = 0.5 sigma^2 D - 0.5 sigma div eps_hat,                                      (3)

where ``D`` is the number of dimensions. The linear part of (3) integrates in closed form,
``int 0.5 sigma^2 D dlambda = 0.5 D [log sigmoid(lambda)]`` (``= D log(alpha_end/alpha_start)``, the
Jacobian of the rescaling); only ``-0.5 sigma div eps_hat`` is integrated with ``x``, by torchdiffeq's
adaptive Runge-Kutta solver. ``div eps_hat`` is either exact (``sum_i d eps_i / d x_i``, one backward
pass per dimension) or Hutchinson's estimate ``z^T (d eps_hat / dx) z`` with probes ``z`` (Rademacher
or standard normal, ``E[z z^T] = I``) drawn once and held fixed over the whole trajectory. The data
``x`` are taken as the state at ``lambda_start`` (as score-SDE takes them at its small ``t = eps``):
the density is that of the model's marginal at the first noise level.

**The protocol.** :func:`ode_nll` works for any diffusion with a method ``ode_view(model)`` that
returns an :class:`ODEView`:

* ``lambda_start`` (float): the log-SNR of the data end, where ``x`` is placed;
* ``lambda_end`` (float, ``< lambda_start``): the log-SNR of the prior end, where ``N(0, I)`` is used;
* ``eps(x, lam)``: the network's ``eps`` prediction for the batch ``x`` (``[B, ...]``, in the dtype the
  caller gave) at the scalar float log-SNR ``lam`` in ``[lambda_end, lambda_start]``, same shape as
  ``x``. It must be differentiable in ``x`` (no ``torch.no_grad``, no ``detach``), treat the examples
  independently (no batch statistics) and be deterministic (the model in eval mode).

``GaussianDiffusion.ode_view`` (:func:`denoiser_view`) maps ``lam`` to the model time by inverting its
piecewise-linear log-SNR and converts an ``x0`` or ``v`` prediction to ``eps`` through its
:class:`~difflab.Denoiser`. A continuous-time process (VDM) returns ``lambda = -gamma`` at its two ends
and evaluates its network at the time of ``lam``; if it has a ``denoiser(model)`` on a schedule that
inverts its own log-SNR, :func:`denoiser_view` does exactly that.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .checks import check_count, check_positive, shape_of
from .gaussian import check_grid, log_to_bits_per_dim
from .samplers.levels import time_of_log_snr
from .samplers.ode import ADAPTIVE

if TYPE_CHECKING:
    from .denoiser import Model

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
EXACT_MAX_DIMS = 64  # above this, exact divergence (one backward pass per dimension) warns


@dataclass(frozen=True)
class ODEView:
    """A diffusion seen by the probability-flow ODE (1): its two log-SNR ends and ``eps_hat(x, lam)``
    of the variance-preserving state ``x``; ``start_scale`` is ``sqrt(alpha^2 + sigma^2)`` at the data
    end, where the process's own state is ``start_scale`` times the variance-preserving one (1 for a
    variance-preserving process). See the module docstring for the contract of ``eps``.
    """

    lambda_start: float
    lambda_end: float
    eps: Callable[[torch.Tensor, float], torch.Tensor]
    start_scale: float = 1.0

    def __post_init__(self):
        start, end = float(self.lambda_start), float(self.lambda_end)
        object.__setattr__(self, "lambda_start", start)  # plain floats, also from 0-dim tensors
        object.__setattr__(self, "lambda_end", end)
        scale = float(self.start_scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"ODEView.start_scale must be a finite number > 0, got {self.start_scale!r}")
        object.__setattr__(self, "start_scale", scale)
        if not callable(self.eps):
            raise TypeError(f"ODEView.eps must be a callable eps(x, lam), got {type(self.eps).__name__}")
        if not (math.isfinite(start) and math.isfinite(end) and start > end):
            raise ValueError(
                f"an ODEView needs finite log-SNR ends with lambda_start (data) > lambda_end (prior), "
                f"got lambda_start={start!r}, lambda_end={end!r}"
            )


@dataclass
class ODELikelihoodStats:
    """What :func:`ode_nll` measured besides the answer.

    ``nfe``: evaluations of the drift (1), each one batched network call (plus its backward passes).
    ``std_err``: ``[B]`` standard error of the Hutchinson estimate, ``std(estimates over probes) /
    sqrt(probes)``; it is the Monte-Carlo error of the divergence integral given the trajectory (the
    solver's own error is not included). NaN with one probe (no spread to measure), ``None`` for the
    exact divergence. ``x_end``: the state at ``lambda_end`` (the data's latent code), float64.
    ``prior_nll``: ``-log N(x_end; 0, I)`` ``[B]``. Units are those of the answer (nats or bits/dim).
    """

    nfe: int
    std_err: torch.Tensor | None
    x_end: torch.Tensor
    prior_nll: torch.Tensor


def _softplus(v: float) -> float:
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


def log_alpha2(lam: float) -> float:
    """``log alpha^2 = log sigmoid(lambda) = -softplus(-lambda)``, stable for any ``lambda``."""
    return -_softplus(-lam)


def _check_batch(x, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(
            f"{name} must be a batch tensor [B, ...] with at least 2 dimensions, got {shape_of(x)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def denoiser_view(diffusion, model: Model) -> ODEView:
    """The :class:`ODEView` of a diffusion on a schedule of ``T`` model times, on any Gaussian path.

    Reads the :class:`~difflab.Denoiser` of ``diffusion.denoiser(model)`` and its schedule (``timesteps``,
    ``log_snr``, ``alpha_sigma``): ``lambda_start = lambda(0)``, ``lambda_end = lambda(T-1)``, and
    ``eps(x, lam)`` runs the model at the model time ``t`` with ``lambda(t) = lam``
    (:func:`~difflab.samplers.time_of_log_snr`: exact for ``GaussianDiffusion``'s linearly interpolated
    log-SNR, and for a schedule that inverts its own) and converts an ``eps``, ``x0`` or ``v`` prediction
    to ``eps_hat``. ``GaussianDiffusion.ode_view`` is this function; another process with the same
    ``denoiser`` contract (VDM's continuous schedule, say) may return it too. On a path that does not
    preserve variance (VE, EDM, flow matching) the state ``x_p = c x`` with ``c = sqrt(alpha^2 +
    sigma^2)`` has the same log-SNR and ``eps`` as the variance-preserving ``x``: the network is called
    on ``c x``, and the density picks up the Jacobian ``c^-D`` at the data end (``start_scale``).
    """
    den = diffusion.denoiser(model)
    schedule = den.schedule
    ends = torch.tensor([0.0, schedule.timesteps - 1.0], dtype=torch.float64)
    alpha, sigma = schedule.alpha_sigma(ends)
    scale_ends = (alpha**2 + sigma**2).sqrt()
    preserving = torch.allclose(scale_ends, torch.ones_like(scale_ends), rtol=0.0, atol=1e-9)
    lam_start, lam_end = (float(v) for v in schedule.log_snr(ends))

    def eps(x: torch.Tensor, lam: float) -> torch.Tensor:
        t = time_of_log_snr(schedule, lam)
        if preserving:
            return den(x, t)[1]
        a, s = schedule.alpha_sigma(t)
        return den(x * float((a**2 + s**2).sqrt()), t)[1]  # the process's state at the same log-SNR

    return ODEView(lam_start, lam_end, eps, 1.0 if preserving else float(scale_ends[0]))


def _view_of(diffusion, model) -> ODEView:
    make = getattr(diffusion, "ode_view", None)
    if make is None:
        raise TypeError(
            f"{type(diffusion).__name__} has no ode_view(model) method; see difflab.ode_likelihood "
            "for the protocol"
        )
    view = make(model)
    if not isinstance(view, ODEView):
        raise TypeError(f"ode_view must return an ODEView, got {type(view).__name__}")
    return view


def _draw_probes(kind: str, n: int, x: torch.Tensor, generator) -> torch.Tensor:
    """``n`` probes shaped like ``x``, float64 ``[n, B, ...]`` with ``E[z z^T] = I``."""
    shape = (n, *x.shape)
    if kind == "rademacher":
        z = torch.randint(0, 2, shape, generator=generator, dtype=torch.int64).to(torch.float64) * 2 - 1
    else:
        z = torch.randn(shape, generator=generator, dtype=torch.float64)
    return z.to(x.device)


def _divergence(eps: torch.Tensor, x: torch.Tensor, probes: torch.Tensor | None) -> torch.Tensor:
    """``div eps`` per example: exact ``[1, B]`` (``probes=None``) or one Hutchinson estimate per probe
    ``[K, B]``. ``x`` is the leaf ``eps`` was computed from; examples are independent, so one backward
    pass of a sum over the batch gives every example's row of the Jacobian at once."""
    if not eps.requires_grad:
        raise ValueError(
            "the model's eps prediction does not depend differentiably on x (did the model run under "
            "torch.no_grad or detach its output?); the divergence needs autograd"
        )
    B = x.shape[0]
    if probes is None:
        flat = eps.flatten(1)
        D = flat.shape[1]
        out = torch.zeros(1, B, dtype=torch.float64, device=x.device)
        for i in range(D):
            (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i < D - 1, allow_unused=True)
            if g is not None:
                out[0] += g.flatten(1)[:, i].to(torch.float64)
        return out
    K = probes.shape[0]
    out = torch.empty(K, B, dtype=torch.float64, device=x.device)
    for k in range(K):
        z = probes[k]
        (g,) = torch.autograd.grad(eps, x, z.to(eps.dtype), retain_graph=k < K - 1, allow_unused=True)
        out[k] = 0.0 if g is None else (g.to(torch.float64) * z).flatten(1).sum(1)
    return out


def _integrate(
    view: ODEView,
    x: torch.Tensor,
    model_dtype: torch.dtype,
    *,
    rtol: float,
    atol: float,
    method: str,
    divergence: str,
    probe: str,
    probes: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, ODELikelihoodStats]:
    """Equations (1)-(3) for float64 ``x`` at ``view.lambda_start``; nats ``[B]`` and the stats."""
    try:
        from torchdiffeq import odeint
    except ImportError as exc:
        raise ImportError(
            "the ODE likelihood needs torchdiffeq: pip install 'difflab[ode]' (or pip install torchdiffeq)"
        ) from exc
    B, D = x.shape[0], int(x[0].numel())
    x = x / view.start_scale  # the variance-preserving state of the same log-SNR
    if divergence == "exact" and D > EXACT_MAX_DIMS:
        warnings.warn(
            f"exact divergence takes one backward pass per dimension ({D} per evaluation); "
            "divergence='hutchinson' is far cheaper for data this large",
            stacklevel=3,
        )
    z = _draw_probes(probe, probes, x, generator) if divergence == "hutchinson" else None
    lo, hi = view.lambda_end, view.lambda_start
    nfe = 0

    def drift(lam_t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        nonlocal nfe
        nfe += 1
        y = state[0]
        lam = min(max(float(lam_t), lo), hi)  # only the solver's first-step probe may leave the range
        sigma = math.exp(0.5 * log_alpha2(-lam))  # sigma^2 = sigmoid(-lambda)
        with torch.enable_grad():
            y_in = y.detach().to(model_dtype).requires_grad_(True)
            eps = view.eps(y_in, lam)
            if not isinstance(eps, torch.Tensor) or eps.shape != y.shape:
                raise ValueError(f"eps(x, lam) returned {shape_of(eps)} for x of shape {tuple(y.shape)}")
            div = _divergence(eps, y_in, z)
        dy = 0.5 * sigma**2 * y - 0.5 * sigma * eps.detach().to(torch.float64)  # eq. (1)
        return dy, -0.5 * sigma * div  # the model's part of div f, eq. (3)

    acc0 = torch.zeros(1 if z is None else probes, B, dtype=torch.float64, device=x.device)
    lams = torch.tensor([hi, lo], dtype=torch.float64, device=x.device)
    with torch.no_grad():
        ys, accs = odeint(
            drift, (x, acc0), lams, rtol=rtol, atol=atol, method=method, options={"step_t": lams[1:]}
        )
    x_end, acc = ys[-1], accs[-1]
    linear = 0.5 * D * (log_alpha2(lo) - log_alpha2(hi))  # int 0.5 sigma^2 D dlambda, eq. (3)
    prior_nll = 0.5 * x_end.flatten(1).pow(2).sum(1) + 0.5 * D * math.log(2 * math.pi)
    nll = prior_nll - linear - acc.mean(0) + D * math.log(view.start_scale)  # eq. (2), and x's scale
    std_err = None
    if z is not None:
        std_err = acc.std(0) / math.sqrt(probes) if probes > 1 else torch.full_like(nll, math.nan)
    return nll, ODELikelihoodStats(nfe=nfe, std_err=std_err, x_end=x_end, prior_nll=prior_nll)


def ode_nll(
    diffusion,
    model: Model,
    x: torch.Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    divergence: str = "exact",
    probe: str = "rademacher",
    probes: int = 1,
    generator: torch.Generator | None = None,
    return_stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ODELikelihoodStats]:
    """``-log p(x)`` in nats per example, float64 ``[B]`` on ``x``'s device, by eqs. (1)-(3).

    Args:
        diffusion: any object with ``ode_view(model)`` (see the module docstring).
        x: continuous data ``[B, ...]``, taken as the state at the data end ``lambda_start``. The model
            sees the state in ``x``'s dtype; the state, the divergence and the result are float64.
        rtol, atol: tolerances of the adaptive solver (``atol`` applies to ``x`` and to the divergence
            integral, in nats).
        method: a torchdiffeq adaptive method (``dopri5`` = Dormand-Prince RK45).
        divergence: ``"exact"`` (``D`` backward passes per evaluation; warns above 64 dimensions) or
            ``"hutchinson"`` (``probes`` backward passes per evaluation, averaged; unbiased).
        probe: ``"rademacher"`` or ``"gaussian"`` probes for Hutchinson, drawn once with ``generator``
            and kept for the whole trajectory.
        return_stats: also return an :class:`ODELikelihoodStats`.

    The model is used as given: put it in eval mode first (dropout would make the drift random).
    """
    _check_batch(x, "x")
    opts = _checked_options(rtol, atol, method, divergence, probe, probes, generator)
    view = _prepare(diffusion, model)
    nll, stats = _integrate(view, x.detach().to(torch.float64), x.dtype, **opts)
    return (nll, stats) if return_stats else nll


def ode_bits_per_dim(
    diffusion,
    model: Model,
    x0: torch.Tensor,
    *,
    bins: int = 256,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    divergence: str = "exact",
    probe: str = "rademacher",
    probes: int = 1,
    generator: torch.Generator | None = None,
    return_stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ODELikelihoodStats]:
    """An upper bound on ``-log P(x0)`` of grid data in bits per dimension, float64 ``[B]``, by
    uniform dequantization and the ODE likelihood.

    ``x0`` lies on the ``bins`` levels ``2 k/(bins-1) - 1`` over ``[-1, 1]``, spaced ``w = 2/(bins-1)``.
    Each level owns the cell ``[x0 - w/2, x0 + w/2)``, so the model's density ``p`` gives the discrete
    model ``P(x0) = int_cell p = w^D E_u[p(x0 + u)]`` with ``u ~ U[-w/2, w/2)^D`` (the cells are
    disjoint, so ``sum P <= 1``). By Jensen's inequality

        -log P(x0) <= E_u[-log p(x0 + u)] - D log w,                                        (4)

    estimated with one draw of ``u`` per example from ``generator`` (drawn before the probes);
    ``-D log w`` is ``log2((bins-1)/2)`` bits per dimension, 6.99 for 8-bit data. Nats become bits/dim
    by :func:`~difflab.gaussian.log_to_bits_per_dim`. The other options are those of :func:`ode_nll`;
    with ``return_stats`` the statistics' ``std_err`` and ``prior_nll`` are in bits/dim as well.
    """
    _check_batch(x0, "x0")
    check_grid(x0, bins)
    opts = _checked_options(rtol, atol, method, divergence, probe, probes, generator)
    view = _prepare(diffusion, model)
    w = 2.0 / (bins - 1)
    u = (torch.rand(x0.shape, generator=generator, dtype=torch.float64) - 0.5) * w
    nll, stats = _integrate(view, x0.detach().to(torch.float64) + u.to(x0.device), x0.dtype, **opts)
    D = int(x0[0].numel())
    bpd = log_to_bits_per_dim(nll - D * math.log(w), D)  # eq. (4)
    if not return_stats:
        return bpd
    stats.prior_nll = log_to_bits_per_dim(stats.prior_nll, D)
    if stats.std_err is not None:
        stats.std_err = log_to_bits_per_dim(stats.std_err, D)
    return bpd, stats


def _checked_options(rtol, atol, method, divergence, probe, probes, generator) -> dict:
    check_positive(rtol=rtol, atol=atol)
    if method not in ADAPTIVE:
        raise ValueError(
            f"unknown method {method!r}; the likelihood needs an adaptive solver: {', '.join(ADAPTIVE)}"
        )
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose one of {', '.join(PROBES)}")
    check_count(probes=probes)
    if divergence == "exact" and probes != 1:
        raise ValueError(f"probes={probes!r} applies to divergence='hutchinson' only (exact needs none)")
    return {"rtol": rtol, "atol": atol, "method": method, "divergence": divergence, "probe": probe,
            "probes": probes, "generator": generator}


def _prepare(diffusion, model) -> ODEView:
    if isinstance(model, torch.nn.Module) and model.training:
        warnings.warn(
            "the model is in training mode; call model.eval() so that dropout or batch statistics do "
            "not make the probability-flow drift random",
            stacklevel=3,
        )
    return _view_of(diffusion, model)


__all__ = [
    "DIVERGENCES",
    "PROBES",
    "ODELikelihoodStats",
    "ODEView",
    "denoiser_view",
    "log_alpha2",
    "ode_bits_per_dim",
    "ode_nll",
]
