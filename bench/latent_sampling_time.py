"""Sampling time per image of two runs (a pixel and a latent diffusion run, say) with the same sampler and
number of steps, alternating the runs so that both see the same machine load (docs/vae.md).

    python bench/latent_sampling_time.py RUN_A RUN_B --n 16 --steps 50 --sampler ddim
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from difflab import jobs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("runs", nargs="+")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    loaded = {r: jobs.load_run(r) for r in args.runs}
    times: dict[str, list[float]] = {r: [] for r in args.runs}
    for rep in range(args.repeats):
        for r, (_, process, model, splits) in loaded.items():
            t0 = time.perf_counter()
            process.sample(model, (args.n, *splits.shape), sampler=args.sampler, steps=args.steps,
                           clip=(-1.0, 1.0), generator=torch.Generator().manual_seed(rep))
            times[r].append(round((time.perf_counter() - t0) / args.n, 3))
    print(json.dumps({"sampler": args.sampler, "steps": args.steps, "n": args.n,
                      "seconds_per_image": times}, indent=1))


if __name__ == "__main__":
    main()
