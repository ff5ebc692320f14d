"""A U-Net noise-prediction network for images, in the style of DDPM (Ho et al. 2020) and improved DDPM
(Nichol & Dhariwal 2021).

``model(x_t, t, y=None)`` maps a noisy batch ``x_t`` ``[B, C, H, W]`` and timestep indices ``t`` ``[B]``
(floats in ``[0, T-1]``, fractional allowed) to a prediction ``[B, out_channels, H, W]``. The index is
rescaled to a 1000-step clock, ``t * 1000 / T``, as in :class:`~difflab.nets.MLPDenoiser`.

Architecture of the default 28x28x1 model (``channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
attention_resolutions=(7,)``); ``emb`` is the time (+ class) embedding of width ``4 * channels``:

===========  ==========  =================================================================
stage        resolution  layers (output channels)
===========  ==========  =================================================================
embedding    --          sinusoid(64) -> Linear 256 -> SiLU -> Linear 256 (+ class table)
input        28x28       conv3x3 1 -> 64
down 0       28x28       2 x ResBlock 64; Downsample (conv3x3 stride 2) -> 14x14
down 1       14x14       2 x ResBlock 128; Downsample -> 7x7
down 2       7x7         2 x (ResBlock 128 + Attention)
middle       7x7         ResBlock 128, Attention, ResBlock 128
up 2         7x7         3 x (ResBlock 128 + Attention), each fed a skip; Upsample -> 14x14
up 1         14x14       3 x ResBlock 128 (skips); Upsample (nearest x2 + conv3x3) -> 28x28
up 0         28x28       3 x ResBlock 64 (skips)
output       28x28       GroupNorm, SiLU, conv3x3 64 -> 1 (zero-initialised)
===========  ==========  =================================================================

A ResBlock computes ``skip(x) + conv(drop(SiLU(N2(h) * (1 + s) + b)))`` with ``h = conv(SiLU(N1(x)))``
and ``(s, b) = Linear(SiLU(emb))`` (``scale_shift_norm=True``), or ``conv(drop(SiLU(N2(h + Linear(
SiLU(emb))))))`` as in DDPM; ``skip`` is a 1x1 conv when the width changes. Attention is multi-head
self-attention over the ``H*W`` positions with a residual connection. The last conv of every block and
of the output is zero-initialised, so an untrained model predicts 0.

The DDPM CIFAR-10 model is ``UNet(3, channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
attention_resolutions=(16,), image_size=32, dropout=0.1, scale_shift_norm=False)``: 35.7M parameters.

Speed on CPU (``bench/throughput.py``, ``bench/RESULTS.md``). Train in bf16 autocast with NCHW tensors
(``train.precision = "bf16"``, ``train.channels_last = false``): PyTorch's channels_last GroupNorm
is 25-45x slower than its NCHW kernel in bf16, and the layout copies around it (:class:`GroupNorm`)
cost more than channels_last saves in the convolutions. The convolutions are then ~70% of a step;
the rest is kept small by computing the same functions differently: the FiLM ``N2(h) * (1 + s) + b``
is one GroupNorm call (:func:`group_norm_film`), short-sequence attention is two matmuls
(:func:`matmul_attention`), the dropout mask comes from numpy (:class:`Dropout`) and ``Upsample`` is
one transposed convolution with 4/9 of the multiply-adds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_int
from .cpu_ops import MATMUL_ATTENTION_MAX_TOKENS, Dropout, GroupNorm, group_norm_film, matmul_attention
from .embeddings import TimestepEmbedding

__all__ = ["UNet", "fourier_features", "unet_from_config"]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count ``<= groups`` that divides ``channels``."""
    return GroupNorm(math.gcd(channels, groups), channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block conditioned on the embedding; ``forward`` takes ``SiLU(emb)`` (computed once)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, scale_shift: bool, groups: int):
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * cout if scale_shift else cout)
        self.norm2 = _norm(cout, groups)
        self.drop = Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, emb_act: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb_proj(emb_act)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = group_norm_film(self.norm2, h, 1 + scale, shift)
        else:
            h = self.norm2(h + e[:, :, None, None])
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


