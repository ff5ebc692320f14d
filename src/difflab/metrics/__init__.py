"""Sample-quality metrics."""

from .sliced import sliced_wasserstein

__all__ = ["sliced_wasserstein"]
