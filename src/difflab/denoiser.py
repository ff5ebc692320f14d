"""A network seen through its prediction: ``(x_t, t) -> (x0_hat, eps_hat)``.

Samplers and the bound only ever talk to a :class:`Denoiser`; how the network was trained
(``eps``, ``x0`` or ``v`` target) is converted here, exactly, by :func:`gaussian.to_x0_eps`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .gaussian import check_prediction, to_x0_eps
from .schedules import DiscreteSchedule

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Denoiser:
    """Evaluates ``model(x_t, t)`` and returns ``(x0_hat, eps_hat)``.

    ``t`` is a float64 scalar or ``[B]`` tensor of model times in ``[0, T-1]``; the network receives
    a float32 ``[B]`` tensor on ``x_t``'s device. ``clip`` (e.g. ``(-1, 1)`` for images) clamps
    ``x0_hat`` and recomputes ``eps_hat`` from it so the pair stays consistent with ``x_t``.
    ``nfe`` counts network evaluations.
    """

    def __init__(
        self,
        model: Model,
        schedule: DiscreteSchedule,
        prediction: str = "eps",
        clip: tuple[float, float] | None = None,
    ):
        self.model = model
        self.schedule = schedule
        self.prediction = check_prediction(prediction)
        self.clip = clip
        self.nfe = 0

    def raw(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network output itself, with shape checked against ``x_t``."""
        t_vec = torch.as_tensor(t, dtype=torch.float64).expand(x_t.shape[0])
        out = self.model(x_t, t_vec.to(device=x_t.device, dtype=torch.float32))
        self.nfe += 1
        if not isinstance(out, torch.Tensor) or out.shape != x_t.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"model returned {got} for an input of shape {tuple(x_t.shape)}; a model "
                f"predicting {self.prediction!r} must return a tensor of the input's shape"
            )
        return out

    def __call__(self, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64)
        # one (alpha, sigma) pair for a shared scalar t, else one per example
        alpha, sigma = (_bcast(v, x_t) for v in self.schedule.alpha_sigma(t.reshape(-1)))
        x0, eps = to_x0_eps(self.raw(x_t, t), self.prediction, x_t, alpha, sigma)
        if self.clip is not None:
            x0 = x0.clamp(*self.clip)
            eps = (x_t - alpha * x0) / sigma
        return x0, eps


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A float64 ``[B]`` coefficient as ``x``'s dtype and device, shaped to broadcast over ``x``."""
    return v.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
