"""``difflab train | sample | eval | viz | demo``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import config as config_mod
from . import jobs, likelihood_jobs
from .samplers import budget


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="difflab", description="Denoising diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a TOML config or preset")
    t.add_argument("--config", default="toy2d", help="TOML file or preset name (default: toy2d)")
    t.add_argument(
        "--run",
        "--run-dir",
        dest="run",
        default=None,
        help="run folder (default: runs/<config name>); under torchrun spell it --run-dir",
    )
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set train.lr=1e-3 (repeatable)",
    )
    t.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="latest|STEP|PATH",
        help="continue from a checkpoint of the run folder (default: the latest)",
    )
    t.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("sample", help="draw samples from a trained run")
    s.add_argument(
        "--run",
        "--run-dir",
        "--ckpt",
        dest="run",
        required=True,
        help="run folder written by `difflab train`",
    )
    s.add_argument(
        "--sampler",
        default=None,
        help="ancestral, ddim, euler, heun, dpm++2m, dpm++3m, dpm++2m-sde, pc, ode or langevin "
        "(default: the config's)",
    )
    s.add_argument("--steps", type=int, default=None, help="number of steps (default: all T)")
    s.add_argument("--nfe", type=int, default=None, help="network evaluations to spend instead of --steps; "
                   "without --sampler: the recommended sampler and spacing for it (docs/samplers.md)")
    s.add_argument(
        "--spacing", default=None, help="uniform, quadratic, logsnr or edm (default: the sampler's preferred)"
    )
    s.add_argument(
        "--eta", type=float, default=None, help="eta of ddim (0 = deterministic), dpm++3m and dpm++2m-sde"
    )
    s.add_argument("--n", type=int, default=None, help="number of samples")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument(
        "--class", dest="label", type=int, default=None, metavar="K",
        help="class-conditional model: draw class K only (default: cycle through the classes)",
    )
    s.add_argument(
        "--guidance", type=float, default=None, metavar="S",
        help="classifier-free guidance scale: 1 = conditional (default), 0 = unconditional, "
        "> 1 sharper (the 'w' of the DDPM convention is S - 1)",
    )
    s.add_argument("--no-progress", action="store_true")

    e = sub.add_parser("eval", help="metrics of a trained run: bpd, fd, sw or all that fit its data")
    e.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=["all", "bpd", "fd", "sw"],
        help="bpd: the variational bound; fd: Fréchet distance in classifier features (images); "
        "sw: sliced Wasserstein-2 (2-D data); all (default)",
    )
    e.add_argument("--run", "--run-dir", "--ckpt", dest="run", required=True)
    e.add_argument("--split", default="test", choices=["test", "train"], help="data split for bpd")
    e.add_argument("--n", type=int, default=None, help="examples scored (bpd) or samples used (fd)")
    e.add_argument(
        "--ode", action="store_true",
        help="bpd: also the likelihood through the probability-flow ODE (exact for 2-D data, Hutchinson "
        "for images, uniform dequantization)",
    )
    e.add_argument("--rtol", type=float, default=1e-5, help="--ode: relative tolerance of RK45 (1e-5)")
    e.add_argument("--atol", type=float, default=1e-5, help="--ode: absolute tolerance of RK45 (1e-5)")
    e.add_argument("--no-progress", action="store_true")

    v = sub.add_parser("viz", help="figures of trained runs")
    v.add_argument("what", choices=["vlb"], help="vlb: the bound's terms against log-SNR")
    v.add_argument(
        "--run", "--run-dir", "--ckpt", dest="runs", action="append", required=True,
        help="run folder (repeat to overlay several runs)",
    )
    v.add_argument("--out", default=None, help="PNG path (default: RUN/vlb.png of the first run)")
    v.add_argument("--split", default="test", choices=["test", "train"])
    v.add_argument("--n", type=int, default=None, help="examples scored (default: eval.bound_n)")
    v.add_argument("--no-progress", action="store_true")

    d = sub.add_parser("demo", help="train, sample and evaluate the bundled digits job end to end")
    d.add_argument(
        "--config", default="digits", help="preset or TOML file (default: digits; toy2d for the 2-D job)"
    )
    d.add_argument("--run", "--run-dir", dest="run", default="runs/demo")
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
            summary = jobs.train(cfg, run, resume=args.resume or False, progress=progress)
            if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
                _print(summary)
                print(f"run folder: {run}")
        elif args.command == "sample":
            budget.apply_nfe(args)  # --nfe N: the sampler, steps and spacing for N evaluations
            _print(
                jobs.sample(
                    args.run,
                    args.sampler,
                    args.steps,
                    args.n,
                    args.seed,
                    args.spacing,
                    args.eta,
                    progress=progress,
                    label=args.label,
                    guidance=args.guidance,
                )
            )
        elif args.command == "eval":
            if args.what == "bpd":
                result = jobs.bound(args.run, args.split, args.n, progress=progress)
                if args.ode:
                    result = likelihood_jobs.ode_bound(
                        args.run, args.split, args.n, rtol=args.rtol, atol=args.atol, progress=progress
                    )
                _print(result)
            elif args.what == "fd":
                _print(jobs.frechet(args.run, args.n))
            elif args.what == "sw":
                _print(jobs.sliced(args.run))
            else:
                _print(jobs.evaluate(args.run, progress=progress))
        elif args.command == "viz":
            _print(likelihood_jobs.vlb_figure(args.runs, args.out, args.split, args.n, progress=progress))
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
    print(f"[1/4] training on {cfg.data.name} for at most {cfg.train.max_minutes:g} min -> {run}")
    summary = jobs.train(cfg, run, progress=progress)
    print(f"      {summary['steps']} steps in {summary['seconds']} s ({summary['it_per_s']} it/s)")
    print(f"[2/4] sampling {cfg.sample.n} with {cfg.sample.sampler}")
    s = jobs.sample(run, progress=progress)
    print(f"      {s['nfe']} network evaluations in {s['seconds']} s")
    files = [
        "samples.png",
        "samples.npy",
        "metrics.json",
        "train.json",
        "config.toml",
        "log.csv",
        "model.safetensors",
        "checkpoint.pt",
    ]
    if cfg.model.kind == "mlp":
        print("[3/4] sliced Wasserstein-2 against fresh data")
        m = jobs.sliced(run)
        print(
            f"      samples to fresh data {m['sliced_w2']:.4f}, between two fresh data sets "
            f"{m['sliced_w2_floor']:.4f} -> ratio {m['sliced_w2_ratio']:.2f}"
        )
        if cfg.diffusion.process in jobs.BOUND_PROCESSES:
            print("[4/4] the variational bound on held-out points")
            m = jobs.bound(run, progress=progress)
            print(
                f"      {m['bound_nats_per_dim']:.3f} +- {m['bound_nats_per_dim_stderr']:.3f} nats/dim "
                f"on {m['bound_points']} points"
            )
    else:
        print("[3/4] forward and reverse strips, test bits/dim")
        files[1:1] = jobs.strips(run)
        if cfg.diffusion.process in jobs.BOUND_PROCESSES:
            m = jobs.bound(run, progress=progress)
            print(
                f"      test bound {m['bound_bits_per_dim']:.3f} +- {m['bound_bits_per_dim_stderr']:.3f} "
                f"bits/dim on {m['bound_points']} images"
            )
        print("[4/4] Fréchet distance in the features of a digit classifier (trained once, cached)")
        m = jobs.frechet(run)
        print(
            f"      FD {m['fd']:.3f} (train vs test images: {m['fd_train_vs_test']:.3f}); classifier test "
            f"accuracy {m['classifier_test_accuracy']:.3f}; {100 * m['confident_fraction']:.1f}% of samples "
            "assigned to a digit with probability > 0.9"
        )
    print(f"done in {time.perf_counter() - t0:.0f} s. Results in {run}/:")
    for name in files:
        print(f"  {run / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
