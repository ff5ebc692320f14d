"""MLP denoiser and timestep embeddings."""

import math
import re

import numpy as np
import pytest
import torch

from difflab.nets import MLPDenoiser, TimestepEmbedding, sinusoidal_embedding


@pytest.mark.parametrize("dim", [8, 7, 1, 2])
def test_sinusoidal_embedding_matches_numpy(dim):
    t = np.array([0.0, 1.0, 2.5, 17.25, 999.0])
    half = dim // 2
    freqs = np.array([10000.0 ** (-k / half) for k in range(half)]) if half else np.zeros(0)
    expected = np.zeros((len(t), dim))
    for b, tb in enumerate(t):
        for k, w in enumerate(freqs):
            expected[b, k] = math.cos(tb * w)
            expected[b, half + k] = math.sin(tb * w)
    got = sinusoidal_embedding(torch.tensor(t, dtype=torch.float64), dim)
    assert got.shape == (len(t), dim)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)
    if dim % 2:
        assert torch.all(got[:, -1] == 0)


def test_sinusoidal_embedding_max_period_and_int_input():
    t = torch.tensor([3, 40])
    got = sinusoidal_embedding(t, 4, max_period=100.0)
    assert got.dtype == torch.float32
    w = np.array([1.0, 100.0 ** (-1 / 2)])
    ang = np.array([3.0, 40.0])[:, None] * w[None]
    np.testing.assert_allclose(got.numpy(), np.concatenate([np.cos(ang), np.sin(ang)], 1), atol=1e-5)


def test_sinusoidal_embedding_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        sinusoidal_embedding(torch.zeros(2, 3), 8)
    with pytest.raises(ValueError, match="dim"):
        sinusoidal_embedding(torch.zeros(2), 0)


def test_timestep_embedding_shape():
    emb = TimestepEmbedding(16, out_dim=32)
    assert emb(torch.tensor([0.0, 10.5, 999.0])).shape == (3, 32)


def _perturb_output(model: MLPDenoiser, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.out.weight.copy_(0.1 * torch.randn(model.out.weight.shape, generator=g))
        model.out.bias.copy_(0.1 * torch.randn(model.out.bias.shape, generator=g))


def test_output_shape_and_zero_init():
    torch.manual_seed(0)
    model = MLPDenoiser(dim=3, hidden=32, depth=2, emb_dim=16)
    x = torch.randn(5, 3)
    out = model(x, torch.tensor([0.0, 1.0, 10.0, 500.0, 999.0]))
    assert out.shape == (5, 3)
    assert torch.all(out == 0)  # zero-initialised output layer


def test_fractional_and_scalar_t():
    torch.manual_seed(0)
    model = MLPDenoiser(hidden=32, depth=2, emb_dim=16)
    _perturb_output(model)
    x = torch.randn(4, 2)
    a = model(x, torch.full((4,), 12.5))
    b = model(x, 12.5)
    torch.testing.assert_close(a, b)
    assert torch.isfinite(a).all()
    # float64 and integer t are accepted too
    assert model(x, torch.full((4,), 12.5, dtype=torch.float64)).shape == (4, 2)
    assert model(x, torch.full((4,), 12)).shape == (4, 2)


def test_time_changes_the_output():
    torch.manual_seed(0)
    model = MLPDenoiser(hidden=32, depth=2, emb_dim=16)
    _perturb_output(model)
    x = torch.randn(4, 2).repeat(2, 1)
    t = torch.tensor([10.0] * 4 + [700.0] * 4)
    out = model(x, t)
    assert (out[:4] - out[4:]).abs().max() > 1e-3
    # a fractional step is a distinct input, not rounded to an integer index
    out_frac = model(x[:4], torch.full((4,), 10.5))
    assert (out_frac - out[:4]).abs().max() > 1e-6


def test_timesteps_rescales_the_clock():
    # t is embedded as t * 1000 / T: a T = 4000 model at t = 400 sees what a T = 1000 model sees at 100.
    torch.manual_seed(0)
    m1 = MLPDenoiser(hidden=16, depth=1, emb_dim=8, timesteps=1000)
    m4 = MLPDenoiser(hidden=16, depth=1, emb_dim=8, timesteps=4000)
    m4.load_state_dict(m1.state_dict())
    _perturb_output(m1)
    _perturb_output(m4)
    x = torch.randn(3, 2)
    torch.testing.assert_close(m1(x, torch.full((3,), 100.0)), m4(x, torch.full((3,), 400.0)))


def test_gradients_flow_to_all_parameters():
    torch.manual_seed(0)
    model = MLPDenoiser(hidden=32, depth=2, emb_dim=16)
    _perturb_output(model)
    x = torch.randn(8, 2)
    t = torch.rand(8) * 999
    loss = (model(x, t) - torch.randn(8, 2)).pow(2).mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_zero_init_output_still_learns():
    # With the output layer at zero, its own gradient is non-zero, so training starts.
    torch.manual_seed(0)
    model = MLPDenoiser(hidden=32, depth=2, emb_dim=16)
    x = torch.randn(8, 2)
    loss = (model(x, torch.rand(8) * 999) - 1.0).pow(2).mean()
    loss.backward()
    assert model.out.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(4,), (4, 3), (4, 2, 1), (2, 1, 2)])
def test_bad_x_shape_raises(shape):
    model = MLPDenoiser(hidden=16, depth=1, emb_dim=8)
    with pytest.raises(ValueError, match=r"\[B, 2\].*" + re.escape(str(shape))):
        model(torch.zeros(shape), torch.zeros(shape[0]))


def test_bad_t_shape_raises():
    model = MLPDenoiser(hidden=16, depth=1, emb_dim=8)
    with pytest.raises(ValueError, match="t must be"):
        model(torch.zeros(4, 2), torch.zeros(3))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="hidden"):
        MLPDenoiser(hidden=0)
    with pytest.raises(ValueError, match="timesteps"):
        MLPDenoiser(timesteps=0)
