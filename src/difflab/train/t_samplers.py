"""Samplers of the training time ``t``: ``sample(batch, generator) -> (t, weights)``.

:class:`UniformTimesteps` draws from the process's own training distribution (``sample_t``: DDPM's
``U{0..T-1}``, Algorithm 1; VDM's antithetic uniform times; EDM's log-normal ``sigma``; flow
matching's uniform or logit-normal ``t``) with weights 1: the default. :class:`ImportanceTimesteps`
is improved DDPM's eq. 17: ``p_t ~ sqrt(E[L_t^2])`` from the last 10 losses of each of the ``T``
steps, weights ``1/(T p_t)``, for a process that declares ``discrete_steps``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..checks import check_int, check_number
from ..processes.protocol import Process

T_SAMPLERS = ("uniform", "importance")


class UniformTimesteps:
    """``t`` from the process's own training distribution (``diffusion.sample_t``: ``U{0..T-1}`` for
    DDPM, Algorithm 1) with weights 1. The trainer's default; it learns nothing from losses."""

    kind = "uniform"
    learns = False

    def __init__(self, diffusion: Process):
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
            check_int(name, value, low)
        u = check_number("uniform_prob", uniform_prob, 0.0)
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


def make_t_sampler(name: str, diffusion: Process) -> UniformTimesteps | ImportanceTimesteps:
    """The timestep sampler called ``name`` (``train.t_sampler``) for ``diffusion``; importance
    sampling needs a process that declares ``discrete_steps`` (it weighs the chain's ``T`` terms)."""
    if name == "uniform":
        return UniformTimesteps(diffusion)
    if name == "importance":
        steps = getattr(diffusion, "discrete_steps", None)
        if steps is None:
            raise ValueError(
                f"train.t_sampler='importance' samples the T steps of the DDPM chain (diffusion.process "
                f"= 'vp'); {type(diffusion).__name__} draws its own training times: use 'uniform'"
            )
        return ImportanceTimesteps(steps)
    raise ValueError(f"unknown t_sampler {name!r}; choose one of {', '.join(T_SAMPLERS)}")


__all__ = ["T_SAMPLERS", "ImportanceTimesteps", "UniformTimesteps", "make_t_sampler"]
