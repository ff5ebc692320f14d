"""difflab's training-free samplers side by side with diffusers' and k-diffusion's, on exact oracles.

    OMP_NUM_THREADS=1 .bench-venv/bin/python bench/samplers_peers.py [--quick] [--json PATH]

(``.bench-venv``: see ``bench/README.md``; k-diffusion is installed there with ``--no-deps`` and only
its ``sampling`` and ``external`` modules are loaded, so torchvision is never needed.)

Every library integrates the same probability-flow ODE: DDPM's linear schedule (T = 1000, eps
model), from ``x_T ~ N(0, I)`` at model time 999 to the data, each through its public API (difflab:
``diffusion.sample``; diffusers: a scheduler's ``set_timesteps`` / ``scale_model_input`` / ``step``
loop; k-diffusion: its ``sample_*`` functions on ``DiscreteEpsDDPMDenoiser`` with ``quantize=False``).
The model is the exact denoiser of :mod:`difflab.oracles`, called at whatever (fractional) model time
the library asks for; every call counts as one evaluation (NFE).

Oracles: an anisotropic Gaussian in 64-D (per-coordinate std from 0.05 to 1, means from -1 to 1) and a
2-D mixture of three Gaussians (std 0.1, weights 0.5/0.3/0.2). The reference for every sample is the
exact ODE endpoint from the same ``x_T``: the flow from ``sigma~_max`` to ``sigma~_min`` (model time 0;
closed form for the Gaussian, Dormand-Prince at rtol = atol = 1e-10 for the mixture) followed by
``x0_hat`` there, which is what every sampler's last step computes; k-diffusion's ``dpm_fast`` and
``dpm_adaptive`` stop at ``sigma~_min`` and are compared with the flow there. The error is the root mean
square over samples and coordinates. Configurations that do not start at model time 999 (diffusers'
``leading``/``trailing`` spacings) integrate a different ODE and are left out.

For each library and NFE budget the table keeps the best configuration whose NFE is within the
budget; ``ratio`` is the best peer's error over difflab's best (> 1: difflab ahead).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import itertools
import json
import math
import sys
import time
import types
import warnings

import torch

import difflab as dl
from difflab.oracles import GaussianMixtureOracle, GaussianOracle
from difflab.samplers.budget import recommend

BUDGETS = (5, 6, 8, 10, 12, 15, 20, 50)
SPACINGS = ("uniform", "quadratic", "logsnr", "edm", "edm-jump", "logsnr-jump")
#: rtol = atol of the adaptive solvers: eight a decade from 0.32 to 5.6e-5 for difflab, every other one
#: (four a decade) for k-diffusion, whose solver is the slower to run
TOLERANCES = tuple(10 ** (-k / 8) for k in range(4, 35))


# ---------------------------------------------------------------------------------- problems
class Counting:
    """The oracle as an eps model ``(x_t, t)`` for any library: ``t`` a scalar or ``[B]``; counts calls."""

    def __init__(self, oracle):
        self.oracle, self.calls = oracle, 0

    def __call__(self, x, t, *args, **kwargs):
        self.calls += 1
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        return self.oracle(x.to(torch.float64), t).to(x.dtype)


def gaussian_problem(diffusion, n: int, dim: int = 64):
    s = torch.logspace(math.log10(0.05), 0.0, dim, dtype=torch.float64)
    mu = torch.linspace(-1.0, 1.0, dim, dtype=torch.float64)
    oracle = GaussianOracle(diffusion, mu, s)
    z = torch.randn(n, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (a_T, s_T), (a_0, s_0) = (diffusion.schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64))
                              for t in (999.0, 0.0))
    sig_T, sig_0 = float(s_T / a_T), float(s_0 / a_0)
    flow = mu + (z / float(a_T) - mu) * torch.sqrt(s**2 + sig_0**2) / torch.sqrt(s**2 + sig_T**2)
    end = mu + s**2 * (flow - mu) / (s**2 + sig_0**2)
    return {"name": "gaussian-64d", "oracle": oracle, "z": z, "ref": end, "ref_min": flow}


def mixture_problem(diffusion, n: int):
    from torchdiffeq import odeint

    means = torch.tensor([[1.0, 1.0], [-1.0, 0.5], [0.0, -1.0]], dtype=torch.float64)
    oracle = GaussianMixtureOracle(diffusion, means, stds=0.1, weights=torch.tensor([0.5, 0.3, 0.2]))
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sched = diffusion.schedule

    def x0_hat(x_ve, sigma):  # D(x~; sigma~) through the eps oracle at the model time of sigma~
        t = dl.samplers.time_of_sigma_ve(sched, torch.tensor(sigma, dtype=torch.float64))
        a, _ = sched.alpha_sigma(t)
        eps = oracle(float(a) * x_ve, t.reshape(1).expand(x_ve.shape[0]))
        return x_ve - sigma * eps

    lo, hi = (math.exp(-0.5 * float(sched.lambdas[i])) for i in (0, -1))
    u = torch.log(torch.tensor([hi, lo], dtype=torch.float64))
    a_T = float(sched.alpha_sigma(torch.tensor(999.0, dtype=torch.float64))[0])
    flow = odeint(lambda uu, y: y - x0_hat(y, min(max(math.exp(float(uu)), lo), hi)), z / a_T, u,
                  rtol=1e-10, atol=1e-10, method="dopri5")[-1]
    return {"name": "mixture-2d", "oracle": oracle, "z": z, "ref": x0_hat(flow, lo), "ref_min": flow}


def rms(x, ref) -> float:
    return float((x.to(torch.float64) - ref).pow(2).mean().sqrt())


# ---------------------------------------------------------------------------------- difflab
def difflab_configs():
    """``(label, sampler, spacing, options, nfe_of_levels)``: every deterministic sampler and option."""
    one, two, three = (lambda n: n), (lambda n: 2 * n - 1), (lambda n: 3 * n - 2)
    grid = {
        "unipc": ({"order": (2, 3), "variant": ("bh1", "bh2"), "prediction": ("data", "noise"),
                   "lower_order_final": (True, False)}, one),
        "deis": ({"order": (2, 3), "basis": ("t", "rho", "log_rho"),
                  "lower_order_final": (True, False)}, one),
        "ipndm": ({"order": (3, 4)}, one),
        "dpm++2m": ({"solver_type": ("midpoint", "heun")}, one),
        "dpm++3m": ({"lower_order_final": (True, False)}, one),
        "dpm++2s": ({"solver_type": ("midpoint", "heun")}, two),
        "dpm++3s": ({"solver_type": ("midpoint", "heun")}, three),
        "heun": ({}, two),
        "euler": ({}, one),
        "ddim": ({}, one),
    }
    for name, (options, cost) in grid.items():
        for values in itertools.product(*options.values()):
            opts = dict(zip(options, values))
            for spacing in SPACINGS:
                label = " ".join([name, spacing, *(f"{k}={v}" for k, v in opts.items())])
                yield label, name, spacing, opts, cost


def levels_for(cost, budget: int) -> int:
    n = 1
    while cost(n + 1) <= budget:
        n += 1
    return n


def run_difflab(diffusion, prob, name, spacing, opts, steps):
    model = Counting(prob["oracle"])
    x = diffusion.sample(model, prob["z"].shape, sampler=name, steps=steps, spacing=spacing, x_T=prob["z"],
                         **opts)
    return x, model.calls


# ---------------------------------------------------------------------------------- diffusers
def diffusers_configs():
    import diffusers

    sigmas = ({}, {"use_karras_sigmas": True}, {"use_exponential_sigmas": True}, {"use_beta_sigmas": True})
    grid = {
        "DPMSolverMultistepScheduler": {"solver_order": (2, 3), "solver_type": ("midpoint", "heun"),
                                        "lower_order_final": (True, False)},
        "DEISMultistepScheduler": {"solver_order": (2, 3), "lower_order_final": (True, False)},
        "UniPCMultistepScheduler": {"solver_order": (2, 3), "solver_type": ("bh1", "bh2"),
                                    "predict_x0": (True, False), "lower_order_final": (True, False)},
        "DPMSolverSinglestepScheduler": {"solver_order": (2, 3), "lower_order_final": (True, False)},
        "HeunDiscreteScheduler": {},
        "EulerDiscreteScheduler": {},
        "LMSDiscreteScheduler": {},
        "DDIMScheduler": {},
    }
    for cls_name, options in grid.items():
        cls = getattr(diffusers, cls_name)
        params = inspect.signature(cls.__init__).parameters
        for values in itertools.product(*options.values()):
            for extra in sigmas:
                if not all(k in params for k in extra):
                    continue
                opts = dict(zip(options, values)) | extra
                label = " ".join([cls_name.replace("Scheduler", ""), *(f"{k}={v}" for k, v in opts.items())])
                yield label, cls, opts


def make_scheduler(cls, opts, steps: int):
    """``cls`` on DDPM's linear schedule with ``steps`` set; ``linspace`` timesteps (from 999) where the
    scheduler has the option."""
    if "timestep_spacing" in inspect.signature(cls.__init__).parameters:
        opts = {"timestep_spacing": "linspace"} | opts
    sched = cls(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                prediction_type="epsilon", **opts)
    sched.set_timesteps(steps)
    return sched


def run_diffusers(prob, cls, opts, steps):
    sched = make_scheduler(cls, opts, steps)
    model = Counting(prob["oracle"])
    x = prob["z"].clone() * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = model(sched.scale_model_input(x, t), t)
        x = sched.step(eps, t, x).prev_sample
    return x, model.calls


def diffusers_nfe(cls, opts, steps: int) -> int:
    return len(make_scheduler(cls, opts, steps).timesteps)


# ---------------------------------------------------------------------------------- k-diffusion
def load_k_diffusion():
    """``k_diffusion.sampling`` and ``.external`` without the package's ``__init__`` (which imports
    torchvision, CLIP, ...): a bare package object and the one helper of ``utils`` they use."""
    spec = importlib.util.find_spec("k_diffusion")
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    pkg.utils = utils
    sys.modules.update({"k_diffusion": pkg, "k_diffusion.utils": utils})
    return importlib.import_module("k_diffusion.sampling"), importlib.import_module("k_diffusion.external")


def kdiff_configs(K):
    one, two = (lambda n: n), (lambda n: 2 * n - 1)
    silent = {"noise_sampler": lambda s, t: 0.0}
    samplers = {
        "euler": (K.sample_euler, {}, one),
        "heun": (K.sample_heun, {}, two),
        "dpm_2": (K.sample_dpm_2, {}, two),
        "lms": (K.sample_lms, {}, one),
        "dpmpp_2m": (K.sample_dpmpp_2m, {}, one),
        "dpmpp_2s(eta=0)": (K.sample_dpmpp_2s_ancestral, {"eta": 0.0, **silent}, two),
        "dpmpp_3m_sde(eta=0)": (K.sample_dpmpp_3m_sde, {"eta": 0.0, **silent}, one),
    }
    for name, (fn, opts, cost) in samplers.items():
        for sig in ("karras", "exponential", "polyexponential", "model"):
            yield f"{name} {sig}", fn, opts, sig, cost


def kdiff_sigmas(K, den, kind: str, n: int):
    lo, hi = float(den.sigma_min), float(den.sigma_max)
    if kind == "karras":
        return K.get_sigmas_karras(n, lo, hi, rho=7.0, device="cpu").double()
    if kind == "exponential":
        return K.get_sigmas_exponential(n, lo, hi, device="cpu").double()
    if kind == "polyexponential":
        return K.get_sigmas_polyexponential(n, lo, hi, rho=2.0, device="cpu").double()
    return den.get_sigmas(n).double()


def run_kdiff(K, KE, diffusion, prob, fn, opts, kind, n):
    model = Counting(prob["oracle"])
    den = KE.DiscreteEpsDDPMDenoiser(model, diffusion.schedule.alpha_bar.double(), quantize=False)
    sigmas = kdiff_sigmas(K, den, kind, n)
    x = prob["z"] * math.sqrt(1.0 + float(sigmas[0]) ** 2)
    out = fn(den, x, sigmas, disable=True, **opts)
    return out, model.calls


# ---------------------------------------------------------------------------------- the comparison
def best_per_budget(rows):
    """``{budget: (error, label, nfe)}`` of the most accurate row within each budget."""
    out = {}
    for b in BUDGETS:
        cands = [r for r in rows if r["nfe"] <= b and math.isfinite(r["err"])]
        if cands:
            r = min(cands, key=lambda r: r["err"])
            out[b] = (r["err"], r["label"], r["nfe"])
    return out


def sweep(problems, diffusion, quick: bool, fixed: bool = True, adaptive: bool = True):
    K, KE = load_k_diffusion()
    results = {}
    for prob in problems:
        rows = {"difflab": [], "diffusers": [], "k-diffusion": []}
        t0 = time.perf_counter()
        for label, name, spacing, opts, cost in difflab_configs() if fixed else ():
            if quick and spacing in ("uniform", "quadratic"):
                continue
            for b in BUDGETS:
                steps = levels_for(cost, b)
                x, nfe = run_difflab(diffusion, prob, name, spacing, opts, steps)
                rows["difflab"].append({"label": label, "nfe": nfe, "err": rms(x, prob["ref"])})
        recommended = []
        for b in BUDGETS if fixed else ():  # the one configuration per budget of ``--nfe``
            name, steps, spacing = recommend(b)
            x, nfe = run_difflab(diffusion, prob, name, spacing, {}, steps)
            recommended.append({"label": f"{name} {spacing}", "nfe": nfe, "err": rms(x, prob["ref"]),
                                "budget": b})
        t1 = time.perf_counter()
        for label, cls, opts in diffusers_configs() if fixed else ():
            for b in BUDGETS:
                steps = b
                while steps > 1 and diffusers_nfe(cls, opts, steps) > b:
                    steps -= 1
                try:
                    x, nfe = run_diffusers(prob, cls, opts, steps)
                except Exception as exc:  # a configuration the scheduler refuses
                    rows["diffusers"].append({"label": label, "nfe": b, "err": math.nan, "error": repr(exc)})
                    continue
                rows["diffusers"].append({"label": label, "nfe": nfe, "err": rms(x, prob["ref"])})
        t2 = time.perf_counter()
        for label, fn, opts, kind, cost in kdiff_configs(K) if fixed else ():
            for b in BUDGETS:
                x, nfe = run_kdiff(K, KE, diffusion, prob, fn, opts, kind, levels_for(cost, b))
                rows["k-diffusion"].append({"label": label, "nfe": nfe, "err": rms(x, prob["ref"])})
        for b in BUDGETS if fixed else ():  # DPM-Solver-fast spends exactly the budget, stops at sigma_min
            model = Counting(prob["oracle"])
            den = KE.DiscreteEpsDDPMDenoiser(model, diffusion.schedule.alpha_bar.double(), quantize=False)
            x = prob["z"] * math.sqrt(1.0 + float(den.sigma_max) ** 2)
            x = K.sample_dpm_fast(den, x, float(den.sigma_min), float(den.sigma_max), b, disable=True)
            rows["k-diffusion"].append({"label": "dpm_fast (to sigma_min)", "nfe": model.calls,
                                        "err": rms(x, prob["ref_min"])})
        t3 = time.perf_counter()
        solved = {"difflab": [], "k-diffusion": []}
        for i, tol in enumerate(TOLERANCES if adaptive else ()):
            for order in (2, 3):
                for pred in ("data", "noise"):
                    model = Counting(prob["oracle"])
                    x = diffusion.sample(model, prob["z"].shape, sampler="dpm-adaptive", steps=2,
                                         x_T=prob["z"], order=order, rtol=tol, atol=tol, prediction=pred)
                    solved["difflab"].append({
                        "label": f"dpm-adaptive prediction={pred} order={order} rtol=atol={tol:.2g}",
                        "nfe": model.calls, "err": rms(x, prob["ref"]), "tol": tol, "prediction": pred})
                if i % 2:
                    continue
                model = Counting(prob["oracle"])
                den = KE.DiscreteEpsDDPMDenoiser(model, diffusion.schedule.alpha_bar.double(), quantize=False)
                x = prob["z"] * math.sqrt(1.0 + float(den.sigma_max) ** 2)
                x = K.sample_dpm_adaptive(den, x, float(den.sigma_min), float(den.sigma_max), order=order,
                                          rtol=tol, atol=tol, disable=True)
                solved["k-diffusion"].append({"label": f"dpm_adaptive order={order} rtol=atol={tol:.2g}",
                                              "nfe": model.calls, "err": rms(x, prob["ref_min"]),
                                              "tol": tol})
        t4 = time.perf_counter()
        print(f"{prob['name']}: difflab {t1 - t0:.0f} s, diffusers {t2 - t1:.0f} s, "
              f"k-diffusion {t3 - t2:.0f} s, adaptive {t4 - t3:.0f} s", flush=True)
        results[prob["name"]] = {"rows": rows, "adaptive": solved, "recommended": recommended}
    return results


def table(name: str, res) -> str:
    best = {lib: best_per_budget(rows) for lib, rows in res["rows"].items()}
    lines = [f"**{name}: RMS error against the exact ODE endpoint (best configuration within each NFE)**", "",
             "| NFE | difflab | diffusers | k-diffusion | best peer / difflab |", "|---|---|---|---|---|"]
    for b in BUDGETS if res["rows"]["difflab"] else ():
        cells = []
        for lib in ("difflab", "diffusers", "k-diffusion"):
            e = best[lib].get(b)
            cells.append("-" if e is None else f"{e[0]:.2e} ({e[1]}; {e[2]})")
        peers = [best[lib][b][0] for lib in ("diffusers", "k-diffusion") if b in best[lib]]
        ratio = min(peers) / best["difflab"][b][0] if peers and b in best["difflab"] else math.nan
        lines.append(f"| {b} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    if res["recommended"]:
        lines += ["", f"**{name}: `difflab sample --nfe N` (`budget.recommend`) against the best peer**", "",
                  "| NFE | configuration (NFE used) | error | best peer / this |", "|---|---|---|---|"]
        for r in res["recommended"]:
            b = r["budget"]
            peers = [best[lib][b][0] for lib in ("diffusers", "k-diffusion") if b in best[lib]]
            ratio = min(peers) / r["err"]
            lines.append(f"| {b} | {r['label']} ({r['nfe']}) | {r['err']:.2e} | {ratio:.2f} |")
    if not res["adaptive"]["difflab"]:
        return "\n".join(lines + [""])
    lines += ["", f"**{name}: adaptive solvers (each point: NFE, RMS error)**", "",
              "| tolerance | difflab dpm-adaptive, data prediction (order 2 / 3) | difflab, noise prediction "
              "(order 2 / 3) | k-diffusion dpm_adaptive (order 2 / 3) |", "|---|---|---|---|"]
    ad = res["adaptive"]
    data, noise = ({"difflab": [r for r in ad["difflab"] if r.get("prediction", "data") == p],
                    "k-diffusion": ad["k-diffusion"]} for p in ("data", "noise"))
    for tol in TOLERANCES:
        cells = []
        for rows in (data["difflab"], noise["difflab"], ad["k-diffusion"]):
            pair = [r for r in rows if r["tol"] == tol]
            cells.append(" / ".join(f"{r['nfe']}, {r['err']:.2e}" for r in pair) or "-")
        lines.append(f"| {tol:.2g} | " + " | ".join(cells) + " |")
    lines += ["", "both predictions: " + adaptive_verdict(ad), "",
              "data prediction only: " + adaptive_verdict(data), "",
              "noise prediction only: " + adaptive_verdict(noise), ""]
    return "\n".join(lines)


def adaptive_verdict(ad) -> str:
    """For each k-diffusion point: difflab's best error at equal or fewer NFE, and the ratio."""
    worse = []
    ratios = []
    for k in ad["k-diffusion"]:
        mine = [r["err"] for r in ad["difflab"] if r["nfe"] <= k["nfe"]]
        if not mine:
            worse.append(f"{k['label']} ({k['nfe']} NFE): no difflab point at <= its NFE")
            continue
        ratio = k["err"] / min(mine)
        ratios.append(ratio)
        if ratio < 1:
            worse.append(f"{k['label']} ({k['nfe']} NFE): k-diffusion {1 / ratio:.2f}x better")
    head = (f"k-diffusion error / difflab's best at <= the same NFE: min {min(ratios):.2f}, "
            f"median {sorted(ratios)[len(ratios) // 2]:.2f}" if ratios else "no comparable points")
    return head + ("; " + "; ".join(worse) if worse else "; difflab at least as accurate at every point")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer samples and difflab spacings (smoke test)")
    p.add_argument("--json", default=None, help="write every row here")
    p.add_argument("--only", default=None, help="gaussian or mixture")
    p.add_argument("--adaptive-only", action="store_true", help="only the adaptive solvers' sweep")
    p.add_argument("--budgets", default=None, help="comma-separated NFE budgets (default: BUDGETS)")
    p.add_argument("--fixed-only", action="store_true", help="skip the adaptive solvers' sweep")
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    if args.budgets:
        global BUDGETS
        BUDGETS = tuple(int(b) for b in args.budgets.split(","))
    import diffusers

    t0 = time.perf_counter()
    diffusion = dl.GaussianDiffusion("linear", 1000)
    n = 64 if args.quick else 512
    problems = []
    if args.only in (None, "gaussian"):
        problems.append(gaussian_problem(diffusion, n))
    if args.only in (None, "mixture"):
        problems.append(mixture_problem(diffusion, 2 * n))
    results = sweep(problems, diffusion, args.quick, fixed=not args.adaptive_only,
                    adaptive=not args.fixed_only)
    print(f"\ndiffusers {diffusers.__version__}, k-diffusion 0.1.1, torch {torch.__version__}, "
          f"{time.perf_counter() - t0:.0f} s\n")
    for name, res in results.items():
        print(table(name, res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, default=str)


if __name__ == "__main__":
    main()
