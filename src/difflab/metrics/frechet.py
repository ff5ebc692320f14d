"""Fréchet distance between two feature distributions, each summarised by a Gaussian.

    FD = ||m_1 - m_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})

(Heusel et al. 2017, the formula behind FID). ``Tr (S_1 S_2)^{1/2}`` is computed as the sum of the
square roots of the eigenvalues of the symmetric matrix ``S_1^{1/2} S_2 S_1^{1/2}``, which has the
same spectrum as ``S_1 S_2`` and avoids a non-symmetric matrix square root.
"""

from __future__ import annotations

import numpy as np
import torch


def feature_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of ``[N, D]`` features, float64."""
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N, D] with N >= 2, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"mismatched shapes: means {mu1.shape}, {mu2.shape}; covariances {s1.shape}, {s2.shape}"
        )
    r1 = _sqrt_psd(s1)
    cross = np.linalg.eigvalsh(r1 @ s2 @ r1)
    tr_sqrt = np.sqrt(np.clip(cross, 0.0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def frechet_distance_features(a, b) -> float:
    """Fréchet distance between the Gaussians fitted to two ``[N, D]`` feature sets."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))
