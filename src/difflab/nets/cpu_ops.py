"""The U-Net's CPU kernels (:mod:`difflab.nets.unet`): the same functions as PyTorch's layers, computed in
ways that are faster on a CPU and bit-compatible in what they compute.

:class:`GroupNorm` keeps NCHW around PyTorch's channels_last GroupNorm (25-45x slower in bf16);
:func:`group_norm_film` computes the FiLM ``N(h) * (1 + s) + b`` in one GroupNorm call;
:class:`Dropout` draws its mask with numpy; :func:`matmul_attention` computes short-sequence attention
as two matmuls.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that runs channels_last bf16/fp16 CPU inputs through the NCHW kernel.

    PyTorch's channels_last GroupNorm on CPU is 25-45x slower than its NCHW kernel in bf16 at these
    sizes (forward + backward, torch 2.13), far more than the two layout copies cost; in fp32 it is 3-5x
    slower but the copies eat most of the gain, so fp32 is left alone. The result is the NCHW kernel's,
    handed back in channels_last. The copies still make channels_last the slower layout for this U-Net
    on CPU (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type == "cpu"
            and x.dtype in (torch.bfloat16, torch.float16)
            and x.dim() == 4
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)
        ):
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


def group_norm_film(
    norm: nn.GroupNorm, h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """``norm(h) * scale + shift`` for per-example ``scale``, ``shift`` ``[B, C]``, in one GroupNorm call.

    With ``norm(h) = n * w + beta`` the result is ``n * (w * scale) + (beta * scale + shift)``: a GroupNorm
    with a per-example affine, which is a GroupNorm of ``h`` seen as one example of ``B * C`` channels in
    ``B * groups`` groups (a free view of NCHW memory) with weight ``w * scale`` and bias
    ``beta * scale + shift``. It saves the broadcast multiply-add over ``[B, C, H, W]`` forward and
    backward (slow for NCHW on CPU: the broadcast dimensions are the innermost)."""
    b, c = h.shape[:2]
    weight = scale * norm.weight if norm.weight is not None else scale
    bias = shift + (scale * norm.bias if norm.bias is not None else 0)
    out = F.group_norm(
        h.reshape(1, b * c, *h.shape[2:]), b * norm.num_groups, weight.reshape(-1), bias.reshape(-1), norm.eps
    )
    return out.reshape(h.shape)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU training-mode mask comes from numpy's PCG64 generator.

    ``Tensor.bernoulli_`` on CPU (except on Intel CPUs, where it calls MKL) draws element by element from
    a Mersenne twister and a 53-bit uniform; for the mnist U-Net's 13M dropped-or-kept activations per
    step it was 8% of a bf16 training step, 3x what this takes. The masks follow torch's RNG: the
    generator is seeded by one draw from torch's global generator, so ``torch.manual_seed`` and saved
    RNG states reproduce them. ``p`` is kept exactly: with ``round(p * 2**64) = hi * 2**32 + lo`` (the
    exact value of ``p * 2**64`` for every float64 ``p >= 2**-11``), an element is dropped when its
    uniform 32-bit draw ``r < hi``, or ``r == hi`` and a second 32-bit draw is ``< lo``, so
    ``P(drop) = (hi * 2**32 + lo) / 2**64 = p``. Other devices, ``inplace=True``, ``p = 1`` and code
    traced by ``torch.compile`` use ``F.dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        bits = BITS.get(x.itemsize)
        if x.device.type != "cpu" or self.inplace or not 0.0 < self.p < 1.0 or bits is None or compiling():
            return super().forward(x)  # torch.compile generates its own fast dropout
        # the mask holds 0 and 1 in x's dtype and layout (as F.dropout's does): x * mask is a plain
        # vectorised product, where a bool mask would take a 5-10x slower mixed-dtype loop
        mask = torch.empty_like(x)  # dense, so a flat view covers it
        flat = mask.as_strided((mask.numel(),), (1,)).view(bits).numpy()
        one = torch.ones((), dtype=x.dtype).view(bits).item()
        np.multiply(dropout_keep(flat.size, self.p), flat.dtype.type(one), out=flat)
        return (x * mask).mul_(1.0 / (1.0 - self.p))


BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # element size -> integer dtype of that size


def compiling() -> bool:
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling and is_compiling())


def dropout_keep(n: int, p: float) -> np.ndarray:
    """``n`` independent bools, each False with probability ``p`` exactly (see :class:`Dropout`)."""
    seed = int(torch.empty((), dtype=torch.int64).random_())  # one draw from torch's global generator
    bits = np.random.PCG64(seed)
    threshold = round(p * 2**64)  # exact for float64 p >= 2**-11; else within 2**-65 of p * 2**64
    hi, lo = threshold >> 32, threshold & 0xFFFFFFFF
    r = bits.random_raw((n + 1) // 2).view(np.uint32)[:n]
    keep = r >= hi
    if lo:  # r == hi (probability 2**-32 each): keep only when a second 32-bit draw is >= lo
        ties = np.flatnonzero(r == hi)
        if ties.size:
            keep[ties] = (bits.random_raw(ties.size) & 0xFFFFFFFF) >= lo
    return keep


MATMUL_ATTENTION_MAX_TOKENS = 256


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` over the last two dimensions, computed in float32 (also under autocast,
    as the fused kernel accumulates in float32); returned in ``v``'s dtype."""
    with torch.autocast(q.device.type, enabled=False):
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
        return torch.matmul(scores.softmax(dim=-1), v.float()).to(v.dtype)


__all__ = ["MATMUL_ATTENTION_MAX_TOKENS", "Dropout", "GroupNorm", "group_norm_film", "matmul_attention"]