# CPU self-attention over at most this many positions runs as two matmuls and a softmax: for such short
# sequences PyTorch's fused CPU kernel (scaled_dot_product_attention) is 1.5-8x slower forward + backward,
# most of all in bf16. Longer sequences, and every other device, use the fused kernel.
class Attention(nn.Module):
    """Multi-head self-attention over spatial positions, ``x + proj(softmax(q k^T / sqrt d) v)``.

    Works on the ``[B, H*W, C]`` token view, which is free for channels_last inputs."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = _zero(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, emb_act: torch.Tensor | None = None) -> torch.Tensor:
        b, c, hh, ww = x.shape
        n = hh * ww
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, n, c)
        q, k, v = self.qkv(tokens).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if x.device.type == "cpu" and n <= MATMUL_ATTENTION_MAX_TOKENS:
            out = matmul_attention(q, k, v)  # [B, heads, HW, d]
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(b, n, c))
        return x + out.reshape(b, hh, ww, c).permute(0, 3, 1, 2)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb_act: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by ``conv`` (3x3, padding 1), run as one transposed
    convolution of the input (stride 2, padding 1, 4x4 kernel).

    Along each axis, output row ``2 i + d - 1`` (``d = 0..3``) reads input row ``i`` through the taps
    ``(w_2, w_1 + w_2, w_0 + w_1, w_0)`` of the 3x3 kernel, so the transposed convolution is the same
    linear map with 4 instead of 9 multiply-adds per output pixel and input channel, and the upsampled
    copy is never made (the parameters are still ``conv``'s)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb_act: torch.Tensor | None = None) -> torch.Tensor:
        def taps(w: torch.Tensor, dim: int) -> torch.Tensor:
            w0, w1, w2 = w.unbind(dim)
            return torch.stack([w2, w1 + w2, w0 + w1, w0], dim)

        kernel = taps(taps(self.conv.weight, 2), 3).transpose(0, 1)  # [C_in, C_out, 4, 4]
        return F.conv_transpose2d(x, kernel, self.conv.bias, stride=2, padding=1)


def fourier_features(x: torch.Tensor, exponents: Sequence[int]) -> torch.Tensor:
    """VDM's Fourier features of the input (Kingma et al. 2021, sec. 3.4 and appendix C, eq. 34): for each
    exponent ``n`` the channels ``sin(2^n pi x)`` and ``cos(2^n pi x)``, which let the network resolve
    the fine detail of ``x`` (the grid of 8-bit data has step ``2/255``; VDM uses ``n = 7, 8``).

    Returns ``[B, 2 C len(exponents), H, W]``: all sines, then all cosines, each channel-major
    (channel ``c``'s features for every exponent in order, then channel ``c + 1``'s), as the official
    code lays them out. Computed in float64 (``2^8 pi x`` reaches 800, where float32 rounds at 6e-5)
    and returned in ``x``'s dtype.
    """
    freqs = torch.tensor([2.0**n * math.pi for n in exponents], dtype=torch.float64, device=x.device)
    h = x.to(torch.float64).unsqueeze(2) * freqs.reshape(1, 1, -1, 1, 1)  # [B, C, N, H, W]
    h = h.flatten(1, 2)
    return torch.cat([torch.sin(h), torch.cos(h)], dim=1).to(x.dtype)


class UNet(nn.Module):
    """DDPM / improved-DDPM U-Net (see the module docstring for the layer table).

    Args:
        in_channels: image channels ``C`` (1 grayscale, 3 RGB, or any other count).
        out_channels: output channels; default ``C``, or ``2 C`` with ``learn_sigma``.
        channels: base width; level ``i`` has ``channels * channel_mult[i]`` channels.
        channel_mult: width multiplier per resolution level; the image is halved between levels,
            so ``image_size`` must be divisible by ``2 ** (len(channel_mult) - 1)``.
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        attention_resolutions: spatial sizes (feature-map height) at which self-attention follows
            each ResBlock, e.g. ``(14, 7)`` for 28x28 inputs. Each must be one of the model's sizes.
        image_size: input height = width, or an ``(H, W)`` pair.
        dropout: dropout rate inside the ResBlocks.
        scale_shift_norm: FiLM the second GroupNorm by the embedding (improved DDPM) instead of adding
            the embedding before it (DDPM).
        learn_sigma: also predict the variance interpolation ``v`` (output ``2 C`` channels).
        num_classes: ``> 0`` makes the model class-conditional; the class table has ``num_classes + 1``
            rows and the last, index ``num_classes``, is the null class used for classifier-free
            guidance (and for ``y=None``).
        num_heads: attention heads (used when ``head_channels`` is 0).
        head_channels: channels per attention head (overrides ``num_heads`` when > 0).
        timesteps: ``T``, the number of discrete diffusion steps; ``t`` is rescaled by ``1000 / T``.
        groups: GroupNorm groups (reduced to a divisor of each width).
        fourier_features: exponents ``n`` of VDM's input features ``sin(2^n pi x)``, ``cos(2^n pi x)``
            (:func:`fourier_features`; VDM: ``(7, 8)``), appended to the input channels before the first
            conv, which then reads ``in_channels (1 + 2 len(fourier_features))`` channels. ``()``: none.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (7,),
        image_size: int | Sequence[int] = 28,
        dropout: float = 0.1,
        scale_shift_norm: bool = True,
        learn_sigma: bool = False,
        num_classes: int = 0,
        num_heads: int = 1,
        head_channels: int = 0,
        timesteps: int = 1000,
        groups: int = 32,
        fourier_features: Sequence[int] = (),
    ):
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("channels", channels, 1)
        check_int("num_res_blocks", num_res_blocks, 1)
        check_int("num_classes", num_classes, 0)
        check_int("num_heads", num_heads, 1)
        check_int("head_channels", head_channels, 0)
        check_int("timesteps", timesteps, 1)
        check_int("groups", groups, 1)
        fourier = tuple(fourier_features)
        if any(isinstance(n, bool) or not isinstance(n, int) or not -16 <= n <= 16 for n in fourier):
            raise ValueError(
                f"fourier_features must be a list of integer exponents n in [-16, 16] (features "
                f"sin/cos(2^n pi x); VDM uses [7, 8]), got {fourier_features!r}"
            )
        mult = tuple(channel_mult)
        if not mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mult):
            raise ValueError(f"channel_mult must be a non-empty list of integers >= 1, got {channel_mult!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
            raise ValueError(f"image_size must be a positive integer or an (H, W) pair, got {image_size!r}")
        factor = 2 ** (len(mult) - 1)
        if size[0] % factor or size[1] % factor:
            raise ValueError(
                f"image_size {image_size!r} is not divisible by 2**(len(channel_mult)-1) = {factor} "
                f"(channel_mult={mult}); use a size divisible by {factor} or fewer levels"
            )
        levels = [size[0] // 2**i for i in range(len(mult))]
        attn = tuple(attention_resolutions)
        bad = [r for r in attn if r not in levels]
        if bad:
            raise ValueError(
                f"attention_resolutions {list(attn)}: {bad} is not a feature-map size of this UNet; "
                f"allowed: {levels} (image_size {image_size!r}, channel_mult {mult}) or []"
            )
        if out_channels is None:
            out_channels = in_channels * (2 if learn_sigma else 1)
        elif learn_sigma and out_channels != 2 * in_channels:
            raise ValueError(f"learn_sigma needs out_channels = 2 * in_channels, got {out_channels!r}")
        check_int("out_channels", out_channels, 1)

        self.in_channels, self.out_channels = in_channels, out_channels
        self.fourier_features = fourier
        self.image_size, self.timesteps = size, timesteps
        self.num_classes, self.learn_sigma = num_classes, learn_sigma
        emb_dim = 4 * channels

        def heads_for(ch: int) -> int:
            heads = ch // head_channels if head_channels else num_heads
            if heads < 1 or ch % heads:
                raise ValueError(
                    f"attention width {ch} is not divisible into heads "
                    f"(num_heads={num_heads}, head_channels={head_channels})"
                )
            return heads

        def stage(*layers: nn.Module) -> nn.ModuleList:
            return nn.ModuleList(layers)

        self.time_embed = TimestepEmbedding(channels, out_dim=emb_dim, hidden=emb_dim)
        self.class_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.input = nn.Conv2d(in_channels * (1 + 2 * len(fourier)), channels, 3, padding=1)

        self.down = nn.ModuleList()
        skip_ch, ch = [channels], channels
        for level, m in enumerate(mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, channels * m, emb_dim, dropout, scale_shift_norm, groups)]
                ch = channels * m
                if levels[level] in attn:
                    layers.append(Attention(ch, heads_for(ch), groups))
                self.down.append(stage(*layers))
                skip_ch.append(ch)
            if level < len(mult) - 1:
                self.down.append(stage(Downsample(ch)))
                skip_ch.append(ch)

        self.middle = stage(
            ResBlock(ch, ch, emb_dim, dropout, scale_shift_norm, groups),
            Attention(ch, heads_for(ch), groups),
            ResBlock(ch, ch, emb_dim, dropout, scale_shift_norm, groups),
        )

        self.up = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for i in range(num_res_blocks + 1):
                layers = [
                    ResBlock(ch + skip_ch.pop(), channels * m, emb_dim, dropout, scale_shift_norm, groups)
                ]
                ch = channels * m
                if levels[level] in attn:
                    layers.append(Attention(ch, heads_for(ch), groups))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                self.up.append(stage(*layers))

        self.out_norm = _norm(ch, groups)
        self.out = _zero(nn.Conv2d(ch, out_channels, 3, padding=1))

    def _check(self, x: torch.Tensor, t, y) -> tuple[torch.Tensor, torch.Tensor | None]:
        if x.dim() != 4 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != self.image_size:
            raise ValueError(
                f"x must have shape [B, {self.in_channels}, {self.image_size[0]}, {self.image_size[1]}] "
                f"(in_channels, image_size of this UNet), got {tuple(x.shape)}"
            )
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"t must be a scalar or a [B] tensor with B = {b}, got shape {tuple(t.shape)}")
        t = (t if t.is_floating_point() else t.float()) * (1000.0 / self.timesteps)
        if y is None:
            if self.class_embed is None:
                return t, None
            return t, torch.full((b,), self.num_classes, dtype=torch.long, device=x.device)
        if self.class_embed is None:
            raise ValueError("y (class labels) given to an unconditional UNet (num_classes=0); pass y=None")
        y = torch.as_tensor(y, device=x.device)
        if y.dim() == 0:
            y = y.expand(b)
        if y.shape != (b,) or y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError(f"y must be an integer tensor [B] with B = {b}, got {y.dtype} {tuple(y.shape)}")
        lo, hi = torch.aminmax(y)
        if lo < 0 or hi > self.num_classes:
            raise ValueError(
                f"class labels must be in [0, {self.num_classes}] ({self.num_classes} = the null class), "
                f"got values in [{int(lo)}, {int(hi)}]"
            )
        return t, y.long()

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | float, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict ``[B, out_channels, H, W]`` from ``x_t`` ``[B, C, H, W]``, timestep indices ``t`` ``[B]``
        and optional class labels ``y`` ``[B]`` (``num_classes`` or ``None`` = null class)."""
        t, y = self._check(x, t, y)
        emb = self.time_embed(t)
        if y is not None:
            emb = emb + self.class_embed(y)
        emb_act = F.silu(emb)  # every block reads SiLU(emb); compute it once
        if self.fourier_features:
            x = torch.cat([x, fourier_features(x, self.fourier_features)], dim=1)
        h = self.input(x)
        skips = [h]
        for layers in self.down:
            for layer in layers:
                h = layer(h, emb_act)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, emb_act)
        for layers in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            for layer in layers:
                h = layer(h, emb_act)
        return self.out(F.silu(self.out_norm(h)))


def unet_from_config(model_cfg, image_shape: Sequence[int], timesteps: int) -> UNet:
    """Build a :class:`UNet` from a :class:`~difflab.config.ModelConfig` for images of ``image_shape``
    ``(C, H, W)`` and a diffusion of ``timesteps`` steps."""
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)!r}")
    c, h, w = (int(s) for s in image_shape)
    return UNet(
        in_channels=c,
        channels=model_cfg.channels,
        channel_mult=tuple(model_cfg.channel_mult),
        num_res_blocks=model_cfg.num_res_blocks,
        attention_resolutions=tuple(model_cfg.attention_resolutions),
        image_size=h if h == w else (h, w),
        dropout=model_cfg.dropout,
        scale_shift_norm=model_cfg.scale_shift_norm,
        learn_sigma=model_cfg.learn_sigma,
        num_classes=model_cfg.num_classes,
        timesteps=timesteps,
        fourier_features=tuple(getattr(model_cfg, "fourier_features", ())),
    )
