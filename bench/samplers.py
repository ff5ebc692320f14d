"""Error against network evaluations (NFE) for every sampler, on two exact oracles.

    OMP_NUM_THREADS=1 .venv/bin/python bench/samplers.py [--out docs/samplers_convergence.png]

Diffusion: ``GaussianDiffusion("linear", 1000)``; each sampler on its default spacing
(``difflab.samplers.DEFAULT_SPACING``), its ``steps`` chosen to spend the NFE budget.

* Gaussian data N(0.5, 0.3^2), 1-D. ``std err`` = |std(samples)/0.3 - 1|. Deterministic samplers map
  one ``x_T`` with exactly zero mean and unit std (the map is affine, so this is the map's own error,
  free of sampling noise); stochastic ones draw 20,000 samples (sampling noise ~0.5%). ``map err`` =
  RMS per-sample distance to the exact probability-flow map of the same ``x_T`` followed by the shared
  last (denoising) step, i.e. the pure discretisation error.
* A 2-D mixture of three Gaussians (std 0.1). ``SW2 data`` = sliced Wasserstein-2 to 4,000 data points
  (its floor, the distance between two data sets, is printed); ``SW2 exact`` = sliced W2 to the exact
  ODE image (RK45, rtol 1e-7) of the same ``x_T``, for deterministic samplers.

The fitted order is ``-slope`` of a least-squares line through log(error) against log(NFE) over the
points with NFE >= 20 that lie above the noise floor (see ``_fit_order``).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

import difflab as dl
from difflab.metrics import sliced_wasserstein
from difflab.oracles import GaussianMixtureOracle, GaussianOracle

MU, S = 0.5, 0.3
BUDGETS = (5, 10, 20, 50, 100, 200, 500, 1000)
ODE_TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
DETERMINISTIC = ("ddim", "euler", "heun", "dpm++2m", "dpm++3m")
STOCHASTIC = ("ancestral", "dpm++2m-sde", "pc", "langevin")
LANGEVIN = {"n_steps_each": 10, "epsilon": 1e-4}  # NCSN's rule; epsilon raised from 2e-5 to mix in time


def steps_for(name: str, budget: int) -> tuple[int, dict] | None:
    """``(steps, options)`` spending at most ``budget`` evaluations, or None if impossible."""
    if name == "heun":
        return (budget + 1) // 2, {}
    if name == "pc":
        return (budget // 2, {"corrector_steps": 1}) if budget >= 2 else None
    if name == "langevin":
        n = (budget - 1) // LANGEVIN["n_steps_each"]
        return (n, dict(LANGEVIN)) if n >= 1 else None
    return budget, {}


def _sigma_ve(diffusion, t: float) -> float:
    a, s = diffusion.schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64))
    return float(s / a)


def exact_gaussian_map(diffusion, x_T):
    """Closed-form probability-flow map of N(MU, S^2) data from level T-1 to level 0 (in ``x~ = x/alpha``,
    ``(x~ - MU)/sqrt(S^2 + sigma~^2)`` is constant), then ``x0_hat`` at level 0 (the shared last step)."""
    s_T, s_0 = _sigma_ve(diffusion, diffusion.timesteps - 1.0), _sigma_ve(diffusion, 0.0)
    a_T = float(diffusion.schedule.alpha_sigma(torch.tensor(diffusion.timesteps - 1.0))[0])
    x_0 = MU + (x_T / a_T - MU) * math.sqrt(S**2 + s_0**2) / math.sqrt(S**2 + s_T**2)
    return MU + S**2 * (x_0 - MU) / (S**2 + s_0**2)


def _sw(x, y) -> float:
    return sliced_wasserstein(x, y, 200, generator=torch.Generator().manual_seed(0))


def _fit_order(nfe, err, floor: float = 0.0) -> float:
    pts = [(math.log(n), math.log(e)) for n, e in zip(nfe, err) if n >= 20 and e > 3 * floor and e > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    slope = sum((p[0] - mx) * (p[1] - my) for p in pts) / sum((p[0] - mx) ** 2 for p in pts)
    return -slope


def run(n_gauss_det: int, n_gauss_sto: int, n_mix: int) -> dict:
    diffusion = dl.GaussianDiffusion("linear", 1000)
    gauss = GaussianOracle(diffusion, MU, S)
    means = torch.tensor([[1.0, 1.0], [-1.0, 0.5], [0.0, -1.0]])
    mix = GaussianMixtureOracle(diffusion, means, stds=0.1, weights=torch.tensor([0.5, 0.3, 0.2]))
    z = torch.randn(n_gauss_det, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = (z - z.mean()) / z.std()
    z_ref = exact_gaussian_map(diffusion, z)
    g = torch.Generator().manual_seed(1)
    data, other = mix.sample(n_mix, generator=g), mix.sample(n_mix, generator=g)
    xm_T = torch.randn(n_mix, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    xm_ref = diffusion.sample(mix, xm_T.shape, sampler="ode", x_T=xm_T, rtol=1e-7, atol=1e-7)
    out = {"floor": _sw(data, other), "std_noise": 1 / math.sqrt(2 * n_gauss_sto), "rows": {},
           "denoise_floor": abs(float(z_ref.std()) / S - 1)}

    def one(name: str, steps: int, opts: dict) -> dict:
        det = name in DETERMINISTIC or name == "ode"
        seed = torch.Generator().manual_seed(3)
        if det:
            x, nfe = diffusion.sample(gauss, z.shape, sampler=name, steps=steps, x_T=z, return_nfe=True,
                                      **opts)
            rec = {"nfe": nfe, "std": abs(float(x.std()) / S - 1),
                   "map": float((x - z_ref).pow(2).mean().sqrt())}
            xm = diffusion.sample(mix, xm_T.shape, sampler=name, steps=steps, x_T=xm_T, **opts)
            rec["sw_exact"] = _sw(xm, xm_ref)
            rec["median"] = float((xm - xm_ref).norm(dim=1).median())
        else:
            x, nfe = diffusion.sample(gauss, (n_gauss_sto, 1), sampler=name, steps=steps, generator=seed,
                                      dtype=torch.float64, return_nfe=True, **opts)
            rec = {"nfe": nfe, "std": abs(float(x.std()) / S - 1)}
            xm = diffusion.sample(mix, xm_T.shape, sampler=name, steps=steps, generator=seed,
                                  dtype=torch.float64, **opts)
        rec["sw_data"] = _sw(xm, data)
        return rec

    for name in DETERMINISTIC + STOCHASTIC:
        t0, recs = time.perf_counter(), []
        for budget in BUDGETS:
            plan = steps_for(name, budget)
            if plan is not None:
                recs.append(one(name, *plan))
        out["rows"][name] = recs
        print(f"  {name:12s} {time.perf_counter() - t0:6.1f} s", flush=True)
    t0 = time.perf_counter()
    out["rows"]["ode"] = [one("ode", 2, {"rtol": tol, "atol": tol}) | {"tol": tol} for tol in ODE_TOLERANCES]
    print(f"  {'ode':12s} {time.perf_counter() - t0:6.1f} s", flush=True)
    return out


def _cell(recs, budget, key):
    for r in recs:
        if r["nfe"] <= budget and (budget == BUDGETS[0] or r["nfe"] > BUDGETS[BUDGETS.index(budget) - 1]):
            return f"{r[key]:.2e}"
    return "-"


def tables(out: dict) -> str:
    rows = out["rows"]
    lines = []
    noise = out["std_noise"]
    specs = [
        (f"Gaussian N(0.5, 0.3^2): |std/0.3 - 1| (order: stochastic samplers, points above 3 x the "
         f"{noise:.1e} sampling noise; deterministic ones: next table)", "std",
         DETERMINISTIC + STOCHASTIC, noise),
        ("Gaussian: RMS error against the exact ODE map (same x_T)", "map", DETERMINISTIC, 0.0),
        (f"2-D mixture: sliced W2 to data (floor: two data sets, {out['floor']:.3f})", "sw_data",
         DETERMINISTIC + STOCHASTIC, None),
        ("2-D mixture: sliced W2 to the exact ODE image (same x_T)", "sw_exact", DETERMINISTIC, 0.0),
        ("2-D mixture: median per-sample distance to the exact ODE image", "median", DETERMINISTIC, 0.0),
    ]
    for title, key, names, floor in specs:
        lines += [f"**{title}**", "", "| sampler | " + " | ".join(f"NFE {b}" for b in BUDGETS) + " | order |",
                  "|---" * (len(BUDGETS) + 2) + "|"]
        for name in names:
            recs = rows[name]
            fit = floor is not None and not (key == "std" and name in DETERMINISTIC)
            order = _fit_order([r["nfe"] for r in recs], [r[key] for r in recs], floor) if fit else math.nan
            cells = " | ".join(_cell(recs, b, key) for b in BUDGETS)
            lines.append(f"| {name} | {cells} | {'-' if math.isnan(order) else f'{order:.2f}'} |")
        lines.append("")
    ode = rows["ode"]
    lines += ["**ode (adaptive RK45): tolerance -> NFE**", "",
              "| rtol = atol | NFE | std err | map err | SW2 data | SW2 exact |", "|---|---|---|---|---|---|"]
    for r in ode:
        lines.append(f"| {r['tol']:.0e} | {r['nfe']} | {r['std']:.2e} | {r['map']:.2e} | {r['sw_data']:.3f} "
                     f"| {r['sw_exact']:.2e} |")
    order = _fit_order([r["nfe"] for r in ode], [r["map"] for r in ode])
    lines += ["", f"ode: slope of log(map err) against log(NFE): {order:.2f} (tolerance-controlled RK45)", ""]
    return "\n".join(lines)


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))  # (the median distance is in the tables only)
    colors = dict(zip(out["rows"], plt.get_cmap("tab10").colors))
    axes[0, 0].axhline(out["denoise_floor"], color="black", lw=0.8, ls="-.", label="exact ODE + last denoise")
    panels = [
        (axes[0, 0], "std", "Gaussian: |std/0.3 - 1|", out["std_noise"], "sampling noise (stochastic)"),
        (axes[0, 1], "map", "Gaussian: RMS error vs exact ODE map", None, None),
        (axes[1, 0], "sw_data", "mixture: sliced W2 to data", out["floor"], "data-vs-data floor"),
        (axes[1, 1], "sw_exact", "mixture: sliced W2 to exact ODE image", None, None),
    ]
    for ax, key, title, floor, floor_label in panels:
        for name, recs in out["rows"].items():
            pts = [(r["nfe"], r[key]) for r in recs if key in r and r[key] > 0]
            if pts:
                style = "--" if name in STOCHASTIC else "-"
                ax.loglog(*zip(*pts), style, marker="o", ms=3, label=name, color=colors[name])
        if floor:
            ax.axhline(floor, color="grey", lw=0.8, ls=":", label=floor_label)
        ax.set(title=title, xlabel="NFE", ylabel="error")
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=8, ncol=2)
    fig.suptitle("difflab samplers, linear schedule T=1000 (bench/samplers.py)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/samplers_convergence.png", help="plot path (PNG)")
    p.add_argument("--n-det", type=int, default=1000, help="Gaussian x_T size for deterministic samplers")
    p.add_argument("--n-sto", type=int, default=20_000, help="Gaussian samples for stochastic samplers")
    p.add_argument("--n-mix", type=int, default=4000, help="mixture samples")
    args = p.parse_args()
    t0 = time.perf_counter()
    out = run(args.n_det, args.n_sto, args.n_mix)
    print()
    print(tables(out))
    plot(out, Path(args.out))
    seconds = time.perf_counter() - t0
    print(f"plot: {args.out}; total {seconds:.0f} s (torch threads: {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
