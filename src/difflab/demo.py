"""``difflab demo``: train, sample and evaluate one preset end to end, with a quality gate.

The demo trains a fixed number of steps (``train.steps``), so its result is the same on every
machine and only the time differs. For images it ends with a gate that can fail: the share of
samples a calibrated digit classifier assigns to a digit with probability > 0.9, next to the same
share on real test images and on pure noise (:func:`difflab.metrics.classifier_features.
confidence_report`); the demo passes when the samples reach :data:`GATE` of the real images' share.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import config as config_mod
from . import runs
from .processes.protocol import has_bound
from .runs.build import build_diffusion

GATE = 0.9  # samples' confident share / real images' confident share needed to pass
FAILED = 3  # exit status of a demo whose samples miss the gate

__all__ = ["FAILED", "GATE", "run"]


def run(config: str, overrides: list[str], run_dir: str | Path, progress: bool = True,
        overwrite: bool = False) -> int:
    """Run the demo of preset or file ``config`` into ``run_dir``; returns the exit status."""
    t0 = time.perf_counter()
    cfg = config_mod.load(config, overrides)
    run = Path(run_dir)
    limit = f" (stopping early after {cfg.train.max_minutes:g} min)" if cfg.train.max_minutes > 0 else ""
    print(f"[1/4] training on {cfg.data.name} for {cfg.train.steps} steps{limit} -> {run}", flush=True)
    summary = runs.train(cfg, run, progress=progress, overwrite=overwrite)
    print(f"      {summary['steps']} steps in {summary['seconds']} s ({summary['it_per_s']} it/s)")
    t = time.perf_counter()
    print(f"[2/4] sampling {cfg.sample.n} with {cfg.sample.sampler}", flush=True)
    s = runs.sample(run, progress=progress)
    print(f"      {s['nfe']} network evaluations in {s['seconds']} s")
    files = ["samples.png", "samples.npy", "metrics.json", "train.json", "config.toml", "log.csv",
             "model.safetensors", "checkpoint.pt"]
    status = 0
    if cfg.model.kind == "mlp":
        print("[3/4] sliced Wasserstein-2 against fresh data", flush=True)
        m = runs.sliced(run)
        print(
            f"      samples to fresh data {m['sliced_w2']:.4f}, between two fresh data sets "
            f"{m['sliced_w2_floor']:.4f} -> ratio {m['sliced_w2_ratio']:.2f}"
        )
        if has_bound(build_diffusion(cfg)):
            print("[4/4] the variational bound on held-out points", flush=True)
            m = runs.bound(run, progress=progress)
            print(
                f"      {m['bound_nats_per_dim']:.3f} +- {m['bound_nats_per_dim_stderr']:.3f} nats/dim "
                f"on {m['bound_points']} points"
            )
    else:
        t = time.perf_counter()
        print("[3/4] forward and reverse strips, test bits/dim", flush=True)
        files[1:1] = runs.strips(run)
        if has_bound(build_diffusion(cfg)):
            m = runs.bound(run, progress=progress)
            print(
                f"      test bound {m['bound_bits_per_dim']:.3f} +- {m['bound_bits_per_dim_stderr']:.3f} "
                f"bits/dim on {m['bound_points']} images ({time.perf_counter() - t:.0f} s)"
            )
        t = time.perf_counter()
        print("[4/4] Fréchet distance and confidence of a digit classifier (trained once, cached)",
              flush=True)
        m = runs.frechet(run)
        print(
            f"      FD {m['fd']:.3f} (train vs test images: {m['fd_train_vs_test']:.3f}); classifier test "
            f"accuracy {m['classifier_test_accuracy']:.3f} ({time.perf_counter() - t:.0f} s)"
        )
        status = _gate(m)
    from .report import write_report

    files.append(write_report([run]).name)  # one self-contained page of everything above
    print(f"done in {time.perf_counter() - t0:.0f} s. Results in {run}/ (open report.html):")
    for name in files:
        print(f"  {run / name}")
    return status


def _gate(m: dict) -> int:
    share, real, noise = m["confident_fraction"], m["confident_fraction_real"], m["confident_fraction_noise"]
    print(
        f"      assigned to a digit with probability > 0.9: samples {100 * share:.1f}%, real test images "
        f"{100 * real:.1f}%, pure noise {100 * noise:.1f}%"
    )
    ratio = share / real if real > 0 else 0.0
    if ratio >= GATE:
        print(f"      quality gate passed: samples reach {100 * ratio:.0f}% of the real images' share "
              f"(needed {100 * GATE:.0f}%)")
        return 0
    print(
        f"      quality gate FAILED: samples reach {100 * ratio:.0f}% of the real images' share (needed "
        f"{100 * GATE:.0f}%); the model is undertrained (train.steps) or broken"
    )
    return FAILED
