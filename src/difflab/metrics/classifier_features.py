"""Train once, cache, and reuse a digit classifier whose features score samples.

The classifier is trained on the training split of the same dataset the diffusion model learns
(random 1-pixel shifts as augmentation), its test accuracy is recorded, and its weights are cached
under ``$DIFFLAB_CACHE`` (default ``~/.cache/difflab``) keyed by a hash of the training data.

Its confidence is a quality gate, so it must be able to fail: a plain classifier assigns noise to
some digit with high probability. Two things make "assigned to a digit with probability > 0.9"
mean something:

* outlier exposure (Hendrycks et al. 2019): each step also shows the network images that are no
  digit (Gaussian and uniform noise, blurred noise, a digit's pixels shuffled) with the uniform
  distribution over classes as target, so they get low confidence;
* temperature scaling (Guo et al. 2017): one temperature ``T``, fitted on training images held out
  from the fit (the last 10%) by minimising their negative log-likelihood, divides the logits so
  that probabilities are calibrated on real digits.

:func:`confidence_report` puts the share of confident samples next to the same share on real test
images and on pure noise, so a reader sees both ends of the scale.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..nets.classifier import DigitClassifier
from .frechet import frechet_distance_features

ARCH_VERSION = "digitclassifier-v2-w16-oe-temperature"
CONFIDENT = 0.9  # "assigned to a digit": the largest class probability exceeds this


def cache_dir() -> Path:
    return Path(os.environ.get("DIFFLAB_CACHE", Path.home() / ".cache" / "difflab"))


def data_key(name: str, x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.sha1()
    h.update(ARCH_VERSION.encode())
    h.update(str(tuple(x.shape)).encode())
    h.update(x.detach().cpu().float().numpy().tobytes())
    h.update(y.detach().cpu().numpy().tobytes())
    return f"{name}-{h.hexdigest()[:16]}"


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random translation by up to one pixel (pad with the background value -1, crop back)."""
    H, W = x.shape[-2:]
    pad = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = (int(v) for v in torch.randint(0, 3, (2,), generator=g))
    return pad[..., dy : dy + H, dx : dx + W]


@torch.no_grad()
def accuracy(model: DigitClassifier, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    model.eval()
    hits = sum(
        int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch)
    )
    return hits / len(x)


