"""Datasets that need no download: 2-D toy distributions."""

from .toy2d import TOY2D, make_toy2d, make_toy2d_with_labels, toy2d_normalization

__all__ = ["TOY2D", "make_toy2d", "make_toy2d_with_labels", "toy2d_normalization"]
