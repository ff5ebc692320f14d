"""Training throughput of difflab's U-Net against diffusers' ``UNet2DModel`` at an equal parameter count.

    .bench-venv/bin/python bench/throughput.py            # full run: timing + 300-step loss check
    .bench-venv/bin/python bench/throughput.py --quick    # smoke test (a few steps of everything)

Needs the benchmark venv ``.bench-venv`` (CPU torch + diffusers + difflab installed editable, see
``bench/README.md``); difflab's own code imports diffusers only in ``difflab.interop`` (the optional
``difflab[diffusers]`` extra).

One training step = draw a batch (64 MNIST digits from :func:`difflab.data.images.load_mnist`, then
``t`` and ``eps``, from one seeded generator, in the trainer's order), ``L_simple`` of
``GaussianDiffusion("linear", 1000, "eps")``, backward, gradient clipping at 1.0 and an AdamW step (lr
``--lr``, no weight decay): ``difflab.train.Trainer``'s loop without EMA and logging, identical for
every model. ``UNet2DModel`` is called as ``lambda x, t: unet(x, t).sample``.

Models. difflab: the ``mnist`` preset's U-Net (``channels=32, channel_mult=(1, 2, 2),
num_res_blocks=2, attention_resolutions=(7,), dropout=0.1, scale_shift_norm``). diffusers: the same
architecture in ``UNet2DModel``'s terms (``block_out_channels=(32, 64, 64)``, ``layers_per_block=2``,
attention blocks at the 7x7 level with one head, ``resnet_time_scale_shift="scale_shift"``,
``dropout=0.1``, 32 norm groups). Both parameter counts are printed and must agree within 10%.

Configurations (``--configs``; precision = bf16 autocast or fp32, layout = NCHW or channels_last):

    difflab          bf16, NCHW           difflab's fastest CPU settings
    difflab-cl       bf16, channels_last  the mnist preset's train.precision / train.channels_last
    difflab-fp32     fp32, NCHW           difflab at diffusers' defaults
    diffusers        fp32, NCHW           diffusers as a user gets it: the baseline of the target
    diffusers-bf16   bf16, NCHW
    diffusers-tuned  bf16, channels_last

Method. Each configuration lives in its own worker process (so ``ru_maxrss``, the peak resident set,
is its own) with ``--threads`` intra-op threads. Only one worker runs at a time: after ``--warmup``
untimed steps each, ``--repeats`` rounds run ``--steps`` timed steps of every configuration, the order
rotated each round, so a disturbance of the machine reaches all of them. Reported: median steps/s
over the rounds and, for ratios, the median over rounds of the ratio within the round. The loss check
(``--loss-configs``) then trains a fresh copy of each model from seed ``--seed`` (same initialisation
seed, batches, ``t``, ``eps`` and dropout seed) for ``--loss-steps`` steps and reports the mean training
loss of the last 50 steps and ``L_simple`` on 1,024 fixed (x0, t, eps) triples of the training data,
evaluated in fp32 in eval mode (the figure compared, within 5%). ``difflab-fp32`` is in the default
loss check to tell what bf16 changes from what the architectures change.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

BATCH = 64
TIMESTEPS = 1000
GRAD_CLIP = 1.0
EVAL_BATCH = 64
LAST = 50  # training losses averaged at the end of the loss run
TARGET_SPEEDUP = 2.5  # difflab against diffusers' defaults
LOSS_TOLERANCE = 0.05
PARAM_TOLERANCE = 0.10


@dataclass(frozen=True)
class Setup:
    net: str  # "difflab" or "diffusers"
    precision: str  # "fp32" or "bf16" (autocast)
    channels_last: bool

    @property
    def layout(self) -> str:
        return "channels_last" if self.channels_last else "NCHW"


SETUPS = {
    "difflab": Setup("difflab", "bf16", False),
    "difflab-cl": Setup("difflab", "bf16", True),
    "difflab-fp32": Setup("difflab", "fp32", False),
    "diffusers": Setup("diffusers", "fp32", False),
    "diffusers-bf16": Setup("diffusers", "bf16", False),
    "diffusers-tuned": Setup("diffusers", "bf16", True),
}
OURS, BASELINE = "difflab", "diffusers"
LOSS_DEFAULT = (OURS, "difflab-fp32", BASELINE)  # difflab-fp32 separates precision from architecture


def model_kwargs(channels: int) -> tuple[dict, dict]:
    """``(difflab UNet kwargs, diffusers UNet2DModel kwargs)`` describing the same architecture."""
    mult, blocks, attn, dropout = (1, 2, 2), 2, (7,), 0.1
    ours = dict(
        in_channels=1,
        channels=channels,
        channel_mult=mult,
        num_res_blocks=blocks,
        attention_resolutions=attn,
        image_size=28,
        dropout=dropout,
        scale_shift_norm=True,
    )
    sizes = [28 // 2**i for i in range(len(mult))]
    widths = tuple(channels * m for m in mult)
    theirs = dict(
        sample_size=28,
        in_channels=1,
        out_channels=1,
        block_out_channels=widths,
        layers_per_block=blocks,
        down_block_types=tuple("AttnDownBlock2D" if s in attn else "DownBlock2D" for s in sizes),
        up_block_types=tuple("AttnUpBlock2D" if s in attn else "UpBlock2D" for s in reversed(sizes)),
        attention_head_dim=max(widths),  # one head, as difflab's default num_heads=1
        norm_num_groups=32,
        dropout=dropout,
        resnet_time_scale_shift="scale_shift",  # difflab's scale_shift_norm
    )
    return ours, theirs


# ----------------------------------------------------------------------------- worker side


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


class Runner:
    """One configuration: its model, optimizer, data and batch generator (lives in a worker process)."""

    def __init__(self, name: str, opts: dict):
        import torch

        import difflab as dl
        from difflab.data.images import load_mnist

        self.torch, self.setup, self.opts = torch, SETUPS[name], opts
        torch.set_num_threads(opts["threads"])
        self.data = load_mnist().x
        self.diffusion = dl.GaussianDiffusion("linear", TIMESTEPS, prediction="eps", variance="fixed_small")
        self.build(opts["seed"])

    def build(self, seed: int) -> None:
        torch = self.torch
        ours, theirs = model_kwargs(self.opts["channels"])
        torch.manual_seed(seed)
        if self.setup.net == "difflab":
            from difflab.nets import UNet

            self.model = UNet(**ours)
            self.fn = self.model
        else:
            from diffusers import UNet2DModel

            self.model = unet = UNet2DModel(**theirs)
            self.fn = lambda x, t: unet(x, t).sample
        if self.setup.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=self.opts["lr"], weight_decay=0.0)
        self.gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # dropout draws from the global generator

    def _layout(self, *xs):
        if not self.setup.channels_last:
            return xs
        return tuple(x.contiguous(memory_format=self.torch.channels_last) for x in xs)

    def _autocast(self):
        if self.setup.precision == "bf16":
            return self.torch.autocast("cpu", dtype=self.torch.bfloat16)
        return nullcontext()

    def step(self) -> float:
        torch, data = self.torch, self.data
        idx = torch.randint(0, data.shape[0], (BATCH,), generator=self.gen)
        t = torch.randint(0, TIMESTEPS, (BATCH,), generator=self.gen)
        noise = torch.randn((BATCH, *data.shape[1:]), generator=self.gen)
        x0, noise = self._layout(data[idx], noise)
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.diffusion.loss(self.fn, x0, t=t, noise=noise).float().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, GRAD_CLIP)
        self.opt.step()
        return loss.item()

    def timed(self, n: int) -> float:
        clock = time.process_time if self.opts["clock"] == "cpu" else time.perf_counter
        t0 = clock()
        for _ in range(n):
            self.step()
        return clock() - t0

    def eval_loss(self, n: int) -> float:
        torch, data = self.torch, self.data
        g = torch.Generator().manual_seed(self.opts["seed"] + 1)
        idx = torch.randint(0, data.shape[0], (n,), generator=g)
        t = torch.randint(0, TIMESTEPS, (n,), generator=g)
        noise = torch.randn((n, *data.shape[1:]), generator=g)
        self.model.eval()
        total = 0.0
        with torch.no_grad():
            for i in range(0, n, EVAL_BATCH):
                part = slice(i, i + EVAL_BATCH)
                x0, eps = self._layout(data[idx[part]], noise[part])
                total += self.diffusion.loss(self.fn, x0, t=t[part], noise=eps).double().sum().item()
        self.model.train()
        return total / n

    def loss_run(self, steps: int) -> dict:
        self.build(self.opts["seed"])
        t0 = time.perf_counter()
        losses = [self.step() for _ in range(steps)]
        seconds = time.perf_counter() - t0
        tail = losses[-min(LAST, steps) :]
        return {
            "first_loss": losses[0],
            "train_loss_last": sum(tail) / len(tail),
            "eval_loss": self.eval_loss(self.opts["eval_n"]),
            "s_per_step": seconds / steps,
        }


def _worker(conn, name: str, opts: dict) -> None:
    try:
        rss_start = _peak_rss_mib()
        runner = Runner(name, opts)
        params = sum(p.numel() for p in runner.model.parameters())
        conn.send(("ok", {"params": params, "rss_start_mib": rss_start, "rss_built_mib": _peak_rss_mib()}))
        while True:
            cmd, arg = conn.recv()
            if cmd == "time":
                conn.send(("ok", runner.timed(arg)))
            elif cmd == "loss":
                conn.send(("ok", runner.loss_run(arg)))
            elif cmd == "rss":
                conn.send(("ok", _peak_rss_mib()))
            elif cmd == "stop":
                conn.send(("ok", None))
                return
            else:
                conn.send(("error", f"unknown command {cmd!r}"))
    except BaseException:  # hand every failure to the parent, which stops the run
        conn.send(("error", traceback.format_exc()))


# ----------------------------------------------------------------------------- parent side


class Worker:
    def __init__(self, ctx, name: str, opts: dict):
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, name, opts), daemon=True)
        self.proc.start()
        child.close()

    def call(self, cmd: str | None, arg=None):
        """Send a command (None: only wait for the start-up report) and return the worker's answer."""
        if cmd is not None:
            self.conn.send((cmd, arg))
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"worker {self.name!r} died (exit code {self.proc.exitcode})") from None
        if status != "ok":
            raise RuntimeError(f"worker {self.name!r} failed:\n{value}")
        return value

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.call("stop")
            except (RuntimeError, OSError):
                pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpus_available": _cpus(),
        "python": platform.python_version(),
        "torch": metadata.version("torch"),
        "diffusers": metadata.version("diffusers"),
        "loadavg_start": os.getloadavg()[0],
    }


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _names(text: str, option: str, p: argparse.ArgumentParser) -> list[str]:
    names = list(dict.fromkeys(c.strip() for c in text.split(",") if c.strip()))
    bad = [c for c in names if c not in SETUPS]
    if bad or not names:
        p.error(f"{option}: unknown {bad or 'empty list'}; choose from {', '.join(SETUPS)}")
    return names


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--steps", type=int, default=None, help="timed training steps per round (default 10)")
    p.add_argument("--repeats", type=int, default=None, help="rounds over all configurations (default 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per configuration (default 3)")
    p.add_argument(
        "--loss-steps", type=int, default=None, help="steps of the loss check; 0 skips it (default 300)"
    )
    p.add_argument("--threads", type=int, default=0, help="intra-op threads per worker (default: all CPUs)")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time (default); cpu: the worker's CPU time, which a busy machine disturbs\n"
        "far less, meaningful with --threads 1 only (it adds up threads, spin-waits included)",
    )
    p.add_argument("--configs", default=",".join(SETUPS), help=f"timed, comma-separated: {', '.join(SETUPS)}")
    p.add_argument(
        "--loss-configs",
        default=",".join(LOSS_DEFAULT),
        help=f"configurations of the loss check, among --configs (default {','.join(LOSS_DEFAULT)})",
    )
    p.add_argument(
        "--channels", type=int, default=32, help="base width of both U-Nets (default 32, the preset)"
    )
    p.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate, constant (default 2e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: --steps 2 --repeats 2 --warmup 1 --loss-steps 10 (unless given), eval on 128",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    defaults = (
        dict(steps=2, repeats=2, warmup=1, loss_steps=10)
        if args.quick
        else dict(steps=10, repeats=5, warmup=3, loss_steps=300)
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key, low in (
        ("steps", 1),
        ("repeats", 1),
        ("warmup", 0),
        ("loss_steps", 0),
        ("threads", 0),
        ("channels", 1),
    ):
        if getattr(args, key) < low:
            p.error(f"--{key.replace('_', '-')} must be >= {low}, got {getattr(args, key)}")
    if args.channels % 32:
        p.error(f"--channels must be a multiple of 32 (GroupNorm with 32 groups), got {args.channels}")
    args.configs = _names(args.configs, "--configs", p)
    args.loss_configs = _names(args.loss_configs, "--loss-configs", p) if args.loss_steps else []
    missing = [c for c in args.loss_configs if c not in args.configs]
    if missing:
        p.error(f"--loss-configs {missing} must also be in --configs")
    args.threads = args.threads or _cpus()
    args.eval_n = 128 if args.quick else 1024
    return args


def _ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def main(argv=None) -> int:
    args = parse_args(argv)
    if importlib.util.find_spec("diffusers") is None:
        print(
            f"bench/throughput.py compares against diffusers, which this Python ({sys.executable}) lacks.\n"
            "Run it with the benchmark venv: .bench-venv/bin/python bench/throughput.py (bench/README.md "
            "says how to make one). diffusers never goes into difflab's own venv.",
            file=sys.stderr,
        )
        return 2
    info = machine()
    opts = {
        "clock": args.clock,
        "threads": args.threads,
        "seed": args.seed,
        "lr": args.lr,
        "channels": args.channels,
        "eval_n": args.eval_n,
    }
    print(f"command : {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"machine : {info['cpu']}, {info['cpus_available']} CPUs available, load average "
        f"{info['loadavg_start']:.2f} at start; {info['date_utc']}"
    )
    print(f"software: python {info['python']}, torch {info['torch']}, diffusers {info['diffusers']}")
    print(
        f"run     : batch {BATCH} of 1x28x28 MNIST, {args.threads} threads per worker, warm-up "
        f"{args.warmup}, {args.repeats} rounds x {args.steps} steps, AdamW lr {args.lr:g}, clip {GRAD_CLIP}, "
        f"seed {args.seed}, {args.clock} clock",
        flush=True,
    )
    if args.clock == "cpu" and args.threads > 1:
        print("warning: --clock cpu adds up the CPU time of all threads; use it with --threads 1", flush=True)

    ctx = mp.get_context("spawn")
    workers: dict[str, Worker] = {}
    results = {name: {"config": name, **asdict(SETUPS[name])} for name in args.configs}
    try:
        for name in args.configs:
            workers[name] = Worker(ctx, name, opts)
        for name, w in workers.items():
            results[name].update(w.call(None))
        counts = {SETUPS[n].net: results[n]["params"] for n in args.configs}
        print("\nparameters: " + ", ".join(f"{net} {c:,}" for net, c in counts.items()), end="")
        if len(counts) == 2:
            gap = abs(counts["difflab"] - counts["diffusers"]) / counts["diffusers"]
            print(f" (they differ by {100 * gap:.2f}%)")
            if gap > PARAM_TOLERANCE:
                raise SystemExit(
                    f"parameter counts differ by {100 * gap:.1f}% > {100 * PARAM_TOLERANCE:.0f}%"
                )
        else:
            print()

        for w in workers.values():
            if args.warmup:
                w.call("time", args.warmup)
        rounds: dict[str, list[float]] = {name: [] for name in args.configs}
        order = list(args.configs)
        print("\nround " + "".join(f"{n:>17}" for n in args.configs) + "   (steps/s)")
        for r in range(args.repeats):
            k = r % len(order)
            for name in order[k:] + order[:k]:
                rounds[name].append(args.steps / workers[name].call("time", args.steps))
            print(f"{r + 1:>5} " + "".join(f"{rounds[n][-1]:>17.3f}" for n in args.configs), flush=True)
        for name, w in workers.items():
            results[name].update(
                peak_rss_mib=w.call("rss"),
                steps_per_s=rounds[name],
                median_steps_per_s=statistics.median(rounds[name]),
            )

        base = rounds.get(BASELINE)
        print(
            f"\n{'config':<16} {'precision':<9} {'layout':<13} {'params':>10} "
            f"{'steps/s median (min-max)':>25} {'s/step':>7} {'vs ' + BASELINE:>13} "
            f"{'peak RSS MiB':>12} {'(model built)':>13}"
        )
        for name in args.configs:
            s, res = SETUPS[name], results[name]
            sps = rounds[name]
            ratio = ""
            if base is not None:
                res["ratio_vs_baseline"] = _ratio(sps, base)
                ratio = f"{res['ratio_vs_baseline']:.2f}x"
            spread = f"{statistics.median(sps):.3f} ({min(sps):.3f}-{max(sps):.3f})"
            print(
                f"{name:<16} {s.precision:<9} {s.layout:<13} {res['params']:>10,} {spread:>25} "
                f"{1 / res['median_steps_per_s']:>7.3f} {ratio:>13} {res['peak_rss_mib']:>12.0f} "
                f"{res['rss_built_mib']:>13.0f}"
            )
        print(
            f"(ratio: median over rounds of steps/s over {BASELINE}' in the same round; peak RSS: "
            "ru_maxrss of the configuration's own process, and its value once the model was built)"
        )

        if args.loss_configs:
            print(
                f"\nloss check: {args.loss_steps} steps from seed {args.seed} (same batches, t, eps, dropout "
                f"seed); eval = L_simple on {args.eval_n} fixed training triples, fp32, eval mode"
            )
            last = f"train, last {min(LAST, args.loss_steps)}"
            print(
                f"{'config':<16} {'first loss':>10} {last:>15} {'eval':>8} {'eval vs ' + BASELINE:>17} "
                f"{'s/step':>7}"
            )
            for name in args.loss_configs:
                results[name]["loss"] = workers[name].call("loss", args.loss_steps)
            ref = results[BASELINE].get("loss") if BASELINE in results else None
            for name in args.loss_configs:
                lo = results[name]["loss"]
                rel = f"{100 * (lo['eval_loss'] / ref['eval_loss'] - 1):+.1f}%" if ref else ""
                print(
                    f"{name:<16} {lo['first_loss']:>10.4f} {lo['train_loss_last']:>15.4f} "
                    f"{lo['eval_loss']:>8.4f} {rel:>17} {lo['s_per_step']:>7.3f}",
                    flush=True,
                )
    finally:
        for w in workers.values():
            w.close()

    info["loadavg_end"] = os.getloadavg()[0]
    print()
    if OURS in rounds and BASELINE in rounds:
        ratio = _ratio(rounds[OURS], rounds[BASELINE])
        print(
            f"speed: {OURS} / {BASELINE} (defaults) = {ratio:.2f}x, target >= {TARGET_SPEEDUP}x: "
            f"{'PASS' if ratio >= TARGET_SPEEDUP else 'FAIL'}"
        )
        peers = [n for n in args.configs if SETUPS[n].net == "diffusers"]
        best = max(peers, key=lambda n: results[n]["median_steps_per_s"])
        if best != BASELINE:  # peers holds BASELINE at least
            best_ratio = _ratio(rounds[OURS], rounds[best])
            print(f"speed: {OURS} / {best} (diffusers' fastest here) = {best_ratio:.2f}x")
    for other in (BASELINE, "difflab-fp32"):
        if OURS in args.loss_configs and other in args.loss_configs:
            a, b = results[OURS]["loss"]["eval_loss"], results[other]["loss"]["eval_loss"]
            gap = a / b - 1
            verdict = (
                "PASS"
                if abs(gap) <= LOSS_TOLERANCE
                else f"FAIL ({OURS}'s is {'higher' if gap > 0 else 'lower'})"
            )
            print(
                f"loss : {OURS} / {other} eval loss after {args.loss_steps} steps = {a:.4f} / {b:.4f} "
                f"({100 * gap:+.1f}%), target within +-{100 * LOSS_TOLERANCE:.0f}%: {verdict}"
            )
    print(
        f"load average {info['loadavg_start']:.2f} at start (before the workers), {info['loadavg_end']:.2f} "
        "at the end (this run included)"
    )
    if args.json:
        payload = {
            "machine": info,
            "args": {k: v for k, v in vars(args).items() if k != "json"},
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
