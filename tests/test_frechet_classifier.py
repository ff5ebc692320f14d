"""Fréchet distance against closed forms; the cached digit classifier learns the digits."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from difflab.metrics import frechet_distance, frechet_distance_features
from difflab.metrics.classifier_features import (
    accuracy,
    classifier_scores,
    confidence_report,
    load_or_train_classifier,
    noise_images,
)


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    # commuting (diagonal) covariances: Tr (S1 S2)^1/2 = sum sqrt(a b)
    want = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(want, rel=1e-10)


def test_frechet_distance_rotation_invariant_and_zero_on_itself():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(4, 4))
    s1 = A @ A.T + np.eye(4)
    B = rng.normal(size=(4, 4))
    s2 = B @ B.T + 0.5 * np.eye(4)
    m = rng.normal(size=4)
    assert frechet_distance(m, s1, m, s1) == pytest.approx(0.0, abs=1e-9)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    d = frechet_distance(m, s1, 0 * m, s2)
    assert frechet_distance(q @ m, q @ s1 @ q.T, 0 * m, q @ s2 @ q.T) == pytest.approx(d, rel=1e-9)
    # 1-D: FD = (m1-m2)^2 + (s1-s2)^2, the squared W2 distance between Gaussians
    assert frechet_distance([0.3], [[4.0]], [1.0], [[1.0]]) == pytest.approx(0.49 + 1.0, rel=1e-12)


def test_frechet_from_samples_converges():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    b = 2.0 * torch.randn(20000, 3, generator=g, dtype=torch.float64) + 1.0
    want = 3 * 1.0 + 3 * (2.0 - 1.0) ** 2
    assert frechet_distance_features(a, b) == pytest.approx(want, rel=0.05)


def test_classifier_learns_digits_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path))
    d = load_digits()
    x = torch.tensor(d.images / 16.0 * 2 - 1, dtype=torch.float32)[:, None]
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1500], perm[1500:]
    model, info = load_or_train_classifier("digits", (x[tr], y[tr]), (x[te], y[te]), steps=300)
    assert info["test_accuracy"] > 0.9
    again, info2 = load_or_train_classifier("digits", (x[tr], y[tr]), (x[te], y[te]), steps=300)
    assert info2 == info
    assert accuracy(again, x[te], y[te]) == pytest.approx(info["test_accuracy"])
    s_real = classifier_scores(model, x[te], x[tr][:500])
    noise = torch.rand(x[te].shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    s_noise = classifier_scores(model, noise, x[tr][:500])
    assert s_real["fd"] < s_noise["fd"] / 5
    assert s_real["confident_fraction"] > 0.8
    # the gate can fail: calibrated on held-out digits and shown non-digits in training, the classifier
    # is confident on real digits and not on noise (Gaussian, as an untrained sampler returns, or uniform)
    assert info["temperature"] > 0 and info["calibration_images"] == 150
    gauss = noise_images((1, 8, 8), 500, seed=3)
    assert confidence_report(model, gauss, x[te])["confident_fraction"] < 0.05
    assert confidence_report(model, noise, x[te])["confident_fraction"] < 0.05
    assert confidence_report(model, x[te], x[te])["confident_fraction_real"] > 0.8
