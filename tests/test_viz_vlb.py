"""The bound's curves over log-SNR against closed forms for Gaussian data.

For ``x_0 ~ N(mu, s^2 I)`` and the exact denoiser, ``Var(eps | x_lambda) = e^lambda s^2 / (1 + e^lambda
s^2)`` per dimension, so the continuous-time bound density (VDM eq. 17 in lambda) is
``0.5 e^lambda s^2 / (1 + e^lambda s^2) / ln 2`` bits/dim per unit lambda and its integral between two
levels is ``0.5 [log(1 + e^lambda s^2)] / ln 2``.
"""

import math

import pytest
import torch

import difflab as dl
from difflab.oracles import GaussianOracle
from difflab.viz.vlb import BoundCurve, continuous_curve, curve_from_terms, plot_vlb

S = 0.5


def closed_form_bits(lam_hi: float, lam_lo: float, s: float = S) -> float:
    f = lambda lam: math.log1p(math.exp(lam) * s * s)  # noqa: E731
    return 0.5 * (f(lam_hi) - f(lam_lo)) / math.log(2.0)


@pytest.fixture(scope="module")
def setup():
    diffusion = dl.GaussianDiffusion("linear", 1000)
    oracle = GaussianOracle(diffusion, 0.0, S)
    x0 = S * torch.randn(3000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return diffusion, oracle, x0


def test_continuous_curve_matches_closed_form(setup):
    diffusion, oracle, x0 = setup
    view = diffusion.ode_view(oracle)
    curve = continuous_curve("exact", view, x0, points=48, generator=torch.Generator().manual_seed(1))
    want = closed_form_bits(view.lambda_start, view.lambda_end)
    assert curve.diffusion == pytest.approx(want, rel=0.02)
    # the density at each midpoint, too (Monte Carlo over 3000 x 2 values per point)
    lam = curve.midpoints
    density = 0.5 * torch.exp(lam) * S**2 / (1 + torch.exp(lam) * S**2) / math.log(2.0)
    assert torch.allclose(curve.density, density, rtol=0.1)


def test_discrete_terms_match_their_closed_form_and_exceed_the_continuous_bound(setup):
    """With the exact mean and beta~, each discrete term is 0.5 (SNR_{t-1} - SNR_t) Var(x_0 | x_t) per
    dimension (VDM eq. 13 for Gaussian data); their sum lies above the continuous integral
    (VDM: L_T >= L_2T >= ... >= L_inf)."""
    diffusion, oracle, x0 = setup
    g = torch.Generator().manual_seed(2)
    terms = diffusion.vlb_terms(oracle, x0[:100], decoder="gaussian", generator=g)
    curve = curve_from_terms("ddpm", diffusion.log_snr(torch.arange(1000.0)), terms)
    snr = torch.exp(diffusion.schedule.lambdas)
    per_step = 0.5 * (snr[:-1] - snr[1:]) * S**2 / (1 + snr[1:] * S**2) / math.log(2.0)
    assert curve.diffusion == pytest.approx(float(per_step.sum()), rel=0.02)
    lam = diffusion.schedule.lambdas
    assert curve.diffusion > closed_form_bits(float(lam[0]), float(lam[-1]))
    # the curve's pieces are the bound's pieces
    assert curve.total == pytest.approx(float(terms.total.mean()), rel=1e-12)
    assert curve.decoder == pytest.approx(float(terms.decoder.mean()), rel=1e-12)


def test_density_and_validation(tmp_path):
    c = BoundCurve("x", torch.tensor([3.0, 1.0, 0.0]), torch.tensor([0.4, 0.1]), prior=0.0, decoder=0.0)
    assert torch.allclose(c.density, torch.tensor([0.2, 0.1], dtype=torch.float64))
    assert c.total == pytest.approx(0.5)
    with pytest.raises(ValueError, match="decrease"):
        BoundCurve("x", torch.tensor([0.0, 1.0]), torch.tensor([0.1]))
    with pytest.raises(ValueError, match="one more entry"):
        BoundCurve("x", torch.tensor([1.0, 0.0]), torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="at least one"):
        plot_vlb([], tmp_path / "a.png")
    out = plot_vlb([c], tmp_path / "vlb.png", title="t")
    assert out.stat().st_size > 1000
