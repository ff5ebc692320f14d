"""Convolutional encoder and decoder stacks shared by the VAE, the hierarchical VAE and the KL
autoencoder: ``n`` stride-2 convolutions down, ``n`` nearest-neighbour upsamplings (each followed by a
3x3 convolution) up, SiLU activations and GroupNorm, in the style of the LDM autoencoder (Rombach et al.
2022, app. G) at a small size. Images of side ``H`` come back at side ``H`` when ``H`` is divisible by
``2^n``."""

from __future__ import annotations

from torch import nn

__all__ = ["ConvDecoder", "ConvEncoder", "mlp"]


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(_groups(cout), cout), nn.SiLU()
    )


class ConvEncoder(nn.Sequential):
    """``[B, cin, H, W] -> [B, cout, H / 2^down, W / 2^down]``: a 3x3 stem, ``down`` stride-2 blocks
    doubling the width (capped at ``4 * channels``), a residual-free 3x3 block and a 1x1 output."""

    def __init__(self, cin: int, channels: int, down: int, cout: int):
        layers, width = [_block(cin, channels)], channels
        for _ in range(down):
            nxt = min(2 * width, 4 * channels)
            layers.append(_block(width, nxt, stride=2))
            width = nxt
        layers += [_block(width, width), nn.Conv2d(width, cout, 1)]
        super().__init__(*layers)
        self.width = width


class ConvDecoder(nn.Sequential):
    """``[B, cin, h, w] -> [B, cout, h 2^up, w 2^up]``, the mirror of :class:`ConvEncoder`."""

    def __init__(self, cin: int, channels: int, up: int, cout: int):
        width = min(channels * 2**up, 4 * channels)
        layers = [_block(cin, width)]
        for i in range(up):
            nxt = min(channels * 2 ** (up - i - 1), 4 * channels)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), _block(width, nxt)]
            width = nxt
        layers += [_block(width, width), nn.Conv2d(width, cout, 3, padding=1)]
        super().__init__(*layers)


def mlp(din: int, hidden: int, dout: int) -> nn.Sequential:
    """A two-hidden-layer SiLU MLP, the conditional ``z_l -> (mean, log_var)`` of a latent level."""
    return nn.Sequential(
        nn.Linear(din, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dout)
    )
