"""Bad input gets a clear error naming the bad value and what is allowed."""

import pytest
import torch

import difflab as dl


def zero_model(x, t):
    return torch.zeros_like(x)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"schedule": "cosin"}, r"unknown schedule 'cosin'.*linear, cosine, sigmoid"),
        ({"prediction": "score"}, r"unknown prediction 'score'.*eps, x0, v"),
        ({"variance": "learned_range"}, r"unknown variance 'learned_range'.*fixed_small"),
        ({"timesteps": 0}, r"timesteps must be a positive integer, got 0"),
        ({"timesteps": 10}, r"beta_T = 2 >= 1; use timesteps >= 21"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dl.GaussianDiffusion(**kwargs)


def test_bad_sampler_and_spacing():
    d = dl.GaussianDiffusion(timesteps=50)
    with pytest.raises(ValueError, match=r"unknown sampler 'dpm'.*ancestral, ddim"):
        d.sample(zero_model, (2, 2), sampler="dpm")
    with pytest.raises(ValueError, match=r"unknown spacing 'cubic'"):
        d.sample(zero_model, (2, 2), spacing="cubic")
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 50\], got 51"):
        d.sample(zero_model, (2, 2), steps=51)


def test_t_out_of_range_and_shape_mismatch():
    d = dl.GaussianDiffusion(timesteps=100)
    x0 = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"timestep 100.0 is out of range"):
        d.q_sample(x0, torch.tensor([0, 1, 2, 100]))
    with pytest.raises(ValueError, match=r"B = 4"):
        d.q_sample(x0, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"noise shape \(4, 2\) does not match x0 shape \(4, 3\)"):
        d.q_sample(x0, 5, torch.zeros(4, 2))


def test_model_returning_wrong_shape():
    d = dl.GaussianDiffusion(timesteps=50)
    with pytest.raises(ValueError, match=r"model returned \(4, 1\) for an input of shape \(4, 3\)"):
        d.loss(lambda x, t: x[:, :1], torch.zeros(4, 3))


def test_unknown_decoder_and_bins():
    d = dl.GaussianDiffusion(timesteps=50)
    with pytest.raises(ValueError, match=r"unknown decoder 'laplace'"):
        d.bits_per_dim(zero_model, torch.zeros(2, 2), decoder="laplace")
    with pytest.raises(ValueError, match=r"bins must be an integer >= 2, got 1"):
        d.bits_per_dim(zero_model, torch.zeros(2, 2), bins=1)