def outliers(x: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` images shaped like ``x`` that are no digit: a mix of Gaussian noise clipped to [-1, 1],
    uniform noise, 3x3-blurred noise (blobs) and real images with their pixels shuffled."""
    shape = (n, *x.shape[1:])
    kind = torch.randint(0, 4, (n,), generator=g)
    gauss = torch.randn(shape, generator=g).clamp(-1, 1)
    unif = torch.rand(shape, generator=g) * 2 - 1
    blur = F.avg_pool2d(torch.randn(shape, generator=g), 3, stride=1, padding=1).mul(2.5).clamp(-1, 1)
    rows = x[torch.randint(0, len(x), (n,), generator=g)].flatten(1)
    perm = torch.argsort(torch.rand(rows.shape, generator=g), dim=1)
    shuffled = torch.gather(rows, 1, perm).view(shape)
    pick = kind.view(-1, *([1] * (len(shape) - 1)))
    return torch.where(pick == 0, gauss, torch.where(pick == 1, unif, torch.where(pick == 2, blur, shuffled)))


def train_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    steps: int = 800,
    batch: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    outlier_weight: float = 0.5,
    width: int = 16,
) -> DigitClassifier:
    """AdamW with a cosine learning rate on cross-entropy with 1-pixel random shifts, plus
    ``outlier_weight`` times the cross-entropy of :func:`outliers` to the uniform distribution."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitClassifier(x.shape[1], num_classes, width=width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    half = batch // 2
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        logits = model(torch.cat([_shift(x[idx], g), outliers(x, half, g)]))
        loss = F.cross_entropy(logits[:batch], y[idx])
        if outlier_weight > 0:  # cross-entropy to uniform = mean over classes of -log softmax
            loss = loss - outlier_weight * F.log_softmax(logits[batch:], 1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def fit_temperature(model: DigitClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    """The temperature ``T`` minimising the negative log-likelihood of ``softmax(logits / T)`` on held-out
    ``(x, y)`` (a 1-D convex problem in ``log T``: golden-section search over ``T`` in [0.05, 20])."""
    logits = torch.cat([model(x[i : i + 512]) for i in range(0, len(x), 512)]).double()

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), y))

    lo, hi = math.log(0.05), math.log(20.0)
    r = (math.sqrt(5) - 1) / 2
    a, b = hi - r * (hi - lo), lo + r * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - r * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + r * (hi - lo)
            fb = nll(b)
    return math.exp(0.5 * (lo + hi))


def load_or_train_classifier(
    name: str,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int = 10,
    steps: int = 800,
) -> tuple[DigitClassifier, dict[str, Any]]:
    """The cached classifier for this training data, trained (and cached) if missing."""
    from safetensors.torch import load_file, save_file

    from ..train.checkpoint import atomic_write

    key = data_key(name, *train)
    weights, meta = (
        cache_dir() / "classifiers" / f"{key}.safetensors",
        cache_dir() / "classifiers" / f"{key}.json",
    )
    model = DigitClassifier(train[0].shape[1], num_classes, width=16)
    if weights.is_file() and meta.is_file():
        info = json.loads(meta.read_text())
        model.load_state_dict(load_file(str(weights)))
        model.temperature = float(info["temperature"])
        return model.eval(), info
    x, y = train
    n_fit = len(x) - max(1, len(x) // 10)  # the last 10% calibrates the temperature
    model = train_classifier(x[:n_fit], y[:n_fit], num_classes=num_classes, steps=steps)
    model.temperature = fit_temperature(model, x[n_fit:], y[n_fit:])
    info = {
        "key": key, "test_accuracy": accuracy(model, *test), "steps": steps, "arch": ARCH_VERSION,
        "temperature": model.temperature, "calibration_images": len(x) - n_fit,
    }
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, tmp))
    atomic_write(meta, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2)))
    return model, info


@torch.no_grad()
def features(model: DigitClassifier, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    model.eval()
    return torch.cat([model.features(x[i : i + batch]) for i in range(0, len(x), batch)])


@torch.no_grad()
def probabilities(model: DigitClassifier, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Calibrated class probabilities ``softmax(logits / T)`` ``[N, classes]``."""
    model.eval()
    t = float(getattr(model, "temperature", 1.0))
    return torch.cat([F.softmax(model(x[i : i + batch]) / t, 1) for i in range(0, len(x), batch)])


def confident_fraction(model: DigitClassifier, x: torch.Tensor) -> float:
    """Share of images assigned to some class with calibrated probability > :data:`CONFIDENT`."""
    return float((probabilities(model, x).max(1).values > CONFIDENT).double().mean())


def noise_images(shape: tuple[int, ...], n: int, seed: int = 0) -> torch.Tensor:
    """Pure noise in the data's range: ``N(0, I)`` clipped to [-1, 1] (what an untrained sampler
    returns), ``[n, *shape]``."""
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


def confidence_report(model: DigitClassifier, samples: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """The confident share of ``samples`` next to the same share on ``real`` images and on as many
    noise images (:func:`noise_images`), and the samples' share relative to the real one."""
    s, r = confident_fraction(model, samples), confident_fraction(model, real)
    z = confident_fraction(model, noise_images(tuple(samples.shape[1:]), max(len(samples), 500)))
    return {
        "confident_fraction": s,
        "confident_fraction_real": r,
        "confident_fraction_noise": z,
        "confident_relative_to_real": s / r if r > 0 else math.nan,
    }


@torch.no_grad()
def classifier_scores(
    model: DigitClassifier, samples: torch.Tensor, reference: torch.Tensor
) -> dict[str, Any]:
    """Fréchet distance in classifier features between ``samples`` and ``reference`` images, the
    share of samples the classifier assigns to some class with calibrated probability > 0.9, and the
    class histogram of the samples."""
    f_s, f_r = features(model, samples), features(model, reference)
    probs = probabilities(model, samples)
    conf, cls = probs.max(1)
    return {
        "fd": frechet_distance_features(f_s, f_r),
        "confident_fraction": float((conf > CONFIDENT).float().mean()),
        "class_histogram": torch.bincount(cls, minlength=probs.shape[1]).tolist(),
        "n_samples": len(samples),
        "n_reference": len(reference),
    }
