"""One table and one figure of bits/dim on the same test images for the runs given (docs/vae.md): the
notes' "unified perspective" as numbers. Reads each run's ``metrics.json`` (written by ``difflab eval bpd``
with ``--n N``, ``--ode``, ``--ode-decoder``) and prints a markdown table; ``--out`` writes the figure.

    python bench/unified_likelihood.py --run VAE=/path/run --run HVAE=/path/run ... --out docs/vae_mnist.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _fmt(m: dict, key: str) -> str:
    if key not in m:
        return "-"
    se = m.get(f"{key}_stderr")
    return f"{m[key]:.3f} +- {se:.3f}" if se is not None else f"{m[key]:.3f}"


def rows(runs: list[tuple[str, Path]]) -> list[dict]:
    out = []
    for label, run in runs:
        m = json.loads((run / "metrics.json").read_text())
        iwae = m.get("iwae_bits_per_dim", {})
        out.append({
            "label": label,
            "bound": _fmt(m, "bound_bits_per_dim"),
            "parts": ", ".join(f"{k} {v:.3f}" for k, v in m["bound_parts_bits_per_dim"].items()
                               if isinstance(v, float)),
            "iwae": f"{iwae[max(iwae, key=int)]:.3f} (K={max(iwae, key=int)})" if iwae else "-",
            "ode": _fmt(m, "ode_bits_per_dim"),
            "ode_decoder": _fmt(m, "ode_decoder_bits_per_dim"),
            "n": m.get("bound_points"),
            "value": m["bound_bits_per_dim"],
            "iwae_value": float(iwae[max(iwae, key=int)]) if iwae else None,
            "ode_value": m.get("ode_bits_per_dim"),
            "ode_decoder_value": m.get("ode_decoder_bits_per_dim"),
        })
    return out


def table(rs: list[dict]) -> str:
    head = "| model | bound (parts) | IWAE | ODE, uniform dequantization | ODE truncated + decoder | images |"
    lines = [head, "| --- | --- | --- | --- | --- | --- |"]
    for r in rs:
        lines.append(f"| {r['label']} | {r['bound']} ({r['parts']}) | {r['iwae']} | {r['ode']} | "
                     f"{r['ode_decoder']} | {r['n']} |")
    return "\n".join(lines)


def figure(rs: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    kinds = [("value", "variational bound"), ("iwae_value", "IWAE"), ("ode_value", "ODE, dequantized"),
             ("ode_decoder_value", "ODE truncated + decoder")]
    width = 0.8 / len(kinds)
    for j, (key, name) in enumerate(kinds):
        xs = [i + (j - 1.5) * width for i, r in enumerate(rs) if r[key] is not None]
        ys = [r[key] for r in rs if r[key] is not None]
        if ys:
            ax.bar(xs, ys, width, label=name)
    ax.set_xticks(range(len(rs)), [r["label"] for r in rs], fontsize=8)
    ax.set_ylabel("bits/dim (lower is better)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run", action="append", required=True, metavar="LABEL=FOLDER")
    p.add_argument("--out", default=None, help="PNG of the figure")
    args = p.parse_args()
    runs = [(s.rsplit("=", 1)[0], Path(s.rsplit("=", 1)[1])) for s in args.run]
    rs = rows(runs)
    print(table(rs))
    if args.out:
        figure(rs, Path(args.out))


if __name__ == "__main__":
    main()
