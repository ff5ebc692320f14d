"""VDM's Fourier features of the U-Net input (Kingma et al. 2021, sec. 3.4): sin/cos(2^n pi x)."""

from __future__ import annotations

import math

import pytest
import torch

from difflab import config as config_mod
from difflab.config import ModelConfig
from difflab.nets.unet import UNet, fourier_features, unet_from_config
from difflab.runs.build import build_model


def direct_features(x: torch.Tensor, exponents) -> torch.Tensor:
    """Channel by channel, exponent by exponent: sines of every (channel, n), then cosines."""
    sines, cosines = [], []
    for c in range(x.shape[1]):
        for n in exponents:
            sines.append(torch.sin(2.0**n * math.pi * x[:, c]))
            cosines.append(torch.cos(2.0**n * math.pi * x[:, c]))
    return torch.stack(sines + cosines, dim=1)


def test_fourier_channels_match_a_direct_computation():
    x = torch.rand(4, 3, 5, 6, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(fourier_features(x, (7, 8)), direct_features(x, (7, 8)), rtol=0, atol=1e-12)
    # on the 8-bit grid the n = 7 sine is exactly periodic: x and x + 2/2^7 share their features
    a = torch.tensor([[[[0.25]]]], dtype=torch.float64)
    torch.testing.assert_close(fourier_features(a, (7,)), fourier_features(a + 2.0 / 2**7, (7,)))


def test_unet_first_conv_reads_the_input_and_its_features():
    torch.manual_seed(0)
    net = UNet(3, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(), image_size=8,
               fourier_features=(7, 8), groups=4)
    assert net.input.in_channels == 3 * (1 + 2 * 2)
    seen = {}
    net.input.register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    out = net(x, torch.tensor([3.0, 500.0]))
    assert out.shape == x.shape
    want = torch.cat([x, direct_features(x.double(), (7, 8)).float()], dim=1)
    torch.testing.assert_close(seen["x"], want, rtol=0, atol=1e-6)
    plain = UNet(3, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(), image_size=8,
                 groups=4)
    assert plain.input.in_channels == 3


def test_config_key_reaches_the_unet_and_is_checked():
    cfg = config_mod.load("digits", ["model.fourier_features=[7, 8]"])
    assert cfg.model.fourier_features == [7, 8]
    net = unet_from_config(cfg.model, (1, 8, 8), 1000)
    assert net.fourier_features == (7, 8) and net.input.in_channels == 5
    assert unet_from_config(ModelConfig(attention_resolutions=[]), (1, 8, 8), 1000).input.in_channels == 1
    with pytest.raises(ValueError, match="fourier_features must be a list of integer exponents"):
        UNet(1, image_size=8, attention_resolutions=(), fourier_features=(7.5,))
    toy = config_mod.load("toy2d", ["model.fourier_features=[7]"])
    with pytest.raises(ValueError, match="model.fourier_features=.* applies to model.kind='unet'"):
        build_model(toy, (2,))
