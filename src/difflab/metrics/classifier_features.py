"""Train once, cache, and reuse a digit classifier whose features score samples.

The classifier is trained on the training split of the same dataset the diffusion model learns
(random 1-pixel shifts as augmentation), its test accuracy is recorded, and its weights are cached
under ``$DIFFLAB_CACHE`` (default ``~/.cache/difflab``) keyed by a hash of the training data.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..nets.classifier import DigitClassifier
from .frechet import frechet_distance_features

ARCH_VERSION = "digitclassifier-v1"


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


def train_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    steps: int = 1500,
    batch: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
) -> DigitClassifier:
    """AdamW with a cosine learning rate on cross-entropy, 1-pixel random shifts."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitClassifier(x.shape[1], num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        loss = F.cross_entropy(model(_shift(x[idx], g)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def load_or_train_classifier(
    name: str,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int = 10,
    steps: int = 1500,
) -> tuple[DigitClassifier, dict[str, Any]]:
    """The cached classifier for this training data, trained (and cached) if missing."""
    from safetensors.torch import load_file, save_file

    from ..train.checkpoint import atomic_write

    key = data_key(name, *train)
    weights, meta = (
        cache_dir() / "classifiers" / f"{key}.safetensors",
        cache_dir() / "classifiers" / f"{key}.json",
    )
    model = DigitClassifier(train[0].shape[1], num_classes)
    if weights.is_file() and meta.is_file():
        model.load_state_dict(load_file(str(weights)))
        return model.eval(), json.loads(meta.read_text())
    model = train_classifier(*train, num_classes=num_classes, steps=steps)
    info = {"key": key, "test_accuracy": accuracy(model, *test), "steps": steps, "arch": ARCH_VERSION}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, tmp))
    atomic_write(meta, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2)))
    return model, info


@torch.no_grad()
def features(model: DigitClassifier, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    model.eval()
    return torch.cat([model.features(x[i : i + batch]) for i in range(0, len(x), batch)])


@torch.no_grad()
def classifier_scores(
    model: DigitClassifier, samples: torch.Tensor, reference: torch.Tensor
) -> dict[str, Any]:
    """Fréchet distance in classifier features between ``samples`` and ``reference`` images, the
    share of samples the classifier assigns to some class with probability > 0.9, and the class
    histogram of the samples."""
    f_s, f_r = features(model, samples), features(model, reference)
    probs = torch.cat([F.softmax(model(samples[i : i + 512]), 1) for i in range(0, len(samples), 512)])
    conf, cls = probs.max(1)
    return {
        "fd": frechet_distance_features(f_s, f_r),
        "confident_fraction": float((conf > 0.9).float().mean()),
        "class_histogram": torch.bincount(cls, minlength=probs.shape[1]).tolist(),
        "n_samples": len(samples),
        "n_reference": len(reference),
    }
