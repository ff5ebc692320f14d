"""Training objectives of the DDPM chain: ``L_simple``, ``L_vlb``, ``L_hybrid``, SNR weightings and
the samplers of the training timestep ``t``.

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

  ========== ================================ ================================ =====================
  weighting  eps target                       x0 target                        v target
  ========== ================================ ================================ =====================
  min_snr    ``min(SNR, g) / SNR``            ``min(SNR, g)``                  ``min(SNR, g)/(SNR+1)``
  p2         ``1 / (k + SNR)^gamma``          ``SNR / (k + SNR)^gamma``        ``SNR/((SNR+1)(k+SNR)^gamma)``
  ========== ================================ ================================ =====================

  min-SNR-gamma (Hang et al. 2023, eq. 8; default ``g = 5``): effective ``x_0``-space weight
  ``min(SNR, g)``. P2 (Choi et al. 2022, eq. 8): ``lambda'_t = lambda_t / (k + SNR_t)^gamma`` where
  ``lambda_t`` is ``L_simple``'s weight on the ``eps`` error (1), so the ``eps``-space factor is
  ``(k + SNR)^-gamma`` (paper defaults ``k = 1``, ``gamma = 1``; ``gamma = 0`` is ``L_simple``).

Timestep samplers (``sample(batch, generator) -> (t, weights)``): :class:`UniformTimesteps` (the
process's own ``sample_t``, weights 1: the default) and :class:`ImportanceTimesteps` (improved DDPM
eq. 17: ``p_t ~ sqrt(E[L_t^2])`` from the last 10 losses of each ``t``, weights ``1/(T p_t)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from .gaussian import check_prediction, target_of
from .likelihood import DECODERS, term_nats

if TYPE_CHECKING:
    from .denoiser import Model
    from .diffusion import GaussianDiffusion

OBJECTIVES = ("simple", "hybrid", "vlb")
WEIGHTINGS = ("none", "min_snr", "p2")
T_SAMPLERS = ("uniform", "importance")

__all__ = [
    "OBJECTIVES",
    "T_SAMPLERS",
    "WEIGHTINGS",
    "ImportanceTimesteps",
    "Objective",
    "UniformTimesteps",
    "loss",
    "make_t_sampler",
    "snr_weight",
    "vlb_term",
]


def _number(name: str, value: Any, low: float, strict: bool) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or (value <= low if strict else value < low):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}")
    return float(value)


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
        _number("min_snr_gamma", self.min_snr_gamma, 0.0, strict=True)
        _number("p2_gamma", self.p2_gamma, 0.0, strict=False)
        _number("p2_k", self.p2_k, 0.0, strict=True)
        _number("vlb_weight", self.vlb_weight, 0.0, strict=False)
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
        per = {"eps": (g / snr).clamp(max=1.0), "x0": clipped, "v": clipped / (snr + 1)}
        return per[prediction]
    base = (objective.p2_k + snr) ** (-objective.p2_gamma)  # the eps-space weight
    return {"eps": base, "x0": snr * base, "v": snr / (snr + 1) * base}[prediction]


def vlb_term(
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    x0_hat: torch.Tensor,
    log_var: torch.Tensor,
    bins: int = 256,
    decoder: str = "discretized",
) -> torch.Tensor:
    """``L_t`` of the bound in bits/dim ``[B]`` for one draw ``x_t`` at integer indices ``t`` (the KL
    for ``t >= 1``, the decoder NLL at ``t = 0``; see :func:`difflab.likelihood.term_nats`), with
    ``p_theta(x_{t-1}|x_t) = N(mu~(x_t, x0_hat), e^log_var)``."""
    nats = term_nats(diffusion, x0, x_t, t, x0_hat, log_var, bins=bins, decoder=decoder)
    return nats / (x0[0].numel() * math.log(2.0))


def loss(
    diffusion: GaussianDiffusion,
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
    t64 = diffusion._t_for(x0, t)
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
    idx = diffusion._integer_t(x0, t)
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


# ---------------------------------------------------------------------------- timestep samplers
class UniformTimesteps:
    """``t`` from the process's own training distribution (``diffusion.sample_t``: ``U{0..T-1}`` for
    DDPM, Algorithm 1) with weights 1. The trainer's default; it learns nothing from losses."""

    kind = "uniform"
    learns = False

    def __init__(self, diffusion: GaussianDiffusion):
        self.diffusion = diffusion

    def sample(
        self, batch: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.diffusion.sample_t(batch, generator)
        return t, torch.ones(batch, dtype=torch.float64)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Nothing to learn."""

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, self.kind)


class ImportanceTimesteps:
    """Importance sampling of ``t`` for ``L_vlb`` (improved DDPM sec. 3.3, eq. 17):

        L_vlb = E_{t ~ p_t} [ L_t / (T p_t) ],     p_t ~ sqrt(E[L_t^2]),  sum_t p_t = 1.

    ``E[L_t^2]`` is the mean of the squares of the last ``history`` (10) losses seen at ``t``. Until
    every ``t`` has ``history`` of them, ``t ~ U{0..T-1}`` (drawn exactly as
    ``GaussianDiffusion.sample_t`` draws it) with weights 1. Afterwards ``p`` is mixed with a share
    ``uniform_prob`` of the uniform distribution, ``p_t = (1 - u) sqrt(E[L_t^2]) / sum_s sqrt(E[L_s^2])
    + u / T``, so no ``t`` is starved and every weight ``1/(T p_t) <= 1/u`` stays bounded. The default
    ``u = 0.001`` is the reference implementation's (improved-diffusion ``resample.py``); the paper does
    not state it. The weights make the estimator unbiased: ``E_p[L_t / (T p_t)] = (1/T) sum_t L_t``.

    It is meant for ``L_vlb``, whose terms differ by orders of magnitude across ``t``; with another
    objective it samples by that objective's losses instead (improved DDPM found no gain for
    ``L_hybrid``). The sampler holds state: :meth:`update` it with the unweighted per-example losses
    after each step (in data-parallel training, the losses of the global batch, in the same order on
    every rank), and keep :meth:`state_dict` in checkpoints.
    """

    kind = "importance"
    learns = True

    def __init__(self, timesteps: int, history: int = 10, uniform_prob: float = 1e-3):
        for name, value, low in (("timesteps", timesteps, 1), ("history", history, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        u = _number("uniform_prob", uniform_prob, 0.0, strict=False)
        if u > 1:
            raise ValueError(f"uniform_prob must lie in [0, 1], got {uniform_prob!r}")
        self.timesteps, self.history, self.uniform_prob = timesteps, history, u
        self.losses = torch.zeros(timesteps, history, dtype=torch.float64)  # newest last
        self.counts = torch.zeros(timesteps, dtype=torch.int64)

    @property
    def ready(self) -> bool:
        """Whether every ``t`` has its ``history`` losses (before that, sampling is uniform)."""
        return bool((self.counts == self.history).all())

    def probabilities(self) -> torch.Tensor:
        """``p_t``, float64 ``[T]`` (uniform until :attr:`ready`, or if every loss is 0)."""
        T = self.timesteps
        uniform = torch.full((T,), 1.0 / T, dtype=torch.float64)
        if not self.ready:
            return uniform
        rms = self.losses.pow(2).mean(1).sqrt()
        total = float(rms.sum())
        if not (total > 0 and math.isfinite(total)):
            return uniform
        return (1 - self.uniform_prob) * rms / total + self.uniform_prob / T

    def sample(
        self, batch: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t, weights)``: int64 ``[batch]`` indices and float64 ``[batch]`` weights ``1/(T p_t)``."""
        if not self.ready:
            t = torch.randint(0, self.timesteps, (batch,), generator=generator, device="cpu")
            return t, torch.ones(batch, dtype=torch.float64)
        p = self.probabilities()
        t = torch.multinomial(p, batch, replacement=True, generator=generator)
        return t, 1.0 / (self.timesteps * p[t])

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record ``losses[i]`` (unweighted, detached) as the newest loss of ``t[i]``, in order."""
        t = torch.as_tensor(t).detach().cpu().long().flatten()
        losses = torch.as_tensor(losses).detach().cpu().to(torch.float64).flatten()
        if t.shape != losses.shape:
            raise ValueError(
                f"update needs one loss per timestep, got {t.numel()} t and {losses.numel()} losses"
            )
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.timesteps - 1}], got {t.tolist()}")
        if not bool(torch.isfinite(losses).all()):
            raise ValueError("update got a non-finite loss; the importance sampler keeps finite losses only")
        H = self.history
        for ti, li in zip(t.tolist(), losses.tolist()):
            n = int(self.counts[ti])
            if n == H:
                self.losses[ti, :-1] = self.losses[ti, 1:].clone()
                self.losses[ti, -1] = li
            else:
                self.losses[ti, n] = li
                self.counts[ti] = n + 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "history": self.history,
            "uniform_prob": self.uniform_prob,
            "losses": self.losses.clone(),
            "counts": self.counts.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, self.kind)
        losses, counts = state["losses"], state["counts"]
        if tuple(losses.shape) != (self.timesteps, self.history) or tuple(counts.shape) != (self.timesteps,):
            raise ValueError(
                f"the saved importance sampler holds {tuple(losses.shape)} losses; this one needs "
                f"(timesteps, history) = ({self.timesteps}, {self.history})"
            )
        self.losses = losses.to(torch.float64).clone()
        self.counts = counts.to(torch.int64).clone()


def _check_kind(state: dict[str, Any], kind: str) -> None:
    if state.get("kind") != kind:
        raise ValueError(f"cannot load a {state.get('kind')!r} timestep sampler's state into a {kind!r} one")


def make_t_sampler(name: str, diffusion: GaussianDiffusion) -> UniformTimesteps | ImportanceTimesteps:
    """The timestep sampler called ``name`` (``train.t_sampler``) for ``diffusion``."""
    if name == "uniform":
        return UniformTimesteps(diffusion)
    if name == "importance":
        from .diffusion import GaussianDiffusion

        discrete = (
            isinstance(diffusion, GaussianDiffusion)
            and getattr(diffusion, "preconditioning", None) is None
            and type(diffusion).sample_t is GaussianDiffusion.sample_t
        )
        if not discrete:
            raise ValueError(
                f"train.t_sampler='importance' samples the T steps of the DDPM chain (diffusion.process "
                f"= 'vp'); {type(diffusion).__name__} draws its own training times: use 'uniform'"
            )
        return ImportanceTimesteps(diffusion.timesteps)
    raise ValueError(f"unknown t_sampler {name!r}; choose one of {', '.join(T_SAMPLERS)}")
