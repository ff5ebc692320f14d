"""Two-dimensional toy distributions for diffusion experiments.

Every dataset is drawn from a fixed recipe and then passed through a FIXED affine map
``x -> (x - mu) * c`` whose constants ``mu`` (a 2-vector) and ``c`` (a scalar) are derived once from
the recipe's population moments, not from the sample at hand. Hence:

* two fresh draws are identically distributed (no per-sample standardisation), and
* every dataset has mean ~0 and mean per-coordinate variance ~1, ``tr(Cov) / 2 ~ 1``; the scale is
  isotropic so each shape keeps its aspect ratio.

Every point is drawn i.i.d. from the dataset's distribution (the component of each point too).
sklearn's ``make_moons`` / ``make_circles`` space their angles evenly and split the points exactly in
half; that stratification makes two draws nearly identical and would understate the distance a
perfect i.i.d. sampler reaches, so those two recipes are re-drawn here with uniform random angles.

Recipes (before normalisation):

``moons``
    the geometry of ``sklearn.datasets.make_moons(noise=0.05)``: two interleaved unit half circles,
    outer ``(cos u, sin u)`` and inner ``(1 - cos u, 1/2 - sin u)``, ``u ~ U[0, pi]``.
``swissroll``
    ``sklearn.datasets.make_swiss_roll(noise=0.5)``, the ``(x, z)`` slice: a spiral
    ``t (cos t, sin t)`` with ``t ~ U[1.5 pi, 4.5 pi]``.
``8gaussians``
    FFJORD's toy: eight isotropic Gaussians of std ``0.5 / sqrt 2`` centred on a circle of radius
    ``2 sqrt 2`` at angles ``k pi / 4``, equal weights.
``checkerboard``
    FFJORD's toy: uniform on the 8 "on" squares of a 4x4 board covering ``[-2, 2]^2``
    (squares with ``floor(x) + floor(y)`` even).
``circles``
    the geometry of ``sklearn.datasets.make_circles(factor=0.5, noise=0.05)``: circles of radius 1
    and 0.5.
``pinwheel``
    FFJORD's toy: 5 arms; radius ``r ~ N(1, 0.3^2)``, tangential offset ``~ N(0, 0.1^2)``,
    rotated by ``2 pi k / 5 + 0.25 exp(r)`` and scaled by 2.

``make_toy2d_with_labels`` also returns the mixture component of each point (moon, circle,
Gaussian, board square, pinwheel arm; all zeros for the single-component swiss roll).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["TOY2D", "make_toy2d", "make_toy2d_with_labels", "toy2d_normalization"]

TOY2D: tuple[str, ...] = ("moons", "swissroll", "8gaussians", "checkerboard", "circles", "pinwheel")

_MOONS_NOISE = 0.05
_SWISS_NOISE = 0.5
_CIRCLES_FACTOR = 0.5
_CIRCLES_NOISE = 0.05
_GAUSS8_RADIUS = 2.0 * math.sqrt(2.0)
_GAUSS8_STD = 0.5 / math.sqrt(2.0)
_PIN_ARMS = 5
_PIN_RADIAL_STD = 0.3
_PIN_TANGENTIAL_STD = 0.1
_PIN_RATE = 0.25


def _moments() -> dict[str, tuple[tuple[float, float], float]]:
    """Population mean and mean per-coordinate variance ``tr(Cov)/2`` of each raw recipe.

    All are closed forms of the recipes above:

    * moons: outer ``(cos u, sin u)``, inner ``(1 - cos u, 1/2 - sin u)``, ``u ~ U[0, pi]``, each with
      probability 1/2: mean ``(1/2, 1/4)``, ``Var x = 3/4``, ``Var y = 9/16 - 1/pi``, plus ``noise^2``.
    * swissroll: ``t ~ U[a, b]``, ``a = 1.5 pi``, ``b = 4.5 pi``; ``E[t cos t] = (b + a) / (b - a) = 2``,
      ``E[t sin t] = 2 / (b - a)``, ``E[t^2] = (b^3 - a^3) / (3 (b - a))``, plus ``noise^2``.
    * 8gaussians: mean 0, ``R^2 / 2 + s^2``.
    * checkerboard: both marginals uniform on ``[-2, 2]``: mean 0, variance ``4/3``.
    * circles: mean 0, ``(1 + factor^2) / 4 + noise^2``.
    * pinwheel: mean 0 (5-fold symmetry); rotations keep norms, so
      ``E|x|^2 = 4 (E[r^2] + s_t^2) = 4 (1 + s_r^2 + s_t^2)``; per coordinate half of that.
    """
    a, b = 1.5 * math.pi, 4.5 * math.pi
    sw_mx, sw_mz = (b + a) / (b - a), 2.0 / (b - a)
    sw_et2 = (b**3 - a**3) / (3.0 * (b - a))
    sw_var = (sw_et2 - sw_mx**2 - sw_mz**2) / 2.0 + _SWISS_NOISE**2
    return {
        "moons": ((0.5, 0.25), (0.75 + (0.5625 - 1.0 / math.pi)) / 2.0 + _MOONS_NOISE**2),
        "swissroll": ((sw_mx, sw_mz), sw_var),
        "8gaussians": ((0.0, 0.0), _GAUSS8_RADIUS**2 / 2.0 + _GAUSS8_STD**2),
        "checkerboard": ((0.0, 0.0), 4.0 / 3.0),
        "circles": ((0.0, 0.0), (1.0 + _CIRCLES_FACTOR**2) / 4.0 + _CIRCLES_NOISE**2),
        "pinwheel": ((0.0, 0.0), 2.0 * (1.0 + _PIN_RADIAL_STD**2 + _PIN_TANGENTIAL_STD**2)),
    }


_NORMALIZATION: dict[str, tuple[tuple[float, float], float]] = {
    name: (mean, 1.0 / math.sqrt(var)) for name, (mean, var) in _moments().items()
}


def toy2d_normalization(name: str) -> tuple[tuple[float, float], float]:
    """The fixed affine map ``x -> (x - mu) * c`` applied to dataset ``name``; returns ``(mu, c)``."""
    return _NORMALIZATION[_check_name(name)]


# ----------------------------------------------------------------------------- raw recipes
# Each takes (n, rng: np.random.Generator) and returns (points [n, 2] float64, labels [n] int64).


def _sk_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _moons(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # sklearn's make_moons geometry, but i.i.d.: sklearn spaces the angles evenly and splits the
    # points exactly in half, so two of its draws are nearly identical (a misleadingly low noise floor).
    label = rng.integers(0, 2, size=n)
    u = rng.uniform(0.0, math.pi, size=n)
    outer = np.stack([np.cos(u), np.sin(u)], axis=1)
    inner = np.stack([1.0 - np.cos(u), 0.5 - np.sin(u)], axis=1)
    pts = np.where(label[:, None] == 0, outer, inner)
    return pts + _MOONS_NOISE * rng.standard_normal((n, 2)), label


def _circles(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # sklearn's make_circles geometry (label 0: radius 1, label 1: radius factor), drawn i.i.d.
    label = rng.integers(0, 2, size=n)
    u = rng.uniform(0.0, 2.0 * math.pi, size=n)
    radius = np.where(label == 0, 1.0, _CIRCLES_FACTOR)
    pts = radius[:, None] * np.stack([np.cos(u), np.sin(u)], axis=1)
    return pts + _CIRCLES_NOISE * rng.standard_normal((n, 2)), label


def _swissroll(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_swiss_roll

    x3, _ = make_swiss_roll(n_samples=n, noise=_SWISS_NOISE, random_state=_sk_seed(rng))
    return x3[:, [0, 2]], np.zeros(n, dtype=np.int64)


def _gaussians8(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    k = rng.integers(0, 8, size=n)
    angle = k * (math.pi / 4.0)
    centres = _GAUSS8_RADIUS * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return centres + _GAUSS8_STD * rng.standard_normal((n, 2)), k


def _checkerboard(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Choose one of the 8 unit "on" squares uniformly, then a uniform point inside it.
    square = rng.integers(0, 8, size=n)
    col = square % 4  # column index 0..3 -> x in [col - 2, col - 1)
    row_pair = square // 4  # two on-squares per column: rows with (col + row) even
    row = 2 * row_pair + (col % 2)
    u = rng.random((n, 2))
    pts = np.stack([col - 2.0 + u[:, 0], row - 2.0 + u[:, 1]], axis=1)
    return pts, square


def _pinwheel(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    arm = rng.integers(0, _PIN_ARMS, size=n)
    z = rng.standard_normal((n, 2))
    r = 1.0 + _PIN_RADIAL_STD * z[:, 0]
    tang = _PIN_TANGENTIAL_STD * z[:, 1]
    angle = 2.0 * math.pi * arm / _PIN_ARMS + _PIN_RATE * np.exp(r)
    c, s = np.cos(angle), np.sin(angle)
    # FFJORD's orientation: (r, tang) multiplied on the right by [[c, -s], [s, c]].
    pts = 2.0 * np.stack([r * c + tang * s, -r * s + tang * c], axis=1)
    return pts, arm


_RECIPES: dict[str, Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "moons": _moons,
    "swissroll": _swissroll,
    "8gaussians": _gaussians8,
    "checkerboard": _checkerboard,
    "circles": _circles,
    "pinwheel": _pinwheel,
}


# ----------------------------------------------------------------------------- public API


def _check_name(name: str) -> str:
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _RECIPES:
        raise ValueError(f"unknown toy2d dataset {name!r}; choose one of {', '.join(TOY2D)}")
    return key


def _rng(seed: int | None, generator: torch.Generator | None) -> np.random.Generator:
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if generator is not None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    elif seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    return np.random.default_rng(seed)


def make_toy2d_with_labels(
    name: str, n: int, seed: int | None = None, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` normalised points of dataset ``name`` and the component label of each.

    Args:
        name: one of :data:`TOY2D` (case-insensitive).
        n: number of points, ``>= 1``.
        seed: integer seed; the same seed gives the same points. ``None`` with no ``generator`` uses
            fresh OS entropy.
        generator: alternatively a ``torch.Generator`` from which one seed is drawn.

    Returns:
        ``(x, labels)``: ``x`` a float32 tensor ``[n, 2]``, ``labels`` an int64 tensor ``[n]``.
    """
    key = _check_name(name)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    rng = _rng(seed, generator)
    pts, labels = _RECIPES[key](int(n), rng)
    (mx, my), c = _NORMALIZATION[key]
    pts = (np.asarray(pts, dtype=np.float64) - np.array([mx, my])) * c
    return (
        torch.from_numpy(pts.astype(np.float32)),
        torch.from_numpy(np.asarray(labels, dtype=np.int64)),
    )


def make_toy2d(
    name: str, n: int, seed: int | None = None, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw ``n`` points of the 2-D toy dataset ``name`` as a float32 tensor ``[n, 2]``.

    The points are mapped by the dataset's fixed affine normalisation (see the module docstring), so
    they have mean ~0 and ``tr(Cov)/2 ~ 1`` and two draws are identically distributed. Deterministic
    given ``seed`` (or the state of ``generator``).

    Raises:
        ValueError: for an unknown ``name`` (the message lists :data:`TOY2D`) or ``n < 1``.
    """
    return make_toy2d_with_labels(name, n, seed, generator=generator)[0]
