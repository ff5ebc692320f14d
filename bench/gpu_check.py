"""One section of ``bench/gpu_check.sh`` per call, each printing one JSON object on its last line.

``env``: the GPU, PyTorch, CUDA and which of difflab's Python dependencies are importable.
``tests``: the ``@pytest.mark.cuda`` tests (``tests/test_cuda.py``) through pytest, or, where pytest
is not installed, by calling the test functions directly.
``train [--compile]``: optimizer steps per second of the ``cifar10-ddpm`` preset's 35.7M-parameter
U-Net in bf16 autocast (batch 128, 3x32x32 random images; AdamW, clipping, as the trainer does),
eager or under ``torch.compile``; warm-up steps (and compilation) are timed apart.
``sample``: images per second of DDIM at 50 network evaluations, batch 256, bf16 autocast.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DEPENDENCIES = ("numpy", "tqdm", "safetensors", "tomli_w", "pytest", "torchdiffeq", "matplotlib", "sklearn")


def env() -> dict:
    missing = [m for m in DEPENDENCIES if importlib.util.find_spec(m) is None]
    p = torch.cuda.get_device_properties(0)
    return {
        "gpu": p.name,
        "gpu_memory_gib": round(p.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bf16_supported": torch.cuda.is_bf16_supported(),
        "missing_python_modules": missing,
    }


def tests() -> dict:
    if importlib.util.find_spec("pytest") is not None:
        import pytest

        code = pytest.main(
            ["-q", "-m", "cuda", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_cuda.py")]
        )
        return {"runner": "pytest", "exit_code": int(code), "passed": int(code) == 0}
    sys.modules["pytest"] = _PytestStub()
    sys.path.insert(0, str(ROOT / "tests"))
    import test_cuda

    results = {}
    for name in CUDA_TESTS:
        try:
            getattr(test_cuda, name)()
            results[name] = "passed"
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            results[name] = f"failed: {type(exc).__name__}: {exc}"[:300]
    return {
        "runner": "direct (no pytest)",
        "results": results,
        "passed": all(v == "passed" for v in results.values()),
    }


CUDA_TESTS = (
    "test_training_step_on_cuda_matches_cpu",
    "test_bf16_autocast_trains_close_to_fp32",
    "test_ddim_sampling_on_cuda_matches_cpu",
)


class _PytestStub:
    """What tests/test_cuda.py uses of pytest, for a machine without it: marks as no-op decorators and
    ``approx(value, rel=...)``."""

    class mark:  # noqa: N801 - pytest's spelling
        def __getattr__(self, name):
            def decorate(*args, **kwargs):
                return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else (lambda f: f)

            return decorate

    mark = mark()

    class approx:  # noqa: N801
        def __init__(self, value: float, rel: float = 1e-6):
            self.value, self.rel = value, rel

        def __eq__(self, other) -> bool:
            import math

            return math.isclose(other, self.value, rel_tol=self.rel)


def _cifar_model():
    from difflab import config
    from difflab.runs.build import build_diffusion, build_model

    cfg = config.load("cifar10-ddpm")
    model = build_model(cfg, (3, 32, 32)).cuda().to(memory_format=torch.channels_last)
    return cfg, build_diffusion(cfg), model


def _timed(fn, n: int) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def train(compile_model: bool, warmup: int = 3, steps: int = 20) -> dict:
    cfg, diffusion, model = _cifar_model()
    net = torch.compile(model) if compile_model else model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    B = cfg.train.batch_size
    x0 = (torch.rand(B, 3, 32, 32, device="cuda") * 2 - 1).contiguous(memory_format=torch.channels_last)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = diffusion.loss(net, x0).float().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()

    first = _timed(step, warmup)
    seconds = _timed(step, steps)
    return {
        "compile": compile_model,
        "batch": B,
        "parameters": sum(p.numel() for p in model.parameters()),
        "warmup_seconds": round(first, 2),
        "steps_per_s": round(steps / seconds, 2),
        "images_per_s": round(steps * B / seconds, 1),
        "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


@torch.no_grad()
def sample(n: int = 256, nfe: int = 50) -> dict:
    _, diffusion, model = _cifar_model()
    model.eval()

    def run():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            diffusion.sample(
                model, (n, 3, 32, 32), sampler="ddim", steps=nfe, device="cuda", clip=(-1.0, 1.0)
            )

    _timed(run, 1)  # warm-up (cuDNN autotuning)
    seconds = _timed(run, 1)
    return {
        "sampler": "ddim",
        "nfe": nfe,
        "batch": n,
        "seconds": round(seconds, 2),
        "images_per_s": round(n / seconds, 1),
    }


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "env"
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA GPU visible to PyTorch"}))
        return 3
    out = {"env": env, "tests": tests, "sample": sample}.get(what)
    result = train("--compile" in argv) if what == "train" else out() if out else None
    if result is None:
        raise SystemExit(f"unknown section {what!r}; choose env, tests, train [--compile] or sample")
    print(json.dumps(result))
    return 0 if result.get("passed", True) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
