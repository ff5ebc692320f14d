"""Denoising networks and their building blocks."""

from .embeddings import TimestepEmbedding, sinusoidal_embedding
from .mlp import MLPDenoiser, ResidualBlock

__all__ = ["MLPDenoiser", "ResidualBlock", "TimestepEmbedding", "sinusoidal_embedding"]
