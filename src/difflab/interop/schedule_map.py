"""diffusers' discrete-time scheduler configs <-> difflab's :class:`~difflab.GaussianDiffusion`.

A diffusers ``scheduler_config.json`` (``DDPMScheduler``, ``DDIMScheduler`` and the other schedulers
that share DDPM's discrete training chain) fixes the training process by ``num_train_timesteps``,
``beta_schedule`` / ``beta_start`` / ``beta_end`` or ``trained_betas``, ``prediction_type`` and (for
ancestral sampling) ``variance_type``. Both libraries index that chain the same way: timestep ``i`` in
``[0, T-1]`` has ``alpha_bar_i = prod_{j <= i} (1 - beta_j)``, so index 0 is the first noise step in
both (the DDPM paper's ``t = 1``). diffusers' UNets take the raw index ``i``: no rescaling.

The betas are computed here in float64 from the config's formulas; diffusers evaluates the same
formulas in float32, so the two ``alpha_bar`` agree to float32 rounding (~1e-7 relative).

Sampling timesteps (``timestep_spacing``, Lin et al. 2024, "Common Diffusion Noise Schedules and
Sample Steps are Flawed", table 2), for ``T`` training steps and ``n`` sampling steps:

``linspace``  ``round(linspace(T-1, 0, n))`` -- difflab's ``uniform`` spacing, exactly;
``leading``   ``(n-1) k, ..., k, 0`` with ``k = T // n`` (plus ``steps_offset``) -- diffusers' default;
``trailing``  ``round(T - j T/n) - 1`` for ``j = 0..n-1``: ``T-1, ..., T/n - 1``.

:func:`diffusers_timesteps` returns them as difflab model times, for
:func:`difflab.samplers.make_levels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..processes.ddpm import GaussianDiffusion

#: schedulers whose config describes DDPM's discrete chain (the sampler itself is difflab's choice)
DISCRETE_SCHEDULERS = (
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "DPMSolverMultistepScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "LMSDiscreteScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
)
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
# fixed_small_log draws the same noise as fixed_small (exp(0.5 log beta~) = sqrt(beta~))
VARIANCE_TYPES = {
    "fixed_small": "fixed_small",
    "fixed_small_log": "fixed_small",
    "fixed_large": "fixed_large",
    "learned_range": "learned",
}
SPACINGS = ("linspace", "leading", "trailing")


@dataclass(frozen=True)
class SchedulerMapping:
    """What a diffusers scheduler config says, in difflab's terms.

    ``schedule`` is difflab's schedule name when the betas are exactly one of difflab's (``linear``
    at ``T = 1000`` with DDPM's end points, ``cosine`` = ``squaredcos_cap_v2``), else ``"custom"``.
    ``clip_sample`` and ``timestep_spacing`` are sampling settings of the scheduler, recorded here so
    a caller can follow them."""

    scheduler: str
    timesteps: int
    schedule: str
    prediction: str
    variance: str
    clip_sample: bool
    timestep_spacing: str
    steps_offset: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def betas_from_config(cfg: dict[str, Any]) -> torch.Tensor:
    """The training betas of a diffusers scheduler config, float64 ``[T]``.

    ``linear``: ``linspace(beta_start, beta_end, T)``; ``scaled_linear``: ``linspace(sqrt(beta_start),
    sqrt(beta_end), T)^2`` (latent diffusion); ``squaredcos_cap_v2``: improved DDPM's cosine schedule
    (Nichol & Dhariwal 2021, eq. 17) as ``1 - f((i+1)/T) / f(i/T)`` capped at 0.999; ``sigmoid``
    (GeoDiff): ``sigmoid(linspace(-6, 6, T)) (beta_end - beta_start) + beta_start``;
    ``trained_betas``: as given."""
    T = cfg.get("num_train_timesteps", 1000)
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"num_train_timesteps must be a positive integer, got {T!r}")
    if cfg.get("trained_betas") is not None:
        betas = torch.tensor(cfg["trained_betas"], dtype=torch.float64).flatten()
        if betas.numel() != T:
            raise ValueError(f"trained_betas has {betas.numel()} values but num_train_timesteps is {T}")
        return betas
    kind = cfg.get("beta_schedule", "linear")
    start, end = float(cfg.get("beta_start", 0.0001)), float(cfg.get("beta_end", 0.02))
    if kind == "linear":
        return torch.linspace(start, end, T, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(math.sqrt(start), math.sqrt(end), T, dtype=torch.float64) ** 2
    if kind == "squaredcos_cap_v2":

        def f(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.tensor(
            [min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64
        )
    if kind == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float64)) * (end - start) + start
    raise ValueError(
        f"beta_schedule {kind!r} does not map; difflab reads {', '.join(BETA_SCHEDULES)} or trained_betas"
    )


def _named_schedule(cfg: dict[str, Any], T: int) -> str:
    if cfg.get("trained_betas") is not None:
        return "custom"
    kind = cfg.get("beta_schedule", "linear")
    if kind == "squaredcos_cap_v2":
        return "cosine"
    if (
        kind == "linear"
        and T == 1000
        and (cfg.get("beta_start", 1e-4), cfg.get("beta_end", 0.02)) == (1e-4, 0.02)
    ):
        return "linear"
    return "custom"


def _refuse(cfg: dict[str, Any], key: str, allowed: Any, why: str) -> None:
    value = cfg.get(key)
    if value is not None and value not in (allowed if isinstance(allowed, tuple) else (allowed,)):
        raise ValueError(f"scheduler {key}={value!r} does not map onto difflab: {why}")


def map_scheduler(cfg: dict[str, Any]) -> tuple[GaussianDiffusion, SchedulerMapping]:
    """difflab's process for a diffusers scheduler config (the parsed ``scheduler_config.json``).

    Refuses, naming the key, what has no exact counterpart: another scheduler family (score-SDE VE,
    Karras VE, flow matching, ...), ``rescale_betas_zero_snr`` (``beta_T = 1``: a zero terminal SNR
    that difflab's log-SNR cannot hold), dynamic ``thresholding``, a ``clip_sample_range`` other than
    1, and the ``fixed_large_log`` / ``learned`` variances."""
    name = cfg.get("_class_name", "DDPMScheduler")
    if name not in DISCRETE_SCHEDULERS:
        raise ValueError(
            f"scheduler {name!r} does not map onto difflab's DDPM chain; mapped: "
            f"{', '.join(DISCRETE_SCHEDULERS)}"
        )
    _refuse(cfg, "rescale_betas_zero_snr", False, "a zero terminal SNR (beta_T = 1) has no finite log-SNR")
    _refuse(
        cfg, "thresholding", False, "dynamic thresholding is not implemented; difflab clips x0 to [-1, 1]"
    )
    if cfg.get("clip_sample", True):
        _refuse(cfg, "clip_sample_range", 1.0, "difflab clips images to [-1, 1] only")
    _refuse(cfg, "timestep_type", "discrete", "only discrete timesteps map")
    _refuse(cfg, "use_flow_sigmas", False, "flow matching is not DDPM's chain")
    pred = cfg.get("prediction_type", "epsilon")
    if pred not in PREDICTIONS:
        raise ValueError(
            f"scheduler prediction_type={pred!r} does not map; allowed: {', '.join(PREDICTIONS)}"
        )
    vt = cfg.get("variance_type") or "fixed_small"
    if vt not in VARIANCE_TYPES:
        raise ValueError(f"scheduler variance_type={vt!r} does not map; allowed: {', '.join(VARIANCE_TYPES)}")
    spacing = cfg.get("timestep_spacing", "leading")
    if spacing not in SPACINGS:
        raise ValueError(f"scheduler timestep_spacing={spacing!r} is unknown; allowed: {', '.join(SPACINGS)}")
    betas = betas_from_config(cfg)
    T = int(betas.numel())
    mapping = SchedulerMapping(
        scheduler=name,
        timesteps=T,
        schedule=_named_schedule(cfg, T),
        prediction=PREDICTIONS[pred],
        variance=VARIANCE_TYPES[vt],
        clip_sample=bool(cfg.get("clip_sample", True)),
        timestep_spacing=spacing,
        steps_offset=int(cfg.get("steps_offset", 0)),
    )
    try:
        diffusion = GaussianDiffusion(betas, prediction=mapping.prediction, variance=mapping.variance)
    except ValueError as exc:
        raise ValueError(f"scheduler betas do not map: {exc}") from None
    return diffusion, mapping


def diffusers_timesteps(
    timesteps: int, steps: int, spacing: str = "leading", steps_offset: int = 0
) -> torch.Tensor:
    """The decreasing timesteps diffusers' ``set_timesteps(steps)`` walks for ``T = timesteps``
    training steps, as float64 difflab model times (see the module docstring for the formulas).

    With ``make_levels`` they make difflab's samplers walk diffusers' chain: ``ancestral`` reproduces
    ``DDPMScheduler`` for every spacing; ``ddim`` reproduces ``DDIMScheduler`` (``set_alpha_to_one=True``)
    for ``leading``, and for ``trailing`` when ``n`` divides ``T``: ``DDIMScheduler`` steps from ``t`` to
    ``t - T // n``, which is the next listed timestep only then (not for ``linspace``)."""
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be an integer in [1, {timesteps}], got {steps!r}")
    if spacing == "linspace":
        t = np.linspace(0, timesteps - 1, steps).round()[::-1]
    elif spacing == "leading":
        t = (np.arange(0, steps) * (timesteps // steps)).round()[::-1] + steps_offset
    elif spacing == "trailing":
        t = np.round(np.arange(timesteps, 0, -timesteps / steps)) - 1
    else:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    t = torch.tensor(t.astype(np.float64).copy())
    if float(t.max()) > timesteps - 1 or float(t.min()) < 0:
        raise ValueError(
            f"timestep_spacing {spacing!r} with steps_offset={steps_offset} leaves [0, {timesteps - 1}]"
        )
    return t


def scheduler_config_for(diffusion: GaussianDiffusion, clip_sample: bool = True) -> dict[str, Any]:
    """A ``DDPMScheduler`` config for difflab's process (the inverse of :func:`map_scheduler`):
    ``linear`` at ``T = 1000`` and ``cosine`` by name, any other betas as ``trained_betas``;
    ``timestep_spacing = "linspace"``, difflab's ``uniform``."""
    pred = {v: k for k, v in PREDICTIONS.items()}[diffusion.prediction]
    variance = {"fixed_small": "fixed_small", "fixed_large": "fixed_large", "learned": "learned_range"}
    cfg: dict[str, Any] = {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": diffusion.timesteps,
        "prediction_type": pred,
        "variance_type": variance[diffusion.variance],
        "clip_sample": clip_sample,
        "clip_sample_range": 1.0,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
    }
    if diffusion.schedule_name == "linear" and diffusion.timesteps == 1000:
        cfg.update(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, trained_betas=None)
    elif diffusion.schedule_name == "cosine":
        cfg.update(beta_schedule="squaredcos_cap_v2", trained_betas=None)
    else:
        cfg.update(beta_schedule="linear", trained_betas=[float(b) for b in diffusion.schedule.betas])
    return cfg


__all__ = [
    "BETA_SCHEDULES",
    "DISCRETE_SCHEDULERS",
    "SPACINGS",
    "SchedulerMapping",
    "betas_from_config",
    "diffusers_timesteps",
    "map_scheduler",
    "scheduler_config_for",
]
