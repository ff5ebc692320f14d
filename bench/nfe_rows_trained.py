"""The ``--nfe`` rows and their alternatives on trained image models: Fréchet distance against NFE.

    .venv/bin/python bench/nfe_rows_trained.py RUN [RUN ...] [--n 500]

For each budget row of :data:`difflab.samplers.budget.RECOMMENDED` (5-7, 8-13, 14+), the row's
sampler and spacing next to the candidates it was chosen against, each at the budgets of its row,
from the same ``x_T`` and with ``x0`` clipped to [-1, 1]. The FD is taken in the features of the
cached digit classifier (``difflab eval fd``) against the run's test images (``docs/samplers.md``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from difflab.metrics.classifier_features import classifier_scores
from difflab.samplers.budget import levels_for_nfe

sys.path.insert(0, str(Path(__file__).parent))
from samplers_trained import trained_setup  # noqa: E402  (the same run loading and classifier)

# budgets of a row -> the (sampler, spacing) candidates compared there
ROWS = {
    (5, 6): [("ipndm", "logsnr-jump"), ("ipndm", "logsnr")],
    (8, 10, 12): [("deis", "edm-jump"), ("deis", "edm"), ("unipc", "logsnr"), ("unipc", "quadratic"),
                  ("ipndm", "logsnr")],
    (15, 20): [("unipc", "logsnr-jump"), ("unipc", "logsnr"), ("unipc", "quadratic"), ("deis", "edm")],
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+")
    p.add_argument("--n", type=int, default=500)
    args = p.parse_args()
    for run in args.runs:
        diffusion, net, splits, clf, _, shape, x_T = trained_setup(run, args.n)
        print(run)
        for budgets, candidates in ROWS.items():
            for sampler, spacing in candidates:
                cells = []
                for nfe in budgets:
                    x = diffusion.sample(net, shape, sampler=sampler, steps=levels_for_nfe(sampler, nfe),
                                         spacing=spacing, x_T=x_T, clip=(-1.0, 1.0),
                                         generator=torch.Generator().manual_seed(1))
                    cells.append(f"{nfe}: {classifier_scores(clf, x, splits.test)['fd']:.2f}")
                print(f"  {sampler:<8} {spacing:<12} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
