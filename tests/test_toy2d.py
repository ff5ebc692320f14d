"""2-D toy datasets: API, determinism, fixed normalisation and the geometry of each distribution."""

import math

import numpy as np
import pytest
import torch

from difflab.data import TOY2D, make_toy2d, make_toy2d_with_labels
from difflab.metrics import sliced_wasserstein


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_names():
    assert set(TOY2D) == {"moons", "swissroll", "8gaussians", "checkerboard", "circles", "pinwheel"}
    assert isinstance(TOY2D, tuple)


@pytest.mark.parametrize("name", TOY2D)
def test_shape_dtype_determinism(name):
    x = make_toy2d(name, 301, seed=7)
    assert x.shape == (301, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert torch.equal(x, make_toy2d(name, 301, seed=7))
    assert not torch.equal(x, make_toy2d(name, 301, seed=8))
    assert torch.equal(make_toy2d(name, 50, generator=_gen(3)), make_toy2d(name, 50, generator=_gen(3)))
    assert make_toy2d(name, 1, seed=0).shape == (1, 2)
    x_lab, labels = make_toy2d_with_labels(name, 301, seed=7)
    assert torch.equal(x_lab, x)
    assert labels.shape == (301,) and labels.dtype == torch.int64


def test_bad_arguments():
    with pytest.raises(ValueError, match="moons.*swissroll.*8gaussians.*checkerboard.*circles.*pinwheel"):
        make_toy2d("spirals", 10)
    for n in (0, -3, 2.5):
        with pytest.raises(ValueError, match="n must be"):
            make_toy2d("moons", n)
    with pytest.raises(ValueError, match="either seed or generator"):
        make_toy2d("moons", 10, seed=1, generator=_gen(1))


@pytest.mark.parametrize("name", TOY2D)
def test_fixed_normalisation_gives_zero_mean_unit_scale(name):
    x = make_toy2d(name, 40000, seed=0).double()
    assert x.mean(0).abs().max() < 0.03
    assert x.var(0).sum() / 2 == pytest.approx(1.0, abs=0.03)
    # Fixed constants, not per-sample statistics: a small draw is not re-standardised.
    small = make_toy2d(name, 4, seed=1).double()
    assert small.mean(0).abs().max() > 1e-6


def _self_normalised(a: np.ndarray) -> torch.Tensor:
    a = a - a.mean(0)
    return torch.from_numpy(a / math.sqrt(a.var(0).sum() / 2))


def _ref_8gaussians(n, rng):
    centres = 4.0 * np.array(
        [(1, 0), (-1, 0), (0, 1), (0, -1)]
        + [(sx / math.sqrt(2), sy / math.sqrt(2)) for sx in (1, -1) for sy in (1, -1)]
    )
    return (centres[rng.integers(0, 8, n)] + 0.5 * rng.standard_normal((n, 2))) / math.sqrt(2)


def _ref_checkerboard(n, rng):
    x1 = rng.random(n) * 4 - 2
    x2 = rng.random(n) - rng.integers(0, 2, n) * 2.0 + np.floor(x1) % 2
    return np.stack([x1, x2], 1)


def _ref_pinwheel(n, rng):
    feats = rng.standard_normal((n, 2)) * np.array([0.3, 0.1])
    feats[:, 0] += 1.0
    k = rng.integers(0, 5, n)
    ang = 2 * np.pi * k / 5 + 0.25 * np.exp(feats[:, 0])
    rot = np.stack([np.cos(ang), -np.sin(ang), np.sin(ang), np.cos(ang)], 1).reshape(-1, 2, 2)
    return 2 * np.einsum("ti,tij->tj", feats, rot)


def _ref_sklearn(name, n, rng):
    from sklearn import datasets

    seed = int(rng.integers(1 << 30))
    if name == "moons":
        return datasets.make_moons(n, noise=0.05, random_state=seed)[0]
    if name == "circles":
        return datasets.make_circles(n, factor=0.5, noise=0.05, random_state=seed)[0]
    return datasets.make_swiss_roll(n, noise=0.5, random_state=seed)[0][:, [0, 2]]


_REFS = {"8gaussians": _ref_8gaussians, "checkerboard": _ref_checkerboard, "pinwheel": _ref_pinwheel}


@pytest.mark.parametrize("name", TOY2D)
def test_matches_an_independent_recipe(name):
    # The reference is drawn from the published recipe and standardised by its own sample moments.
    # Against it, our draw must be as close as another draw of our own, and far from other datasets.
    n, rng = 3000, np.random.default_rng(123)
    ref = _REFS[name](n, rng) if name in _REFS else _ref_sklearn(name, n, rng)
    ref = _self_normalised(ref)
    ours = make_toy2d(name, n, seed=5).double()
    d_ref = sliced_wasserstein(ours, ref, 64, _gen(0))
    d_self = sliced_wasserstein(ours, make_toy2d(name, n, seed=6).double(), 64, _gen(0))
    d_other = min(
        sliced_wasserstein(ours, make_toy2d(o, n, seed=6).double(), 64, _gen(0)) for o in TOY2D if o != name
    )
    # At n = 3000 two draws of one dataset are ~0.035 apart, two datasets >= 0.11 (moments agree).
    assert d_ref < 0.07
    assert d_ref < 2.5 * d_self + 0.02
    assert d_other > 2 * max(d_ref, d_self)


def test_8gaussians_eight_equal_clusters_on_a_circle():
    x, k = make_toy2d_with_labels("8gaussians", 16000, seed=0)
    x = x.double().numpy()
    radius = np.linalg.norm(x, axis=1)
    # Nearest centre by angle: centres sit at multiples of pi/4 on one circle.
    nearest = np.round(np.arctan2(x[:, 1], x[:, 0]) / (np.pi / 4)).astype(int) % 8
    counts = np.bincount(nearest, minlength=8)
    assert counts.min() > 16000 / 8 * 0.9 and counts.max() < 16000 / 8 * 1.1
    assert np.mean(nearest == k.numpy()) > 0.995  # std 0.354 vs half-gap 1.08 (raw): ~0.2% cross
    # Tight clusters: radial spread small relative to the radius, clusters well separated.
    r0 = np.median(radius)
    assert np.std(radius) / r0 < 0.2
    assert 2 * r0 * math.sin(math.pi / 8) > 5 * np.std(radius)


def test_checkerboard_only_on_squares():
    n = 20000
    x, sq = make_toy2d_with_labels("checkerboard", n, seed=0)
    x = x.double().numpy()
    # The board's half-width from the data itself; each square is a quarter of the board.
    half = np.abs(x).max() * (1 + 1e-9)
    side = 2 * half / 4
    col = np.floor((x[:, 0] + half) / side).astype(int)
    row = np.floor((x[:, 1] + half) / side).astype(int)
    parity = (col + row) % 2
    assert np.mean(parity == 0) > 0.995  # FFJORD's board: lower-left square is "on"
    cells = np.bincount((col * 4 + row)[parity == 0], minlength=16)
    on = cells[cells > 0]
    assert len(on) == 8
    assert on.min() > n / 8 * 0.9 and on.max() < n / 8 * 1.1
    assert len(np.unique(sq.numpy())) == 8


def _fit_circle(p: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    # Algebraic fit: x^2 + y^2 + a x + b y + c = 0.
    A = np.column_stack([p[:, 0], p[:, 1], np.ones(len(p))])
    a, b, c = np.linalg.lstsq(A, -(p**2).sum(1), rcond=None)[0]
    centre = np.array([-a / 2, -b / 2])
    r = math.sqrt(centre @ centre - c)
    return centre, r, np.linalg.norm(p - centre, axis=1) - r


def test_moons_two_half_circles():
    x, lab = make_toy2d_with_labels("moons", 6000, seed=0)
    x, lab = x.double().numpy(), lab.numpy()
    assert abs(np.mean(lab) - 0.5) < 0.03  # each point picks its moon with probability 1/2
    fits = [_fit_circle(x[lab == k]) for k in (0, 1)]
    (c0, r0, res0), (c1, r1, res1) = fits
    assert r0 == pytest.approx(r1, rel=0.03)  # two congruent half circles
    assert np.std(res0) / r0 < 0.1 and np.std(res1) / r1 < 0.1
    # sklearn's inner moon is the outer one shifted by (1, 1/2) in units of the radius.
    assert (c1 - c0) / r0 == pytest.approx([1.0, 0.5], abs=0.05)
    # Each moon is a half circle: outer moon above its centre, inner moon below its centre.
    assert np.mean(x[lab == 0, 1] > c0[1] - 0.15 * r0) > 0.99
    assert np.mean(x[lab == 1, 1] < c1[1] + 0.15 * r1) > 0.99


def test_circles_radius_ratio():
    x, lab = make_toy2d_with_labels("circles", 6000, seed=0)
    x, lab = x.double().numpy(), lab.numpy()
    (c_out, r_out, _), (c_in, r_in, _) = _fit_circle(x[lab == 0]), _fit_circle(x[lab == 1])
    assert r_in / r_out == pytest.approx(0.5, abs=0.02)
    assert np.linalg.norm(c_out) < 0.05 and np.linalg.norm(c_in) < 0.05


def test_pinwheel_five_fold_symmetry():
    n = 4000
    x, arm = make_toy2d_with_labels("pinwheel", n, seed=0)
    counts = np.bincount(arm.numpy(), minlength=5)
    assert counts.min() > n / 5 * 0.85 and counts.max() < n / 5 * 1.15
    a = 2 * math.pi / 5
    rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
    x = x.double()
    fresh = make_toy2d("pinwheel", n, seed=1).double()
    d_rot = sliced_wasserstein(x @ rot.T, fresh, 64, _gen(0))
    d_quarter = sliced_wasserstein(x @ rot.T @ rot.T[:, [1, 0]], fresh, 64, _gen(0))
    d_self = sliced_wasserstein(x, fresh, 64, _gen(0))
    assert d_rot < 2 * d_self + 0.02
    assert d_quarter > 3 * d_rot  # a reflection is not a symmetry of the pinwheel


def test_swissroll_is_a_spiral():
    x = make_toy2d("swissroll", 5000, seed=0).double().numpy()
    # Undo the affine map by fitting: the raw curve t (cos t, sin t) has |p| = t, so the polar angle
    # unwrapped along increasing radius must grow about as fast as the radius (in raw units).
    from difflab.data import toy2d_normalization

    (mx, my), c = toy2d_normalization("swissroll")
    raw = x / c + np.array([mx, my])
    r = np.linalg.norm(raw, axis=1)
    assert np.percentile(r, 1) > 1.5 * np.pi - 2.0 and np.percentile(r, 99) < 4.5 * np.pi + 2.0
    order = np.argsort(r)
    theta = np.unwrap(np.arctan2(raw[order, 1], raw[order, 0])[::25])
    slope = np.polyfit(r[order][::25], theta, 1)[0]
    assert slope == pytest.approx(1.0, abs=0.15)
