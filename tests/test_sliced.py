"""Sliced Wasserstein-2: closed forms for Gaussians, exact identities, and a linear-programming oracle."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from difflab.metrics import sliced_wasserstein


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _normal(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=_gen(seed), dtype=torch.float64)


def test_identical_clouds_give_zero():
    x = _normal(500, 3, 0)
    assert sliced_wasserstein(x, x, 50, _gen(1)) == 0.0
    perm = torch.randperm(500, generator=_gen(2))
    assert sliced_wasserstein(x, x[perm], 50, _gen(1)) == pytest.approx(0.0, abs=1e-12)


def test_pure_shift_every_projection_moves_by_u_dot_m():
    # y = x + m exactly: each 1-D W2^2 is (u.m)^2, so SW2^2 is the mean of (u.m)^2 over directions,
    # whose expectation over the circle is |m|^2 / D.
    # Monte Carlo over 4000 directions: relative std of SW2^2 ~ 1.1%.
    x = _normal(100, 2, 0)
    m = torch.tensor([3.0, 4.0], dtype=torch.float64)
    sw = sliced_wasserstein(x, x + m, 4000, _gen(1))
    assert sw**2 == pytest.approx(25.0 / 2.0, rel=0.05)


def test_gaussian_shift_closed_form_independent_samples():
    # N(0, I) vs N(m, I) in 2-D: SW2^2 = |m|^2 / D = 12.5. Relative std of the estimate ~1.3%
    # (1000 directions and the difference of sample means).
    x = _normal(2000, 2, 0)
    y = _normal(2000, 2, 1) + torch.tensor([3.0, 4.0], dtype=torch.float64)
    sw = sliced_wasserstein(x, y, 1000, _gen(2))
    assert sw == pytest.approx(math.sqrt(12.5), rel=0.05)


def test_gaussian_scale_closed_form():
    # Each projection of N(0, I) vs N(0, s^2 I) is N(0, 1) vs N(0, s^2): W2 = |1 - s| for all u.
    # Only sampling noise remains: relative std ~1% (s = 3) and ~1.5% (s = 1/2) at N = 10^4.
    x = _normal(10000, 3, 0)
    y = 3.0 * _normal(10000, 3, 1)
    assert sliced_wasserstein(x, y, 100, _gen(2)) == pytest.approx(2.0, rel=0.05)
    y_half = 0.5 * _normal(10000, 3, 3)
    assert sliced_wasserstein(x, y_half, 100, _gen(2)) == pytest.approx(0.5, rel=0.08)


def test_equivariances_and_symmetry():
    x = _normal(300, 2, 0)
    y = _normal(300, 2, 1) * 2 + 1
    base = sliced_wasserstein(x, y, 200, _gen(5))
    assert base > 0
    assert sliced_wasserstein(3.5 * x, 3.5 * y, 200, _gen(5)) == pytest.approx(3.5 * base, rel=1e-10)
    a = torch.tensor([10.0, -7.0], dtype=torch.float64)
    assert sliced_wasserstein(x + a, y + a, 200, _gen(5)) == pytest.approx(base, rel=1e-10)
    assert sliced_wasserstein(y, x, 200, _gen(5)) == pytest.approx(base, rel=1e-12)
    # The same generator seed gives the same directions, hence the same estimate.
    assert sliced_wasserstein(x, y, 200, _gen(5)) == base


def test_unequal_sizes_same_measure_is_zero():
    # Repeating every point twice leaves the empirical measure unchanged.
    x = _normal(257, 2, 0)
    assert sliced_wasserstein(x, x.repeat(2, 1), 100, _gen(1)) == pytest.approx(0.0, abs=1e-12)
    assert sliced_wasserstein(x.repeat(3, 1), x.repeat(2, 1), 100, _gen(1)) == pytest.approx(0.0, abs=1e-12)


def _w2_lp(a: np.ndarray, b: np.ndarray) -> float:
    """Exact W2 between uniform empirical measures on a (N) and b (M) by the transport linear program."""
    n, m = len(a), len(b)
    cost = (a[:, None] - b[None, :]) ** 2
    a_eq = np.zeros((n + m, n * m))
    for i in range(n):
        a_eq[i, i * m : (i + 1) * m] = 1.0
    for j in range(m):
        a_eq[n + j, j::m] = 1.0
    b_eq = np.concatenate([np.full(n, 1.0 / n), np.full(m, 1.0 / m)])
    res = linprog(cost.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    assert res.success
    return math.sqrt(res.fun)


@pytest.mark.parametrize("n, m", [(4, 7), (6, 9), (5, 5), (1, 3)])
def test_one_dimensional_matches_transport_lp(n, m):
    # In 1-D every direction is +-1, so SW2 is exactly W2, checked against the transport LP.
    rng = np.random.default_rng(n * 100 + m)
    a, b = rng.normal(size=n), rng.normal(1.0, 2.0, size=m)
    sw = sliced_wasserstein(torch.from_numpy(a)[:, None], torch.from_numpy(b)[:, None], 7, _gen(0))
    assert sw == pytest.approx(_w2_lp(a, b), rel=1e-7)


def test_unequal_sizes_gaussian_scale():
    # N = 3000 against M = 2000 points: N(0, I) vs N(0, 9 I) still gives SW2 = |1 - 3| = 2
    # (no direction noise; sampling noise ~1.5%).
    x = _normal(3000, 2, 0)
    y = 3.0 * _normal(2000, 2, 1)
    assert sliced_wasserstein(x, y, 100, _gen(2)) == pytest.approx(2.0, rel=0.06)


def test_chunking_does_not_change_the_result():
    x, y = _normal(100, 4, 0), _normal(80, 4, 1) + 0.3
    a = sliced_wasserstein(x, y, 300, _gen(3), chunk=7)
    b = sliced_wasserstein(x, y, 300, _gen(3), chunk=1000)
    assert a == pytest.approx(b, rel=1e-12)


def test_float32_and_numpy_inputs():
    x = _normal(100, 2, 0)
    y = _normal(100, 2, 1)
    ref = sliced_wasserstein(x, y, 50, _gen(0))
    assert sliced_wasserstein(x.float(), y.float(), 50, _gen(0)) == pytest.approx(ref, rel=1e-5)
    assert sliced_wasserstein(x.numpy(), y.numpy(), 50, _gen(0)) == pytest.approx(ref, rel=1e-12)


def test_bad_inputs_raise():
    x = torch.zeros(10, 2)
    with pytest.raises(ValueError, match="same dimension"):
        sliced_wasserstein(x, torch.zeros(10, 3))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        sliced_wasserstein(torch.zeros(10), x)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        sliced_wasserstein(x, torch.zeros(0, 2))
    with pytest.raises(ValueError, match="n_projections"):
        sliced_wasserstein(x, x, n_projections=0)
