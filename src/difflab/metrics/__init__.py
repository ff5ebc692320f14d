"""Sample-quality metrics."""

from .frechet import feature_stats, frechet_distance, frechet_distance_features
from .sliced import sliced_wasserstein

__all__ = ["feature_stats", "frechet_distance", "frechet_distance_features", "sliced_wasserstein"]
