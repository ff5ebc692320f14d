"""A network that carries its VDM noise schedule (Kingma et al. 2021), so the trainer, EMA, DDP and
checkpoints treat the schedule's parameters as the model's.

:class:`VDMModel` gives the network not the model time but the noise level
``c = 1000 (gamma - gamma_min) / (gamma_max - gamma_min)`` on the ``[0, 1000]`` clock the sinusoidal
embeddings expect, as VDM's score network does (see :mod:`difflab.processes.vdm.diffusion`);
:func:`find_vdm_model` finds it inside wrappers (DDP, ``torch.compile``, guidance closures).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from ...checks import check_int
from .schedule import LogSNRSchedule

NOISE_CLOCK = 1000.0  # VDMModel's noise input to the network runs over [0, NOISE_CLOCK]


class VDMModel(nn.Module):
    """A network and its noise schedule: ``model(z_t, tau)`` calls ``net(z_t, c)`` with the noise input
    ``c = 1000 (gamma(t) - gamma_min)/(gamma_max - gamma_min)``, ``t = tau/(T-1)`` (see the module).

    Args:
        net: ``net(x, c)`` (or ``net(x, c, y=labels)``), any network of the ``model(x, t)`` contract whose
            time embedding expects a ``[0, 1000]`` clock (build it with ``timesteps=1000``).
        schedule: the :class:`~difflab.processes.vdm.schedule.LogSNRSchedule`, a submodule.
        timesteps: ``T`` of the model time ``tau in [0, T-1]``.

    ``forward(x, t, y=None, gamma=None)``: with ``gamma`` given (float ``[B]``) that noise level is used
    as it is (the VDM loss passes the ``gamma(t)`` it computed, gradients and all); else it is
    ``schedule(tau / (T-1))``.
    """

    def __init__(self, net: Callable[..., torch.Tensor], schedule: LogSNRSchedule, timesteps: int = 1000):
        super().__init__()
        if not isinstance(schedule, LogSNRSchedule):
            raise ValueError(
                f"schedule must be a difflab.processes.vdm.schedule.LogSNRSchedule, got "
                f"{type(schedule).__name__}"
            )
        if not callable(net):
            raise ValueError(f"net must be a callable net(x, c), got {type(net).__name__}")
        self.net = net
        self.schedule = schedule
        self.timesteps = check_int("timesteps", timesteps, 2)

    def noise_input(self, gamma: torch.Tensor) -> torch.Tensor:
        """``c = 1000 (gamma - gamma_min) / (gamma_max - gamma_min)``, float32."""
        s = self.schedule
        return (NOISE_CLOCK * (gamma - s.gamma_min) / (s.gamma_max - s.gamma_min)).to(torch.float32)

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        """``gamma`` at model times ``tau`` (float64)."""
        return self.schedule(torch.as_tensor(t).to(torch.float64) / (self.timesteps - 1))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        y: torch.Tensor | None = None,
        *,
        gamma: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if gamma is None:
            t = torch.as_tensor(t, device=x.device)
            if t.dim() == 1 and t.numel() > 1 and bool((t == t[0]).all()):
                t = t[:1]  # samplers pass one shared time: evaluate the schedule once
            gamma = self.gamma(t)
        c = self.noise_input(torch.as_tensor(gamma, device=x.device))
        c = c.expand(x.shape[0]) if c.dim() == 0 or c.numel() == 1 else c
        return self.net(x, c) if y is None else self.net(x, c, y=y)


def find_vdm_model(model) -> tuple[VDMModel | None, bool]:
    """The :class:`VDMModel` inside ``model``, and whether ``model`` passes keyword arguments through
    to it unchanged (DDP, ``torch.compile``, ``functools.partial``). Closures and wrappers that call the
    model their own way (guidance, ``build.conditional``) are searched too; ``(None, False)`` if none."""
    seen: set[int] = set()

    def walk(obj, transparent: bool, depth: int):
        if obj is None or depth > 8 or id(obj) in seen:
            return None
        seen.add(id(obj))
        if isinstance(obj, VDMModel):
            return obj, transparent
        if isinstance(obj, functools.partial):
            return walk(obj.func, transparent, depth + 1)
        if isinstance(obj, nn.Module):
            for name in ("module", "_orig_mod"):  # DistributedDataParallel, torch.compile
                inner = getattr(obj, name, None)
                if isinstance(inner, nn.Module):
                    return walk(inner, transparent, depth + 1)
        inner = getattr(obj, "model", None)
        found = walk(inner, False, depth + 1) if inner is not None else None
        if found is None and hasattr(obj, "__self__"):
            found = walk(obj.__self__, transparent, depth + 1)
        for cell in getattr(obj, "__closure__", None) or ():
            if found is not None:
                break
            try:
                found = walk(cell.cell_contents, False, depth + 1)
            except ValueError:  # an empty cell
                continue
        return found

    return walk(model, True, 0) or (None, False)


__all__ = ["NOISE_CLOCK", "VDMModel", "find_vdm_model"]
