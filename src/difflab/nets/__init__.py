"""Denoising networks and their building blocks."""

from .embeddings import TimestepEmbedding, sinusoidal_embedding
from .mlp import MLPDenoiser, ResidualBlock
from .unet import UNet, unet_from_config

__all__ = [
    "MLPDenoiser",
    "ResidualBlock",
    "TimestepEmbedding",
    "UNet",
    "sinusoidal_embedding",
    "unet_from_config",
]
