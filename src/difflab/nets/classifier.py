"""A small CNN classifier for digit-like images: its penultimate features define the Fréchet
distance of ``difflab eval fd`` (Inception features do not fit 8x8 or 28x28 grey digits)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DigitClassifier(nn.Module):
    """Three conv stages (each: two 3x3 convs with GroupNorm and SiLU, the last stages pooled 2x)
    -> global average pool -> ``feature_dim`` features -> ``num_classes`` logits.

    Works for any image size >= 4 (8x8 digits, 28x28 MNIST, 32x32 RGB)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 128):
        super().__init__()
        chans = [width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(chans):
            layers += [
                nn.Conv2d(c_in, c, 3, padding=1),
                nn.GroupNorm(8, c),
                nn.SiLU(),
                nn.Conv2d(c, c, 3, padding=1),
                nn.GroupNorm(8, c),
                nn.SiLU(),
            ]
            if i < len(chans) - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            c_in = c
        self.body = nn.Sequential(*layers)
        self.feature = nn.Linear(chans[-1], feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.in_channels = in_channels
        self.temperature = 1.0  # divides the logits for calibrated probabilities (temperature scaling)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[B, feature_dim]`` (after the nonlinearity)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        h = self.body(x).mean((2, 3))
        return F.silu(self.feature(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
