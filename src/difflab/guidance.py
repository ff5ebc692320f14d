"""Classifier-free guidance (Ho & Salimans 2022) as a plain ``model(x, t)`` for any sampler.

A class-conditional network ``model(x, t, y=labels)`` trained with label dropout (the null class
``num_classes`` replaces a share of the labels) predicts both the conditional and the unconditional
output. Guidance extrapolates from one to the other::

    out = out_uncond + scale * (out_cond - out_uncond)

``scale = 1`` is the plain conditional model, ``scale = 0`` the unconditional one, ``scale > 1``
sharpens the class (the DDPM-paper convention ``eps = (1 + w) eps_cond - w eps_uncond`` is
``scale = 1 + w``). The two weights sum to one, so combining raw outputs is the same as combining
``eps``, ``x0``, ``v``, the score or a preconditioned denoiser ``D``: each is an affine function of
the output with coefficients that do not depend on it. Both halves come from one batched forward
pass over ``[x; x]`` with labels ``[y; null]``, so a guided step costs one network call on a doubled
batch (one evaluation in a :class:`~difflab.Denoiser`'s ``nfe``).

A network with learned variances returns ``2 C`` channels ``[prediction, v]`` (dimension 1): only the
prediction is guided; the variance channels are the conditional model's (as GLIDE does), since an
extrapolated ``v`` would leave the range the variance was trained on.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

ConditionalModel = Callable[..., torch.Tensor]


class ClassifierFreeGuidance:
    """``(x, t) -> out_uncond + scale (out_cond - out_uncond)`` for labels ``y`` (see the module)."""

    def __init__(self, model: ConditionalModel, y, scale: float, null_class: int):
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"guidance scale must be a finite number (1 = conditional), got {scale!r}")
        if isinstance(null_class, bool) or not isinstance(null_class, int) or null_class < 0:
            raise ValueError(f"null_class must be an integer >= 0 (num_classes), got {null_class!r}")
        y = torch.as_tensor(y)
        if y.is_floating_point() or y.dim() > 1:
            raise ValueError(f"labels y must be an integer or an integer tensor [B], got {y!r}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= null_class):
            raise ValueError(
                f"labels must lie in [0, {null_class}) (class {null_class} is the null class), "
                f"found [{int(y.min())}, {int(y.max())}]"
            )
        self.model, self.y, self.scale, self.null_class = model, y.long(), float(scale), null_class

    def labels(self, batch: int, device) -> torch.Tensor:
        """``y`` for a batch of ``batch`` rows (a single label is repeated)."""
        if self.y.dim() == 0:
            return self.y.expand(batch).to(device)
        if self.y.shape[0] != batch:
            raise ValueError(f"{self.y.shape[0]} labels for a batch of {batch} rows; pass one label per row")
        return self.y.to(device)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        y = self.labels(B, x.device)
        t = torch.as_tensor(t, device=x.device).expand(B)
        if self.scale == 1.0:  # the conditional model itself: no unconditional half needed
            return self.model(x, t, y=y)
        null = torch.full_like(y, self.null_class)
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, null]))
        cond, uncond = out[:B], out[B:]
        guided = uncond + self.scale * (cond - uncond)
        C = x.shape[1] if x.dim() >= 2 else 0
        if C and out.dim() == x.dim() and out.shape[1] == 2 * C:  # [prediction, v]: keep v conditional
            guided = torch.cat([guided[:, :C], cond[:, C:]], 1)
        return guided


def cfg(model: ConditionalModel, y, scale: float, null_class: int) -> ClassifierFreeGuidance:
    """Classifier-free guidance of ``model(x, t, y=...)`` towards labels ``y`` (an int or ``[B]``) with
    guidance ``scale`` (1 = conditional); ``null_class`` is the unconditional label (``num_classes``).

    Example::

        guided = difflab.guidance.cfg(unet, y=torch.arange(100) % 10, scale=2.5, null_class=10)
        x = diffusion.sample(guided, (100, 1, 8, 8), sampler="dpm++2m", steps=30)
    """
    return ClassifierFreeGuidance(model, y, scale, null_class)


__all__ = ["ClassifierFreeGuidance", "cfg"]
