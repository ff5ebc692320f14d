"""``difflab train | sample | eval | demo``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import config as config_mod
from . import jobs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="difflab", description="Denoising diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a TOML config or preset")
    t.add_argument("--config", default="toy2d", help="TOML file or preset name (default: toy2d)")
    t.add_argument("--run", default=None, help="run folder (default: runs/<config name>)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set train.lr=1e-3 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    t.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("sample", help="draw samples from a trained run")
    s.add_argument("--run", required=True, help="run folder written by `difflab train`")
    s.add_argument("--sampler", default=None, help="ancestral or ddim (default: the config's)")
    s.add_argument("--steps", type=int, default=None, help="number of steps (default: all T)")
    s.add_argument("--spacing", default=None, help="uniform, quadratic or logsnr")
    s.add_argument("--eta", type=float, default=None, help="DDIM eta (0 = deterministic)")
    s.add_argument("--n", type=int, default=None, help="number of samples")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--no-progress", action="store_true")

    e = sub.add_parser("eval", help="sliced Wasserstein distance and the bound of a trained run")
    e.add_argument("--run", required=True)
    e.add_argument("--no-progress", action="store_true")

    d = sub.add_parser("demo", help="train, sample and evaluate the bundled toy job end to end")
    d.add_argument("--config", default="toy2d")
    d.add_argument("--run", default="runs/demo")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    d.add_argument("--no-progress", action="store_true")
    return p


def _print(obj) -> None:
    print(json.dumps(obj, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    progress = not args.no_progress
    try:
        if args.command == "train":
            cfg = config_mod.load(args.config, args.overrides)
            run = Path(args.run or f"runs/{cfg.name}")
            _print(jobs.train(cfg, run, resume=args.resume, progress=progress))
            print(f"run folder: {run}")
        elif args.command == "sample":
            _print(jobs.sample(args.run, args.sampler, args.steps, args.n, args.seed, args.spacing,
                               args.eta, progress=progress))
        elif args.command == "eval":
            _print(jobs.evaluate(args.run, progress=progress))
        elif args.command == "demo":
            return _demo(args, progress)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"difflab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _demo(args, progress: bool) -> int:
    t0 = time.perf_counter()
    cfg = config_mod.load(args.config, args.overrides)
    run = Path(args.run)
    print(f"[1/3] training on {cfg.data.name} for at most {cfg.train.max_minutes:g} min -> {run}")
    summary = jobs.train(cfg, run, progress=progress)
    print(f"      {summary['steps']} steps in {summary['seconds']} s ({summary['it_per_s']} it/s)")
    print(f"[2/3] sampling {cfg.sample.n} points with {cfg.sample.sampler}")
    s = jobs.sample(run, progress=progress)
    print(f"      {s['nfe']} network evaluations in {s['seconds']} s")
    print("[3/3] evaluating: sliced Wasserstein-2 and the bound on held-out points")
    m = jobs.evaluate(run, progress=progress)
    print(f"      sliced W2 to fresh data {m['sliced_w2']:.4f}, between two fresh data sets "
          f"{m['sliced_w2_floor']:.4f} -> ratio {m['sliced_w2_ratio']:.2f}")
    print(f"      bound on {m['bound_points']} held-out points: {m['bound_nats_per_dim']:.3f}"
          f" +- {m['bound_nats_per_dim_stderr']:.3f} nats/dim")
    print(f"done in {time.perf_counter() - t0:.0f} s. Results in {run}/:")
    for name in ("samples.png", "samples.npy", "metrics.json", "train.json", "config.toml", "log.csv",
                 "model.safetensors", "checkpoint.pt"):
        print(f"  {run / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
