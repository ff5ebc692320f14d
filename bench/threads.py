"""Training steps/s of a preset's U-Net at 1 and 2 intra-op threads, alone and beside a busy process,
and what difflab's automatic choice (``train.threads = 0``, :mod:`difflab.threads`) picks in each case.

    .venv/bin/python bench/threads.py [--config digits] [--steps 30] [--set KEY=VALUE ...]

Every figure is measured in the same run; the table ends with the ratios that matter: how much a
second thread gains on an idle machine, and how much it loses when another process keeps a core busy.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import torch

from difflab import config
from difflab.runs.build import build_diffusion, build_model, build_splits
from difflab.threads import free_cores


def _spin(seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        pass


def steps_per_second(cfg, threads: int, steps: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    splits = build_splits(cfg)
    diffusion, model = build_diffusion(cfg, splits), build_model(cfg, splits.shape)
    opt = torch.optim.AdamW(model.parameters(), cfg.train.lr)
    x = splits.train[: cfg.train.batch_size]
    for i in range(steps + 5):
        if i == 5:
            t0 = time.perf_counter()
        loss = diffusion.loss(model, x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="digits")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    cfg = config.load(args.config, args.overrides)
    rows = {}
    for busy in (False, True):
        spinner = None
        if busy:
            spinner = mp.get_context("spawn").Process(target=_spin, args=(3600,), daemon=True)
            spinner.start()
            time.sleep(1.0)
        auto = free_cores()
        for threads in (1, 2):
            rows[(busy, threads)] = steps_per_second(cfg, threads, args.steps)
        rows[(busy, "auto")] = auto
        if spinner is not None:
            spinner.terminate()
            spinner.join()
    print(f"{args.config} U-Net, batch {cfg.train.batch_size}, {cfg.train.precision}: training steps/s")
    print("| machine | 1 thread | 2 threads | automatic choice |")
    print("|---|---|---|---|")
    for busy in (False, True):
        label = "one busy process beside it" if busy else "idle"
        print(f"| {label} | {rows[(busy, 1)]:.2f} | {rows[(busy, 2)]:.2f} | {rows[(busy, 'auto')]} threads |")
    print(f"second thread, idle: x{rows[(False, 2)] / rows[(False, 1)]:.2f}; beside a busy process: "
          f"x{rows[(True, 2)] / rows[(True, 1)]:.2f}")


if __name__ == "__main__":
    main()
