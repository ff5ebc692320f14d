"""Variational Diffusion Models in continuous time (Kingma et al. 2021, "Variational Diffusion Models").

**The process.** ``z_t = alpha_t x + sigma_t eps`` for ``t in [0, 1]``, ``alpha_t^2 = sigmoid(-gamma(t))``,
``sigma_t^2 = sigmoid(gamma(t))`` (eqs. 1, 3-5; equation numbers of the arXiv version), with
``gamma = -lambda`` from a :class:`~difflab.processes.vdm.schedule.LogSNRSchedule` (linear, cosine or the
learned monotone network).

**Model time.** Samplers, the :class:`~difflab.Denoiser` and the oracles speak the library's model time
``tau in [0, T-1]``. Here ``tau = (T-1) t`` with ``T = timesteps`` (1000 by default), so the
``uniform`` spacing of ``T`` levels is VDM's own sampling grid ``t = i/(T-1)``. The log-SNR is the exact
continuous ``-gamma(tau/(T-1))`` at every ``tau`` (no interpolation between grid points), and
:class:`ContinuousScheduleView` inverts it exactly for the samplers that evaluate between levels.

**The network's time input.** :class:`VDMModel` wraps a network and carries its schedule (so the
trainer, EMA, DDP and checkpoints handle the schedule's parameters like any others). It gives the
network not ``tau`` but the noise level ``c = 1000 (gamma - gamma_min) / (gamma_max - gamma_min)``
(``gamma_min``/``gamma_max``: the configured endpoints, fixed), on the ``[0, 1000]`` clock the
sinusoidal embeddings expect, as VDM's score network embeds ``1000 (gamma - gamma_min)/(gamma_max -
gamma_min)``. A network of ``(z, gamma)`` keeps the bound invariant to the schedule between its
endpoints (sec. 5.1, eq. 18): that is what lets the schedule's shape be trained for variance alone.

**The bound** (sec. 3.5, eq. 11), per example, reported in bits/dim like ``GaussianDiffusion``'s::

    -log p(x) <= KL(q(z_1|x) || N(0, I)) + L_inf(x) + E_{q(z_0|x)}[-log p(x|z_0)]
    prior     =  0.5 sum(alpha_1^2 x^2 + sigma_1^2 - log sigma_1^2 - 1)
    L_inf(x)  =  0.5 E_{t~U(0,1), eps}[gamma'(t) ||eps - eps_hat(z_t; t)||^2]             (eq. 17)
    decoder   =  -log p(x | z_0),  z_0 / alpha_0 = x + exp(gamma_0/2) eps_0

The decoder is VDM's factorised one (eq. 8, ``p(x_i | z_0,i) ~ q(z_0,i | x_i)``): for data on the
grid ``c_k = -1 + 2k/(bins-1)``, ``k = 0..bins-1`` (the library's convention: 256 levels for 8-bit
images, 17 for the 8x8 digits), ``p(x = c_k | z_0) = softmax_k(-(z_0/alpha_0 - c_k)^2 / (2 e^gamma_0))``
(``sigma_0^2/alpha_0^2 = e^gamma_0``): the Gaussian
``N(z_0/alpha_0; c_k, e^gamma_0)`` normalised over the grid, a proper distribution on the data's
levels, so the bound bounds ``-log P(x)`` of the discrete data just as ``GaussianDiffusion``'s
discretized decoder does. For continuous data ``decoder="gaussian"`` uses the density
``N(x; z_0/alpha_0, e^gamma_0)`` instead (a bound on ``-log p(x)``, nats/dim when divided by ``D``).
The training loss is this whole bound (VDM trains on it), in bits/dim.

**Sampling** is ancestral with ``p(z_s | z_t) = q(z_s | z_t, x = x_hat(z_t; t))`` (eqs. 9, 23-25), or
any other sampler of :mod:`difflab.samplers`, on levels of the model's schedule.

**Time sampling.** :meth:`VDMDiffusion.sample_t` draws VDM's low-discrepancy ("antithetic") times
``t_i = (u + i/B) mod 1`` with one ``u ~ U(0, 1)`` per batch (appendix I.1). The trainer draws ``t``
for the global batch with its shared generator (identical on every rank) and gives rank ``r`` rows
``[r B/W, (r+1) B/W)`` (and micro-batches contiguous slices of those): each rank and micro-batch
covers a contiguous ``1/(W A)`` stretch of ``[0, 1)``, and the averaged gradient is the stratified
estimate of the whole batch, unbiased as each ``t_i`` is marginally uniform.

**The schedule's gradient** (sec. 5.3 and appendix I.2). ``E[L_inf]`` depends on the schedule only
through ``gamma_0`` and ``gamma_1``, so the shape parameters are trained to minimise the estimator's
variance, ``E[L_inf^2]``, whose gradient ``E[2 L_inf dL_inf/d eta]`` comes from the same backward pass:
the gradient flowing into ``s(t)`` and ``s'(t)`` (the only paths to the shape) is multiplied by
``2 L_inf`` (per example, in the loss's units, bits/dim) with a tensor hook. The endpoints and the
network get the ordinary gradient of the bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ...checks import check_int, shape_of
from ...denoiser import Denoiser, Model, bcast
from ...gaussian import check_grid, check_prediction, to_x0_eps
from ...ode_likelihood import ODEView
from ...samplers.ddpm import progress_iter
from ..base import ProcessBase, check_output, with_docstring
from .model import VDMModel, find_vdm_model
from .schedule import GAMMA_MAX, GAMMA_MIN, ContinuousScheduleView, LogSNRSchedule, make_schedule

VDM_VARIANCES = ("fixed_small", "fixed_large")
DECODERS = ("discretized", "gaussian")

__all__ = [
    "DECODERS",
    "ContinuousScheduleView",
    "VDMBound",
    "VDMDiffusion",
    "VDMModel",
    "categorical_decoder_nll",
    "find_vdm_model",
    "gaussian_decoder_nll",
    "prior_kl",
]


@dataclass
class VDMBound:
    """The VDM bound's parts in bits/dim (nats/dim times ``1/ln 2`` for the Gaussian decoder), each
    ``[B]``: ``prior`` KL(q(z_1|x) || N(0, I)), ``diffusion`` ``L_inf`` (Monte Carlo over ``t``) and
    ``decoder`` ``-log p(x|z_0)``; the same names as :class:`difflab.VLBTerms`. Float64, with gradients
    when they come from :meth:`VDMDiffusion.loss_terms`."""

    prior: torch.Tensor
    diffusion: torch.Tensor
    decoder: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.prior + self.diffusion + self.decoder


def prior_kl(x: torch.Tensor, gamma_1: torch.Tensor) -> torch.Tensor:
    """``KL(N(alpha_1 x, sigma_1^2 I) || N(0, I)) = 0.5 sum(alpha_1^2 x^2 + sigma_1^2 - log sigma_1^2 - 1)``,
    nats ``[B]`` (float64, differentiable in ``gamma_1``)."""
    x = x.to(torch.float64)
    log_var = nn.functional.logsigmoid(gamma_1)
    per = 0.5 * (torch.sigmoid(-gamma_1) * x**2 + torch.sigmoid(gamma_1) - log_var - 1)
    return per.flatten(1).sum(1)


def gaussian_decoder_nll(x: torch.Tensor, y: torch.Tensor, gamma_0: torch.Tensor) -> torch.Tensor:
    """Elementwise ``-log N(x; y, e^gamma_0)`` in nats, ``y = z_0 / alpha_0`` (continuous data)."""
    x, y = x.to(torch.float64), y.to(torch.float64)
    return 0.5 * (math.log(2 * math.pi) + gamma_0 + (x - y) ** 2 * torch.exp(-gamma_0))


def categorical_decoder_nll(
    x: torch.Tensor, y: torch.Tensor, gamma_0: torch.Tensor, bins: int
) -> torch.Tensor:
    """Elementwise ``-log p(x | z_0)`` in nats of VDM's factorised decoder on ``bins`` levels over
    ``[-1, 1]``: ``p(c_k | z_0) = softmax_k(-(y - c_k)^2 e^-gamma_0 / 2)`` with ``y = z_0/alpha_0``.

    The normaliser sums over the levels within ``12 e^(gamma_0/2) + 1`` grid steps of ``y`` (the rest
    weigh less than ``e^-72`` of the nearest), so the cost does not grow with ``bins``. ``x`` must lie
    on the grid (within a quarter step): a ``ValueError`` says so otherwise.
    """
    check_int("bins", bins, 2)
    x, y = x.to(torch.float64), y.to(torch.float64)
    step = 2.0 / (bins - 1)
    k_true = torch.round((x + 1) / step).clamp(0, bins - 1)
    off = (x - (k_true * step - 1)).abs().max() if x.numel() else torch.zeros(())
    if float(off) > step / 4:
        raise ValueError(
            f"the data do not lie on the grid of bins={bins} levels over [-1, 1] (a value is "
            f"{float(off):.3g} from its nearest level, step {step:.3g}); pass bins= the data's number of "
            "levels, or decoder='gaussian' for continuous data"
        )
    inv_var = torch.exp(-gamma_0)
    logit_true = -0.5 * (y - (k_true * step - 1)) ** 2 * inv_var
    width = math.ceil(12.0 * math.exp(0.5 * float(gamma_0.detach())) / step) + 1
    if 2 * width + 1 >= bins:
        levels = torch.linspace(-1.0, 1.0, bins, dtype=torch.float64, device=x.device)
        logits = -0.5 * (y.unsqueeze(-1) - levels) ** 2 * inv_var
    else:
        near = torch.round((y + 1) / step).clamp(0, bins - 1)
        ks = near.unsqueeze(-1) + torch.arange(-width, width + 1, dtype=torch.float64, device=x.device)
        logits = -0.5 * (y.unsqueeze(-1) - (ks * step - 1)) ** 2 * inv_var
        logits = logits.masked_fill((ks < 0) | (ks > bins - 1), -math.inf)
    return torch.logsumexp(logits, -1) - logit_true


def _randn(shape, generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator, dtype=like.dtype).to(like.device)


class VDMDiffusion(ProcessBase):
    """Continuous-time VDM: the process protocol (:mod:`difflab.processes.protocol`) with a bound
    (``vlb_terms``, ``bits_per_dim``) and model time ``tau = (T-1) t`` (see the module docstring for
    every equation).

    Args:
        schedule: ``"learned"``, ``"linear"``, ``"cosine"`` or a ready
            :class:`~difflab.processes.vdm.schedule.LogSNRSchedule`. The diffusion's own schedule is used with
            models that do not carry one (plain callables, oracles); a :class:`VDMModel`'s wins.
        timesteps: ``T``, the number of grid levels of the model time (the sampler grid over ``[0, 1]``).
        prediction: what the network predicts, ``"eps"`` (VDM), ``"x0"`` or ``"v"``; the loss is
            eq. 17 on the ``eps_hat`` converted exactly from it.
        variance: ancestral sampling's variance, ``"fixed_small"`` (VDM's ``p(z_s|z_t)``) or
            ``"fixed_large"``.
        gamma_min, gamma_max, learn_endpoints: the schedule's endpoints when ``schedule`` is a name.
        bins: the data's grid for the training loss's decoder (``None``: continuous data, the Gaussian
            decoder).
        antithetic: low-discrepancy training times (VDM's default) instead of i.i.d. ones.
        variance_gradient: train a learned schedule's shape for the variance of ``L_inf`` (sec. 5.3)
            instead of for the bound (on which it has no effect in expectation).
    """

    bound_parts = (
        "prior KL(q(z_1|x) || N(0, I))",
        "diffusion: the continuous loss over t in [0, 1]",
        "decoder -log p(x | z_0)",
    )

    def __init__(
        self,
        schedule: str | LogSNRSchedule = "learned",
        timesteps: int = 1000,
        prediction: str = "eps",
        variance: str = "fixed_small",
        *,
        gamma_min: float = GAMMA_MIN,
        gamma_max: float = GAMMA_MAX,
        learn_endpoints: bool = True,
        bins: int | None = None,
        antithetic: bool = True,
        variance_gradient: bool = True,
    ):
        if isinstance(schedule, str):
            schedule = make_schedule(schedule, gamma_min, gamma_max, learn_endpoints)
        elif not isinstance(schedule, LogSNRSchedule):
            raise ValueError(
                "schedule must be 'learned', 'linear', 'cosine' or a LogSNRSchedule, got "
                f"{type(schedule).__name__}"
            )
        self.gamma_schedule = schedule
        self.timesteps = check_int("timesteps", timesteps, 2)
        self.prediction = check_prediction(prediction)
        if variance not in VDM_VARIANCES:
            raise ValueError(
                f"unknown variance {variance!r} for VDM; choose one of {', '.join(VDM_VARIANCES)}"
            )
        self.variance = variance
        if bins is not None and (isinstance(bins, bool) or not isinstance(bins, int) or bins < 2):
            raise ValueError(f"bins must be None (continuous data) or an integer >= 2, got {bins!r}")
        self.bins = bins
        for name, flag in (("antithetic", antithetic), ("variance_gradient", variance_gradient)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        self.antithetic, self.variance_gradient = antithetic, variance_gradient

    def __repr__(self) -> str:
        g0, g1 = (float(v.detach()) for v in self.gamma_schedule.endpoints())
        return (
            f"VDMDiffusion(schedule={self.gamma_schedule.kind!r}, gamma_0={g0:.4g}, gamma_1={g1:.4g}, "
            f"timesteps={self.timesteps}, prediction={self.prediction!r}, bins={self.bins})"
        )

    # ----------------------------------------------------------------- schedule
    def bind(self, model) -> VDMDiffusion:
        """Use ``model``'s schedule (a :class:`VDMModel` inside it) as this diffusion's own, e.g. after
        loading trained weights, so that ``q_sample`` and ``schedule`` follow it. Returns ``self``."""
        vdm, _ = find_vdm_model(model)
        if vdm is None:
            raise ValueError(
                f"no VDMModel found in {type(model).__name__}; wrap the network: VDMModel(net, schedule)"
            )
        self.gamma_schedule = vdm.schedule
        return self

    def _resolve(self, model) -> tuple[LogSNRSchedule, VDMModel | None, bool]:
        vdm, transparent = find_vdm_model(model)
        if vdm is not None and vdm.timesteps != self.timesteps:
            raise ValueError(
                f"the VDMModel reads model times on a grid of timesteps={vdm.timesteps}, this diffusion on "
                f"timesteps={self.timesteps}; build both with the same T"
            )
        return (self.gamma_schedule if vdm is None else vdm.schedule), vdm, transparent

    def view(self, schedule: LogSNRSchedule | None = None) -> ContinuousScheduleView:
        return ContinuousScheduleView(self.gamma_schedule if schedule is None else schedule, self.timesteps)

    @property
    def schedule(self) -> ContinuousScheduleView:
        """The own schedule as samplers and oracles see it (:class:`ContinuousScheduleView`)."""
        return self.view()

    def _tau(self, x: torch.Tensor, t) -> torch.Tensor:
        """Model times ``[B]``, float64 on the CPU, rounded to float32 (the values the network sees)."""
        return self.model_time(x, t).cpu().float().double()

    def log_snr(self, t) -> torch.Tensor:
        """``lambda(tau) = -gamma(tau/(T-1))`` of the own schedule, float64."""
        return self.schedule.log_snr(t)

    def alpha_sigma(self, t, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha_tau, sigma_tau)`` shaped to broadcast over ``like``."""
        alpha, sigma = self.schedule.alpha_sigma(self._tau(like, t))
        return bcast(alpha, like), bcast(sigma, like)

    q_sample = with_docstring(
        ProcessBase.q_sample, """``z = alpha x0 + sigma eps ~ q(z_t | x)`` at model time ``t`` (eq. 1)."""
    )

    # ----------------------------------------------------------------- training
    def sample_t(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training model times ``tau = (T-1) t``, float64 ``[batch]`` on the CPU: ``t_i = (u + i/B) mod 1``
        with one ``u ~ U(0, 1)`` (antithetic, VDM's default; see the module on DDP ranks) or i.i.d.
        ``U(0, 1)``."""
        check_int("batch", batch, 1)
        if self.antithetic:
            u = torch.rand((), generator=generator, dtype=torch.float64)
            t = torch.remainder(u + torch.arange(batch, dtype=torch.float64) / batch, 1.0)
        else:
            t = torch.rand(batch, generator=generator, dtype=torch.float64)
        return t * (self.timesteps - 1)

    def loss_terms(
        self,
        model: Model,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        noise_0: torch.Tensor | None = None,
    ) -> VDMBound:
        """The bound's three parts for each example, bits/dim ``[B]`` float64, differentiable.

        ``t`` (model time, default :meth:`sample_t`) and ``noise`` (the ``eps`` of ``z_t``) are drawn with
        ``generator`` unless given. ``noise_0`` (the ``eps_0`` of ``z_0`` in the decoder) is an independent
        draw when ``noise`` is drawn here, and ``noise`` itself when ``noise`` is given (the trainer's
        case: every random number of a step comes from its generator, identically on every rank);
        each term stays an unbiased estimate, only their correlation changes. With a learned schedule
        and :attr:`variance_gradient`, hooks make the schedule's shape receive the gradient of
        ``E[diffusion^2]`` (see the module).
        """
        if not isinstance(x0, torch.Tensor) or x0.dim() < 2:
            raise ValueError(f"x0 must be a batch tensor [B, ...], got {shape_of(x0)}")
        B, dims = x0.shape[0], int(x0[0].numel())
        tau = self._tau(x0, self.sample_t(B, generator) if t is None else t)
        if noise_0 is None:
            noise_0 = _randn(x0.shape, generator, x0) if noise is None else noise
        noise = _randn(x0.shape, generator, x0) if noise is None else noise
        for name, value in (("noise", noise), ("noise_0", noise_0)):
            if value.shape != x0.shape:
                raise ValueError(
                    f"{name} shape {tuple(value.shape)} does not match x0 shape {tuple(x0.shape)}"
                )
        schedule, vdm, transparent = self._resolve(model)
        if vdm is None and torch.is_grad_enabled() and any(p.requires_grad for p in schedule.parameters()):
            raise ValueError(
                f"the diffusion's own {schedule.kind!r} schedule has trainable parameters, which a plain "
                f"model ({type(model).__name__}) cannot carry into its optimizer: wrap the network, "
                "VDMModel(net, diffusion.gamma_schedule), or fix the schedule (learn_endpoints=False with "
                "'linear' or 'cosine')"
            )
        t01 = (tau / (self.timesteps - 1)).to(x0.device)
        gamma, dgamma, shape_tensors = schedule.evaluate(t01)
        g0, g1 = schedule.endpoints(t01)
        alpha, sigma = bcast(torch.sigmoid(-gamma).sqrt(), x0), bcast(torch.sigmoid(gamma).sqrt(), x0)
        z = alpha * x0 + sigma * noise
        tau32 = tau.to(device=x0.device, dtype=torch.float32)
        out = model(z, tau32, gamma=gamma) if vdm is not None and transparent else model(z, tau32)
        _, eps_hat = to_x0_eps(check_output(out, x0, "it must match"), self.prediction, z, alpha, sigma)
        mse = (noise - eps_hat).float().pow(2).flatten(1).sum(1).double()
        bits = 1.0 / (dims * math.log(2.0))
        diffusion = 0.5 * dgamma * mse * bits  # eq. 17
        y = x0.double() + torch.exp(0.5 * g0) * noise_0.double()  # z_0 / alpha_0
        if self.bins is None:
            dec = gaussian_decoder_nll(x0, y, g0)
        else:
            dec = categorical_decoder_nll(x0, y, g0, self.bins)
        terms = VDMBound(prior_kl(x0, g1) * bits, diffusion, dec.flatten(1).sum(1) * bits)
        if self.variance_gradient and torch.is_grad_enabled():
            scale = 2.0 * diffusion.detach()
            for part in shape_tensors:
                if part.requires_grad:
                    part.register_hook(lambda grad, scale=scale: grad * scale)
        return terms

    def loss(
        self,
        model: Model,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        noise_0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The whole bound per example, ``prior + L_inf + decoder`` in bits/dim, ``[B]`` in ``x0``'s dtype
        (VDM's training objective); see :meth:`loss_terms`."""
        terms = self.loss_terms(model, x0, t, noise, generator, noise_0=noise_0)
        return terms.total.to(x0.dtype)

    # ----------------------------------------------------------------- sampling
    def prior_std(self, levels=None) -> float:
        """``z_1 ~ N(0, I)``: sampling starts from unit variance."""
        return 1.0

    def draw_x_T(self, shape: tuple[int, ...], generator, device, dtype: torch.dtype) -> torch.Tensor:
        """Drawn on the CPU (with a CPU ``generator``, as every draw here) and moved to ``device``."""
        return torch.randn(shape, generator=generator, dtype=dtype).to(device)

    def denoiser(self, model: Model, clip: tuple[float, float] | None = None) -> Denoiser:
        """``model`` as ``(z, tau) -> (x0_hat, eps_hat)`` on its own schedule (or the diffusion's)."""
        return Denoiser(model, self.view(self._resolve(model)[0]), self.prediction, clip)

    sample = with_docstring(
        ProcessBase.sample,
        """Draw ``x`` by running ``sampler`` from ``z_1 ~ N(0, I)`` over ``steps`` levels of the model's
        schedule (``steps`` defaults to ``T``: VDM's ``T``-step ancestral sampler for ``"ancestral"``).
        Same arguments as :meth:`difflab.GaussianDiffusion.sample`. ``langevin``'s default ``epsilon``
        (NCSN's, for noise levels 100x apart) diverges over VDM's range (``sigma`` from ``e^-6.65`` to 1):
        scale it by ``(sigma_min / 0.01)^2``, about ``3e-7`` for ``gamma_min = -13.3``.""",
    )

    # ----------------------------------------------------------------- the bound
    def prior_kl(self, x0: torch.Tensor, model: Model | None = None) -> torch.Tensor:
        """``KL(q(z_1|x) || N(0, I))`` summed over dimensions, nats ``[B]`` (``model``'s schedule if
        given)."""
        schedule = self.gamma_schedule if model is None else self._resolve(model)[0]
        with torch.no_grad():
            return prior_kl(x0, schedule.endpoints(x0)[1]).cpu()

    @torch.no_grad()
    def vlb_terms(
        self,
        model: Model,
        x0: torch.Tensor,
        bins: int | None = None,
        decoder: str = "discretized",
        t_samples: int = 32,
        max_batch: int = 4096,
        clip: tuple[float, float] | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> VDMBound:
        """The bound's three parts for each example of ``x0``, bits/dim (see :class:`VDMBound`).

        ``L_inf`` is averaged over ``t_samples`` times per example, stratified as
        ``t_k = (u + k/K) mod 1`` with one ``u`` per example (each a fresh ``eps``), in network calls of
        at most ``max_batch`` rows; the prior is exact and the decoder uses one ``eps_0``. ``bins``
        (default: the diffusion's, else 256) is the data's grid for ``decoder="discretized"``;
        ``decoder="gaussian"`` is for continuous data. ``clip`` clamps ``x0_hat`` (the bound then
        belongs to the clipped model).
        """
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
        check_int("t_samples", t_samples, 1)
        if not isinstance(x0, torch.Tensor) or x0.dim() < 2:
            raise ValueError(f"x0 must be a batch tensor [B, ...], got {shape_of(x0)}")
        bins = (self.bins or 256) if bins is None else bins
        check_grid(x0, bins if decoder == "discretized" else None)
        B, K, dims = x0.shape[0], t_samples, int(x0[0].numel())
        schedule = self._resolve(model)[0]
        den = Denoiser(model, self.view(schedule), self.prediction, clip)
        u = torch.rand(B, 1, generator=generator, dtype=torch.float64)
        # [B*K], example-major
        t01 = torch.remainder(u + torch.arange(K, dtype=torch.float64) / K, 1.0).flatten()
        tau = (t01 * (self.timesteps - 1)).float().double()
        rows = torch.arange(B).repeat_interleave(K)
        per_row = torch.empty(B * K, dtype=torch.float64)
        starts = range(0, B * K, max(1, max_batch))
        for start in progress_iter(starts, len(starts), progress, "bound"):
            part = slice(start, start + max(1, max_batch))
            x = x0[rows[part].to(x0.device)]
            eps = _randn(x.shape, generator, x)
            gamma, dgamma, _ = schedule.evaluate(tau[part].to(x.device) / (self.timesteps - 1))
            z = bcast(torch.sigmoid(-gamma).sqrt(), x) * x + bcast(torch.sigmoid(gamma).sqrt(), x) * eps
            _, eps_hat = den(z, tau[part])
            mse = (eps - eps_hat).double().pow(2).flatten(1).sum(1)
            per_row[part] = (0.5 * dgamma * mse).cpu()  # eq. 17, one (t, eps) each
        g0, g1 = schedule.endpoints(x0)
        y = x0.double() + torch.exp(0.5 * g0) * _randn(x0.shape, generator, x0).double()
        if decoder == "discretized":
            dec = categorical_decoder_nll(x0, y, g0, bins)
        else:
            dec = gaussian_decoder_nll(x0, y, g0)
        bits = 1.0 / (dims * math.log(2.0))
        return VDMBound(
            prior=prior_kl(x0, g1).cpu() * bits,
            diffusion=per_row.reshape(B, K).mean(1) * bits,
            decoder=dec.flatten(1).sum(1).cpu() * bits,
        )

    def bits_per_dim(self, model: Model, x0: torch.Tensor, **kwargs) -> torch.Tensor:
        """The bound ``prior + L_inf + decoder`` in bits per dimension, ``[B]`` (:meth:`vlb_terms`)."""
        return self.vlb_terms(model, x0, **kwargs).total

    # ----------------------------------------------------------------- probability-flow likelihood
    def ode_view(self, model: Model):
        """This process seen by the probability-flow ODE (:class:`difflab.ode_likelihood.ODEView`):
        ``lambda_start = -gamma(0)``, ``lambda_end = -gamma(1)`` and ``eps(x, lam)`` evaluating the model
        at the model time of ``lam`` (the monotone schedule inverted by bisection), differentiable in
        ``x``."""
        schedule = self._resolve(model)[0]
        view = self.view(schedule)
        den = Denoiser(model, view, self.prediction)

        def eps(x: torch.Tensor, lam: float) -> torch.Tensor:
            tau = view.time_of_log_snr(torch.tensor(float(lam), dtype=torch.float64)).float().double()
            return den(x, tau)[1]

        g0, g1 = (float(v.detach()) for v in schedule.endpoints())
        return ODEView(-g0, -g1, eps)
