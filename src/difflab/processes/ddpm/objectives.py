"""Training objectives of the DDPM chain: ``L_simple``, ``L_vlb``, ``L_hybrid`` and SNR weightings.

Notation: model index ``t`` in ``[0, T-1]`` is the notes' ``t + 1``; ``SNR_t = alpha_bar_t /
(1 - alpha_bar_t) = e^lambda_t``; ``D`` is the number of dimensions of one example.

* ``L_simple`` (DDPM eq. 14): ``|| target - prediction ||^2`` averaged over dimensions, the target
  being ``eps``, ``x0`` or ``v`` (:func:`difflab.gaussian.target_of`).
* ``L_vlb`` (improved DDPM, Nichol & Dhariwal 2021, eqs. 4-6): for one ``t ~ U{0..T-1}`` the term
  ``L_t`` of the bound in **bits per dimension** (nats / (D ln 2)), i.e. ``KL(q(x_{t-1}|x_t,x_0) ||
  p_theta(x_{t-1}|x_t))`` for ``t >= 1`` and the decoder NLL ``-log p_theta(x_0|x_1)`` at ``t = 0``;
  the per-example loss is ``T * L_t``, an unbiased one-sample estimate of ``sum_t L_t``, the bound
  without its constant prior term ``L_T`` (improved-diffusion's ``RESCALED_KL``). Gradients flow into
  the mean and, with ``variance="learned"``, the variance.
* ``L_hybrid = L_simple + lambda L_vlb`` (improved DDPM sec. 3.1, ``lambda = 0.001``) with the
  gradient of the **mean** stopped in ``L_vlb``: the ``L_vlb`` part trains only the variance channels.
  With ``L_vlb = T L_t`` this is improved-diffusion's ``mse + (T/1000) vb`` exactly.
* weightings of the ``L_simple`` part (never of ``L_vlb``), each a factor per example on the squared
  error of the network's own target, chosen so that the effective weight on ``||x_0 - x0_hat||^2``
  is the same for every target (``||eps - eps_hat||^2 = SNR ||x_0 - x0_hat||^2`` and
  ``||v - v_hat||^2 = (SNR + 1) ||x_0 - x0_hat||^2`` at a fixed ``x_t``):

  ========== =========================== ================================== ========================
  weighting  eps target                  x0 target                          v target
  ========== =========================== ================================== ========================
  min_snr    ``min(SNR, g) / SNR``       ``min(SNR, g)``                    ``min(SNR, g)/(SNR+1)``
  p2         ``1 / (k + SNR)^gamma``     ``SNR / (k + SNR)^gamma``          ``SNR/((SNR+1)(k+SNR)^gamma)``
  ========== =========================== ================================== ========================

  and for the flow target ``min(SNR, g)/r`` (min-SNR) and ``SNR/(r (k + SNR)^gamma)`` (P2), with
  ``r = (sqrt(SNR) + 1)^2`` for the flow velocity ``u = eps - x0``: at a fixed ``x_t``,
  ``u - u_hat = -(alpha/sigma + 1)(x0 - x0_hat)`` on any path.

  min-SNR-gamma (Hang et al. 2023, eq. 8; default ``g = 5``): effective ``x_0``-space weight
  ``min(SNR, g)``. P2 (Choi et al. 2022, eq. 8): ``lambda'_t = lambda_t / (k + SNR_t)^gamma`` where
  ``lambda_t`` is ``L_simple``'s weight on the ``eps`` error (1), so the ``eps``-space factor is
  ``(k + SNR)^-gamma`` (paper defaults ``k = 1``, ``gamma = 1``; ``gamma = 0`` is ``L_simple``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from ...checks import check_number
from ...gaussian import check_prediction, target_of
from .bound import DECODERS, term_nats

if TYPE_CHECKING:
    from ...denoiser import Model
    from ..protocol import Process

OBJECTIVES = ("simple", "hybrid", "vlb")
WEIGHTINGS = ("none", "min_snr", "p2")

__all__ = [
    "OBJECTIVES",
    "WEIGHTINGS",
    "Objective",
    "loss",
    "snr_weight",
    "vlb_term",
]


@dataclass(frozen=True)
class Objective:
    """What :meth:`GaussianDiffusion.loss <difflab.GaussianDiffusion.loss>` minimises (see the module).

    Args:
        kind: ``"simple"`` (``L_simple``, the default), ``"hybrid"`` (``L_simple + vlb_weight * L_vlb``
            with the mean's gradient stopped in ``L_vlb``; needs ``variance="learned"``) or ``"vlb"``
            (``L_vlb``, gradients into mean and variance).
        weighting: ``"none"``, ``"min_snr"`` or ``"p2"``, applied to the ``L_simple`` part.
        min_snr_gamma: ``g`` of min-SNR-gamma (> 0).
        p2_gamma, p2_k: ``gamma`` (>= 0) and ``k`` (> 0) of P2.
        vlb_weight: ``lambda`` of ``L_hybrid`` (improved DDPM: 0.001).
        decoder, bins: the ``L_0`` decoder of ``L_vlb``: ``"discretized"`` on ``bins`` levels over
            ``[-1, 1]`` (images; 256 for 8-bit data) or ``"gaussian"`` (a density, continuous data).
    """

    kind: str = "simple"
    weighting: str = "none"
    min_snr_gamma: float = 5.0
    p2_gamma: float = 1.0
    p2_k: float = 1.0
    vlb_weight: float = 1e-3
    decoder: str = "discretized"
    bins: int = 256

    def __post_init__(self):
        if self.kind not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.kind!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        if self.kind == "vlb" and self.weighting != "none":
            raise ValueError(
                f"weighting {self.weighting!r} applies to the L_simple part of the loss; objective 'vlb' "
                "has none (use objective 'simple' or 'hybrid', or weighting 'none')"
            )
        check_number("min_snr_gamma", self.min_snr_gamma, 0.0, strict=True)
        check_number("p2_gamma", self.p2_gamma, 0.0)
        check_number("p2_k", self.p2_k, 0.0, strict=True)
        check_number("vlb_weight", self.vlb_weight, 0.0)
        if self.decoder not in DECODERS:
            raise ValueError(f"unknown decoder {self.decoder!r}; choose one of {', '.join(DECODERS)}")
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {self.bins!r}")

    @classmethod
    def of(cls, spec: str | Objective | None, base: Objective | None = None) -> Objective:
        """``spec`` as an :class:`Objective`: a name replaces ``base``'s ``kind`` (other fields kept)."""
        base = cls() if base is None else base
        if spec is None:
            return base
        if isinstance(spec, Objective):
            return spec
        if isinstance(spec, str):
            return replace(base, kind=spec)
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)} or an Objective, got {spec!r}")


