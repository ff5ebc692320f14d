"""Fréchet distance against network evaluations (NFE) for every sampler, on a trained image model.

    .venv/bin/python bench/samplers_trained.py --run runs/digits [--n 500] [--budgets 10,20,50,100]
    .venv/bin/python bench/samplers_trained.py --run runs/demo --recommended --budgets 5,8,10,14,20

(``--recommended``: the ``difflab sample --nfe N`` configuration of each budget, next to UniPC on its
default and on ``quadratic`` steps and DPM-Solver++(2M), instead of every sampler.)

Each sampler runs on its default spacing with ``steps`` chosen to spend the NFE budget (the same
rule as ``bench/samplers.py``), from the same seeds, with ``x0`` clipped to [-1, 1]. The reference is
1000-step ancestral sampling. The Fréchet distance is taken in the features of the cached digit
classifier (``difflab eval fd``) against the run's test images; ``conf`` is the share of samples the
classifier assigns to a digit with probability > 0.9.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch

from difflab import runs as jobs
from difflab.metrics.classifier_features import classifier_scores, load_or_train_classifier
from difflab.runs.build import build_splits
from difflab.runs.common import sampling_model
from difflab.samplers.budget import levels_for_nfe, recommend

SAMPLERS = ("ancestral", "ddim", "euler", "heun", "dpm++2m", "dpm++3m", "dpm++2m-sde", "pc")
# the samplers of issue 14: their levels for a budget come from difflab.samplers.budget
BUDGETED = ("unipc", "deis", "ipndm", "dpm++2s", "dpm++3s", "restart")


def _steps_for():
    spec = importlib.util.spec_from_file_location("oracle_bench", Path(__file__).with_name("samplers.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.steps_for


def trained_setup(run: str, n: int):
    """``(diffusion, sampling net, splits, classifier, its info, sample shape, x_T)`` of a trained
    image run: what every FD-against-NFE measurement here starts from (``x_T`` seeded with 0)."""
    cfg, diffusion, model, splits = jobs.load_run(run)
    splits = build_splits(cfg)
    k = int(splits.train_y.max()) + 1
    clf, info = load_or_train_classifier(
        cfg.data.name, (splits.train, splits.train_y), (splits.test, splits.test_y), num_classes=k
    )
    shape = (n, *splits.shape)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    return diffusion, sampling_model(cfg, model, n), splits, clf, info, shape, x_T


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run", default="runs/digits")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--budgets", default="10,20,50,100")
    p.add_argument("--out", default=None, help="write the table as JSON here")
    p.add_argument("--recommended", action="store_true", help="only the --nfe configurations (see above)")
    args = p.parse_args()
    steps_for = _steps_for()
    diffusion, net, splits, clf, info, shape, x_T = trained_setup(args.run, args.n)

    def run(name: str, steps: int | None, **opts) -> dict:
        t0 = time.perf_counter()
        x, nfe = diffusion.sample(net, shape, sampler=name, steps=steps, x_T=x_T, clip=(-1.0, 1.0),
                                  generator=torch.Generator().manual_seed(1), return_nfe=True, **opts)
        s = classifier_scores(clf, x, splits.test)
        return {"sampler": name, "nfe": nfe, "fd": s["fd"], "conf": s["confident_fraction"],
                "seconds": round(time.perf_counter() - t0, 1)}

    if args.recommended:
        for b in (int(b) for b in args.budgets.split(",")):
            name, steps, spacing = recommend(b)
            for label, (n, st, sp) in {f"--nfe {b}: {name} {spacing}": (name, steps, spacing),
                                       "unipc default": ("unipc", b, None),
                                       "unipc quadratic": ("unipc", b, "quadratic"),
                                       "dpm++2m": ("dpm++2m", b, None)}.items():
                r = run(n, st, spacing=sp)
                print(f"NFE {r['nfe']:>3} {label:<32} FD {r['fd']:.3f} conf {r['conf']:.3f}", flush=True)
        return
    ref = run("ancestral", None)
    floor = classifier_scores(clf, splits.train[: len(splits.test)], splits.test)["fd"]
    print(f"run {args.run}: {args.n} samples; classifier test accuracy {info['test_accuracy']:.3f}")
    print(f"reference: ancestral, {ref['nfe']} NFE: FD {ref['fd']:.3f} (train vs test images {floor:.3f})")
    budgets = [int(b) for b in args.budgets.split(",")]
    rows = []
    print(f"{'sampler':<12}" + "".join(f"{'NFE ' + str(b):>16}" for b in budgets))
    for name in SAMPLERS + BUDGETED:
        cells = []
        for b in budgets:
            plan = (levels_for_nfe(name, b), {}) if name in BUDGETED else steps_for(name, b)
            if plan is None:
                cells.append(f"{'-':>16}")
                continue
            r = run(name, plan[0], **plan[1])
            rows.append(r)
            cells.append(f"{r['fd']:>9.3f} ({r['fd'] / ref['fd']:.2f}x)")
        print(f"{name:<12}" + "".join(cells), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"reference": ref, "floor": floor, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
