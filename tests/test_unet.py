"""U-Net: shapes at several image sizes, zero initialisation, conditioning, gradients, attention against a
naive softmax, the DDPM CIFAR-10 parameter count, clear errors and a short overfit."""

import math

import pytest
import torch
import torch.nn.functional as F

from difflab.config import ModelConfig
from difflab.nets import UNet, unet_from_config
from difflab.nets.unet import Attention


def tiny(**kw):
    args = dict(channels=16, channel_mult=(1, 2), attention_resolutions=(4,), image_size=8, dropout=0.0)
    args.update(kw)
    return UNet(**args)


def perturb_zero_layers(model, seed=0):
    """Give every zero-initialised tensor random values, so each path reaches the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize(
    "kw, shape",
    [
        (dict(channels=16), (2, 1, 28, 28)),  # 28 -> 14 -> 7, attention at 7, no padding
        (dict(channels=16, channel_mult=(1, 2), attention_resolutions=(4,), image_size=8), (2, 1, 8, 8)),
        (
            dict(
                in_channels=3,
                channels=16,
                channel_mult=(1, 2, 2, 2),
                attention_resolutions=(16,),
                image_size=32,
            ),
            (2, 3, 32, 32),
        ),
        (dict(channels=16, attention_resolutions=(14, 7), num_heads=2), (2, 1, 28, 28)),
        (dict(channels=16, attention_resolutions=(), image_size=(12, 20)), (2, 1, 12, 20)),
    ],
)
def test_output_shape_and_zero_init(kw, shape):
    model = UNet(**kw)
    x = torch.randn(shape)
    out = model(x, torch.tensor([0.0, 999.0]))
    assert out.shape == shape
    assert torch.all(out == 0)  # zero-initialised output conv: an untrained model predicts 0


def test_learn_sigma_doubles_channels():
    model = tiny(in_channels=3, learn_sigma=True)
    assert model.out_channels == 6
    assert model(torch.randn(2, 3, 8, 8), torch.tensor([1.0, 2.0])).shape == (2, 6, 8, 8)
    with pytest.raises(ValueError, match="out_channels"):
        tiny(in_channels=3, learn_sigma=True, out_channels=3)


def test_time_conditioning_and_fractional_t():
    model = perturb_zero_layers(tiny()).eval()
    x = torch.randn(2, 1, 8, 8)
    a, b = model(x, torch.tensor([10.0, 10.0])), model(x, torch.tensor([500.0, 500.0]))
    assert (a - b).abs().max() > 1e-3
    c = model(x, torch.tensor([10.5, 10.5]))  # fractional t: a new, nearby output
    assert 0 < (a - c).abs().max() < (a - b).abs().max()
    assert torch.equal(model(x, 10.0), a)  # a scalar t is broadcast over the batch


def test_timestep_clock_rescaling():
    """t is read on a 1000-step clock: step 10 of T=100 is step 100 of T=1000."""
    m1000 = perturb_zero_layers(tiny(timesteps=1000)).eval()
    m100 = tiny(timesteps=100).eval()
    m100.load_state_dict(m1000.state_dict())
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(m100(x, torch.tensor([10.0, 2.5])), m1000(x, torch.tensor([100.0, 25.0])))


def test_class_conditioning_and_null_class():
    model = perturb_zero_layers(tiny(num_classes=3)).eval()
    assert model.class_embed.num_embeddings == 4  # 3 classes + the null class
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([100.0, 100.0])
    y0, y1 = model(x, t, torch.tensor([0, 0])), model(x, t, torch.tensor([1, 1]))
    assert (y0 - y1).abs().max() > 1e-3
    torch.testing.assert_close(model(x, t), model(x, t, torch.tensor([3, 3])), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\[0, 3\].*\[0, 4\]"):
        model(x, t, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="-1"):
        model(x, t, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="integer"):
        model(x, t, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="unconditional"):
        tiny()(x, t, torch.tensor([0, 1]))


@pytest.mark.parametrize("scale_shift", [True, False])
def test_gradient_reaches_every_parameter(scale_shift):
    model = perturb_zero_layers(tiny(num_classes=2, scale_shift_norm=scale_shift, learn_sigma=True))
    x = torch.randn(3, 1, 8, 8)
    out = model(x, torch.tensor([1.0, 300.0, 900.0]), torch.tensor([0, 1, 2]))
    (out**2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_attention_matches_naive_softmax():
    torch.manual_seed(0)
    c, heads = 8, 2
    attn = perturb_zero_layers(Attention(c, heads, groups=4))
    x = torch.randn(2, c, 3, 5)
    h = F.group_norm(x, 4, attn.norm.weight, attn.norm.bias, attn.norm.eps)
    tok = h.flatten(2).transpose(1, 2)  # [B, 15, C]
    q, k, v = (tok @ attn.qkv.weight.T + attn.qkv.bias).split(c, dim=-1)
    d = c // heads
    outs = []
    for i in range(heads):
        qi, ki, vi = (z[..., i * d : (i + 1) * d] for z in (q, k, v))
        w = torch.softmax(qi @ ki.transpose(1, 2) / math.sqrt(d), dim=-1)
        outs.append(w @ vi)
    o = torch.cat(outs, dim=-1) @ attn.proj.weight.T + attn.proj.bias
    expected = x + o.transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_channels_last_gives_the_same_output():
    model = perturb_zero_layers(tiny()).eval()
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([3.0, 700.0])
    ref = model(x, t)
    model = model.to(memory_format=torch.channels_last)
    x_cl = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x_cl, t), ref, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x_cl, t)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_groupnorm_channels_last_bf16_matches_nchw():
    from difflab.nets.cpu_ops import GroupNorm

    gn = GroupNorm(4, 16)
    with torch.no_grad():
        gn.weight.normal_(), gn.bias.normal_()
    x = torch.randn(2, 16, 6, 6, dtype=torch.bfloat16)
    out = gn(x.to(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, F.group_norm(x, 4, gn.weight, gn.bias, gn.eps), rtol=0, atol=0)


def test_ddpm_cifar10_parameter_count():
    """Ho et al. (2020), Appendix B: the CIFAR-10 model has 35.7M parameters."""
    model = UNet(
        3,
        channels=128,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(16,),
        image_size=32,
        dropout=0.1,
        scale_shift_norm=False,
    )
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 35.7e6) < 0.5e6, n


def test_unet_from_config():
    cfg = ModelConfig(kind="unet", channels=16, num_classes=10, learn_sigma=True)
    model = unet_from_config(cfg, (1, 28, 28), timesteps=500)
    assert (model.in_channels, model.out_channels, model.num_classes, model.timesteps) == (1, 2, 10, 500)
    assert model.image_size == (28, 28)
    ref = UNet(1, channels=16, learn_sigma=True, num_classes=10, timesteps=500)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    # the default attention at 7 does not exist for 8x8 digits: a clear error, not a silent no-op
    with pytest.raises(ValueError, match=r"\[7\].*allowed: \[8, 4\]"):
        unet_from_config(ModelConfig(kind="unet", channel_mult=[1, 2]), (1, 8, 8), 1000)


def test_bad_sizes_and_channels_raise():
    with pytest.raises(ValueError, match=r"image_size 30 .*divisible .* 4"):
        UNet(image_size=30)
    with pytest.raises(ValueError, match=r"image_size 12 .*divisible .* 8"):
        UNet(image_size=12, channel_mult=(1, 2, 2, 2), attention_resolutions=())
    model = tiny()
    with pytest.raises(ValueError, match=r"\[B, 1, 8, 8\].*\(2, 3, 8, 8\)"):
        model(torch.randn(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\(2, 1, 16, 16\)"):
        model(torch.randn(2, 1, 16, 16), torch.zeros(2))
    with pytest.raises(ValueError, match="t must be"):
        model(torch.randn(2, 1, 8, 8), torch.zeros(3))
    with pytest.raises(ValueError, match="channel_mult"):
        UNet(channel_mult=())
    with pytest.raises(ValueError, match="heads"):
        tiny(num_heads=3)


def test_tiny_unet_overfits_four_images():
    """Fifty Adam steps of L_simple on 4 images cut the loss on a fixed (t, noise) probe set."""
    torch.manual_seed(0)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0).float()
    model = tiny(channels=16, attention_resolutions=())

    def loss_at(t, eps):
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0.repeat(len(t) // 4, 1, 1, 1) + (1 - a).sqrt() * eps
        return ((model(x_t, t.float()) - eps) ** 2).mean()

    g = torch.Generator().manual_seed(1)
    t_probe = torch.randint(0, 1000, (32,), generator=g)
    eps_probe = torch.randn(32, 1, 8, 8, generator=g)
    with torch.no_grad():
        before = loss_at(t_probe, eps_probe).item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(50):
        opt.zero_grad()
        loss_at(torch.randint(0, 1000, (32,)), torch.randn(32, 1, 8, 8)).backward()
        opt.step()
    with torch.no_grad():
        after = loss_at(t_probe, eps_probe).item()
    assert before == pytest.approx(eps_probe.pow(2).mean().item())  # zero output at initialisation
    assert after < 0.5 * before, (before, after)