def snr_weight(objective: Objective, prediction: str, snr: torch.Tensor) -> torch.Tensor | None:
    """The per-example factor on the squared error of ``prediction``'s target (table in the module
    docstring), ``None`` for ``weighting="none"``. ``snr`` is ``alpha_bar_t / (1 - alpha_bar_t)``."""
    check_prediction(prediction)
    if objective.weighting == "none":
        return None
    if objective.weighting == "min_snr":
        g = objective.min_snr_gamma
        clipped = snr.clamp(max=g)  # min(SNR, g): the x0-space weight
        flow = (snr.sqrt() + 1) ** 2
        per = {"eps": (g / snr).clamp(max=1.0), "x0": clipped, "v": clipped / (snr + 1),
               "flow": clipped / flow}
        return per[prediction]
    base = (objective.p2_k + snr) ** (-objective.p2_gamma)  # the eps-space weight
    flow = (snr.sqrt() + 1) ** 2
    return {"eps": base, "x0": snr * base, "v": snr / (snr + 1) * base, "flow": snr / flow * base}[prediction]


def vlb_term(
    diffusion: Process,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    x0_hat: torch.Tensor,
    log_var: torch.Tensor,
    bins: int = 256,
    decoder: str = "discretized",
) -> torch.Tensor:
    """``L_t`` of the bound in bits/dim ``[B]`` for one draw ``x_t`` at integer indices ``t`` (the KL
    for ``t >= 1``, the decoder NLL at ``t = 0``; see :func:`difflab.processes.ddpm.bound.term_nats`), with
    ``p_theta(x_{t-1}|x_t) = N(mu~(x_t, x0_hat), e^log_var)``."""
    nats = term_nats(diffusion, x0, x_t, t, x0_hat, log_var, bins=bins, decoder=decoder)
    return nats / (x0[0].numel() * math.log(2.0))


def loss(
    diffusion: Process,
    model: Model,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    objective: Objective,
) -> torch.Tensor:
    """The per-example loss ``[B]`` of ``objective`` at timesteps ``t`` with noise ``noise``."""
    learned = diffusion.variance == "learned"
    if objective.kind == "simple" and learned:
        raise ValueError(
            "variance='learned' trains the variance only through the bound, but the objective is 'simple' "
            "(L_simple); use objective 'hybrid' (L_simple + 0.001 L_vlb, improved DDPM) or 'vlb'"
        )
    if objective.kind == "hybrid" and not learned:
        raise ValueError(
            f"objective 'hybrid' stops the mean's gradient in L_vlb, so with variance={diffusion.variance!r} "
            "its L_vlb part trains nothing; use variance='learned', or objective 'simple' or 'vlb'"
        )
    x_t = diffusion.q_sample(x0, t, noise)
    t64 = diffusion.model_time(x0, t)
    den = diffusion.denoiser(model)
    pred, v = den.split(den.output(x_t, t64))
    total = None
    if objective.kind in ("simple", "hybrid"):
        alpha, sigma = diffusion.alpha_sigma(t, x0)
        target = target_of(diffusion.prediction, x0, noise, alpha, sigma)
        total = (pred - target).pow(2).flatten(1).mean(1)
        w = snr_weight(objective, diffusion.prediction, torch.exp(diffusion.log_snr(t64)))
        if w is not None:
            total = total * w.to(device=total.device, dtype=total.dtype)
        if objective.kind == "simple":
            return total
    idx = diffusion.integer_t(x0, t)
    work = torch.promote_types(pred.dtype, torch.float32)  # the bound in >= float32 under autocast
    pred_w = pred.detach() if objective.kind == "hybrid" else pred  # L_hybrid: L_vlb trains no mean
    x_w = x_t.to(work)
    x0_hat, _ = den.to_x0_eps(pred_w.to(work), x_w, t64)
    log_var = diffusion.model_log_variance(idx, x_w, None if v is None else v.to(work))
    scaled = diffusion.timesteps * vlb_term(
        diffusion, x0.to(work), x_w, idx, x0_hat, log_var, bins=objective.bins, decoder=objective.decoder
    )
    if total is None:
        return scaled
    return total + objective.vlb_weight * scaled.to(total.dtype)
