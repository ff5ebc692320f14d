"""Plots of data, samples and the bound."""

from .plots import scatter_compare

__all__ = ["scatter_compare"]
