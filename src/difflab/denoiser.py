"""A network seen through its prediction: ``(x_t, t) -> (x0_hat, eps_hat)``.

Samplers and the bound only ever talk to a :class:`Denoiser`; how the network was trained
(``eps``, ``x0`` or ``v`` target) is converted here, exactly, by :func:`gaussian.to_x0_eps`.

A network with learned reverse variances (improved DDPM, Nichol & Dhariwal 2021, sec. 3.1) returns
``2 C`` channels ``[prediction, v]`` along dimension 1; the Denoiser splits them, so every sampler
reads ``(x0_hat, eps_hat)`` from the first ``C`` channels and only the ancestral sampler and the bound
read the variance channel ``v`` (:meth:`Denoiser.predict`).
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

    With ``learned_variance`` the network returns ``2 C`` channels (dimension 1) ``[prediction, v]``:
    ``__call__`` and :meth:`raw` use the prediction half, :meth:`predict` also returns ``v``.
    """

    def __init__(
        self,
        model: Model,
        schedule: DiscreteSchedule,
        prediction: str = "eps",
        clip: tuple[float, float] | None = None,
        learned_variance: bool = False,
    ):
        self.model = model
        self.schedule = schedule
        self.prediction = check_prediction(prediction)
        self.clip = clip
        self.learned_variance = bool(learned_variance)
        self.nfe = 0

    def output(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network output itself (``2 C`` channels with learned variances), shape-checked."""
        t_vec = torch.as_tensor(t, dtype=torch.float64).expand(x_t.shape[0])
        out = self.model(x_t, t_vec.to(device=x_t.device, dtype=torch.float32))
        self.nfe += 1
        want = _doubled(x_t.shape) if self.learned_variance else x_t.shape
        if not isinstance(out, torch.Tensor) or out.shape != want:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"model returned {got} for an input of shape {tuple(x_t.shape)}; "
                + self._shape_rule(got, x_t.shape)
            )
        return out

    def _shape_rule(self, got, shape: torch.Size) -> str:
        if self.learned_variance:
            return (
                f"with variance='learned' a model predicting {self.prediction!r} must return "
                f"{tuple(_doubled(shape))}: the prediction and the variance channels v along dimension 1 "
                "(e.g. UNet(learn_sigma=True), model.learn_sigma = true)"
            )
        hint = ""
        if isinstance(got, tuple) and got == tuple(_doubled(shape)) and len(shape) >= 2:
            hint = (
                "; it looks like a model with learned variances (2x the channels): use "
                "variance='learned' (diffusion.variance = 'learned')"
            )
        return f"a model predicting {self.prediction!r} must return a tensor of the input's shape{hint}"

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(prediction, v)`` of a network output; ``v`` is ``None`` without learned variances."""
        if not self.learned_variance:
            return out, None
        pred, v = out.chunk(2, dim=1)
        return pred, v

    def raw(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The prediction channels of the network output (``eps``, ``x0`` or ``v`` as trained)."""
        return self.split(self.output(x_t, t))[0]

    def to_x0_eps(
        self, pred: torch.Tensor, x_t: torch.Tensor, t
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0_hat, eps_hat)`` of a prediction ``pred`` at ``x_t``, clipped as configured."""
        t = torch.as_tensor(t, dtype=torch.float64)
        # one (alpha, sigma) pair for a shared scalar t, else one per example
        alpha, sigma = (bcast(v, x_t) for v in self.schedule.alpha_sigma(t.reshape(-1)))
        x0, eps = to_x0_eps(pred, self.prediction, x_t, alpha, sigma)
        if self.clip is not None:
            x0 = x0.clamp(*self.clip)
            eps = (x_t - alpha * x0) / sigma
        return x0, eps

    def predict(
        self, x_t: torch.Tensor, t
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(x0_hat, eps_hat, v)``: ``v`` is the raw variance output in ``[-1, 1]`` nominally
        (improved DDPM eq. 15 uses ``frac = (v + 1)/2``), ``None`` without learned variances."""
        pred, v = self.split(self.output(x_t, torch.as_tensor(t, dtype=torch.float64)))
        x0, eps = self.to_x0_eps(pred, x_t, t)
        return x0, eps, v

    def __call__(self, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        x0, eps, _ = self.predict(x_t, t)
        return x0, eps


def _doubled(shape: torch.Size) -> torch.Size:
    """``shape`` with dimension 1 (channels, or the features of vector data) doubled."""
    return torch.Size([shape[0], 2 * shape[1], *shape[2:]]) if len(shape) >= 2 else shape


def bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A float64 ``[B]`` coefficient as ``x``'s dtype and device, shaped to broadcast over ``x``."""
    return v.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
