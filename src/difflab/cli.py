"""``difflab train | sample | eval | viz | demo``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from . import config as config_mod
from . import demo, runs
from .interop import linked_run
from .samplers import SAMPLERS, budget
from .samplers.levels import SPACINGS
from .train.checkpoint import upgrade_checkpoint
from .train.trainer import Interrupted


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _finite(low: float, strict: bool = False):
    """A float type for argparse: finite and ``>= low`` (``> low`` if ``strict``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(
                f"expected a finite number {'>' if strict else '>='} {low:g}, got {text!r}"
            )
        return value

    return parse


def _resume_spec(text: str) -> str:
    if text == "latest" or text.isdigit() or Path(text).exists():
        return text
    raise argparse.ArgumentTypeError(
        f"expected 'latest', a step number or an existing checkpoint file, got {text!r}"
    )


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
        type=_resume_spec,
        help="continue from a checkpoint of the run folder: the latest (default), the step-numbered "
        "checkpoint STEP, or the checkpoint file PATH",
    )
    t.add_argument(
        "--overwrite", action="store_true",
        help="start a fresh run in a folder that holds one (deletes its checkpoints, logs and samples)",
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
        help=f"{', '.join(SAMPLERS)} "
        "(default: the config's)",
    )
    s.add_argument("--steps", type=_positive_int, default=None, help="number of steps (default: all T)")
    s.add_argument(
        "--nfe", type=_positive_int, default=None,
        help="network evaluations to spend instead of --steps; without --sampler: the recommended sampler "
        "and spacing for it (docs/samplers.md)",
    )
    s.add_argument(
        "--spacing", default=None, help=f"{', '.join(SPACINGS)} (default: the sampler's preferred)"
    )
    s.add_argument(
        "--eta", type=_finite(0.0), default=None,
        help="eta of ddim (0 = deterministic), dpm++3m and dpm++2m-sde",
    )
    s.add_argument("--n", type=_positive_int, default=None, help="number of samples")
    s.add_argument("--seed", type=_int, default=None)
    s.add_argument(
        "--class", dest="label", type=_int, default=None, metavar="K",
        help="class-conditional model: draw class K only (default: cycle through the classes)",
    )
    s.add_argument(
        "--guidance", type=_finite(-math.inf), default=None, metavar="S",
        help="classifier-free guidance scale: 1 = conditional (default), 0 = unconditional, "
        "> 1 sharper (the 'w' of the DDPM convention is S - 1)",
    )
    s.add_argument("--out", default=None, help=OUT_HELP)
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
    e.add_argument("--n", type=_positive_int, default=None, help="examples scored (bpd) or samples used (fd)")
    e.add_argument(
        "--ode", action="store_true",
        help="bpd: also the likelihood through the probability-flow ODE (exact for 2-D data, Hutchinson "
        "for images, uniform dequantization)",
    )
    e.add_argument(
        "--rtol", type=_finite(0.0, strict=True), default=1e-5,
        help="--ode: relative tolerance of RK45 (1e-5)",
    )
    e.add_argument(
        "--atol", type=_finite(0.0, strict=True), default=1e-5,
        help="--ode: absolute tolerance of RK45 (1e-5)",
    )
    e.add_argument(
        "--data", default=None, help="--run is a diffusers folder: the data scored (digits, mnist, an image "
        "folder or a .npy/.npz file)",
    )
    e.add_argument("--out", default=None, help=OUT_HELP)
    e.add_argument("--no-progress", action="store_true")

    v = sub.add_parser("viz", help="figures of trained runs")
    v.add_argument("what", choices=["vlb"], help="vlb: the bound's terms against log-SNR")
    v.add_argument(
        "--run", "--run-dir", "--ckpt", dest="runs", action="append", required=True,
        help="run folder (repeat to overlay several runs)",
    )
    v.add_argument("--out", default=None, help="PNG path (default: RUN/vlb.png of the first run)")
    v.add_argument("--split", default="test", choices=["test", "train"])
    v.add_argument("--n", type=_positive_int, default=None, help="examples scored (default: eval.bound_n)")
    v.add_argument("--no-progress", action="store_true")

    d = sub.add_parser("demo", help="train, sample and evaluate the bundled digits job end to end")
    d.add_argument(
        "--config", default="digits", help="preset or TOML file (default: digits; toy2d for the 2-D job)"
    )
    d.add_argument("--run", "--run-dir", dest="run", default="runs/demo")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    d.add_argument(
        "--overwrite", action="store_true", help="replace a run already in the folder (default: refuse)"
    )
    d.add_argument("--no-progress", action="store_true")

    u = sub.add_parser(
        "upgrade-checkpoint",
        help="convert a checkpoint of an older difflab (formats 1-2) that you trust to the safe format 3",
    )
    u.add_argument("path", help="the checkpoint file (it is unpickled once: only for files you trust)")

    x = sub.add_parser("export", help="write a difflab U-Net run as a diffusers pipeline folder")
    x.add_argument("--run", "--run-dir", dest="run", required=True, help="run folder of a U-Net run")
    x.add_argument("--diffusers", dest="out", required=True, metavar="OUT", help="new folder to write")
    x.add_argument("--no-progress", action="store_true")

    r = sub.add_parser("report", help="one self-contained HTML page of one or more runs")
    r.add_argument("--run", "--run-dir", dest="runs", action="append", required=True, help="repeatable")
    r.add_argument("--out", default=None, help="HTML path (default: RUN/report.html of the first run)")
    r.add_argument("--no-progress", action="store_true")
    return p


OUT_HELP = (
    "--run is a diffusers folder: where results go (default: runs/from-diffusers/NAME; the diffusers "
    "folder is never written to)"
)


def _print(obj) -> None:
    print(json.dumps(obj, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    progress = not getattr(args, "no_progress", False)
    try:
        if args.command in ("sample", "eval"):  # a diffusers folder: its output folder (difflab.interop)
            data = getattr(args, "data", None)
            args.run = linked_run.resolve_run(args.run, args.out, data, needs_data=args.command == "eval")
        if args.command in ("viz", "report"):  # a diffusers folder: the results in its default output folder
            args.runs = [linked_run.resolve_run(r, needs_data=args.command == "viz") for r in args.runs]
        if args.command == "train":
            cfg = config_mod.load(args.config, args.overrides)
            run = Path(args.run or f"runs/{cfg.name}")
            summary = runs.train(cfg, run, resume=args.resume, progress=progress, overwrite=args.overwrite)
            if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
                _print(summary)
                print(f"run folder: {run}")
        elif args.command == "sample":
            budget.apply_nfe(args)  # --nfe N: the sampler, steps and spacing for N evaluations
            _print(
                runs.sample(
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
                a = args
                _print(runs.likelihood(a.run, a.split, a.n, a.ode, a.rtol, a.atol, progress))
            elif args.what == "fd":
                _print(runs.frechet(args.run, args.n))
            elif args.what == "sw":
                _print(runs.sliced(args.run))
            else:
                _print(runs.evaluate(args.run, progress=progress))
        elif args.command == "viz":
            _print(runs.vlb_figure(args.runs, args.out, args.split, args.n, progress=progress))
        elif args.command == "demo":
            return demo.run(
                args.config, args.overrides, args.run, progress=progress, overwrite=args.overwrite
            )
        elif args.command == "upgrade-checkpoint":
            print(f"upgraded {upgrade_checkpoint(args.path)} to checkpoint format 3")
        elif args.command == "export":
            from .interop.diffusers_out import export_run

            _print(export_run(args.run, args.out))
        elif args.command == "report":
            from .report import write_report

            _print({"report": str(write_report(args.runs, args.out))})
    except Interrupted as exc:
        print(f"difflab {args.command}: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print(f"difflab {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as exc:  # OSError: missing files, a full disk, ...
        print(f"difflab {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    return 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 2000 else text[:2000] + " ..."


if __name__ == "__main__":
    sys.exit(main())
