"""``difflab report``: one self-contained HTML page for one or more run folders.

The page needs nothing but a browser, offline: styles are inline, there is no script, and every image
is embedded as a base64 ``data:`` URI (the run's ``samples.png``, ``forward.png``, ``reverse.png``,
``vlb.png``, and the training curves drawn here from ``log.csv``). For each run it shows the config
(``config.toml``), the data (``split.json``), the training summary (``train.json``), every metric in
``metrics.json`` next to the command that writes it, and for the output folder of a diffusers model
its source and scheduler mapping (``diffusers.json``). Several runs are laid side by side, one column
each, with their training curves overlaid.
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .train.logs import read_log
from .viz.curves import training_curves_png

FIGURES = (
    ("samples.png", "samples"),
    ("forward.png", "forward process q(x_t | x_0), t increasing to the right"),
    ("reverse.png", "reverse process, noise to image"),
    ("vlb.png", "the bound's terms over log-SNR"),
)
# metric key prefix -> the command that writes it (RUN is substituted)
COMMANDS = (
    ("ode_", "difflab eval bpd --run RUN --ode"),
    ("bound_", "difflab eval bpd --run RUN"),
    ("fd", "difflab eval fd --run RUN"),
    ("classifier_", "difflab eval fd --run RUN"),
    ("confident_", "difflab eval fd --run RUN"),
    ("sample_class_histogram", "difflab eval fd --run RUN"),
    ("sliced_w2", "difflab eval sw --run RUN"),
    ("samples", "difflab eval sw --run RUN"),
    ("data", "difflab eval sw --run RUN"),
)
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:22px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:12px 0 4px;color:#444}
.runs{display:grid;gap:18px} .run{min-width:0;border:1px solid #e3e3e3;border-radius:6px;padding:10px 12px}
table{border-collapse:collapse;font-size:12.5px;width:100%}
td,th{border-bottom:1px solid #eee;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f6f6f6} td.num{font-variant-numeric:tabular-nums}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11.5px}
pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:320px;border-radius:4px}
img{max-width:100%;image-rendering:pixelated;border:1px solid #eee}
.muted{color:#777;font-size:12px} figcaption{font-size:12px;color:#555}
.figs{display:flex;flex-wrap:wrap;gap:12px} figure{margin:4px 0;flex:1 1 260px;max-width:420px}
figure.wide{flex-basis:100%;max-width:900px}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="{data_uri(png)}">'


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def command_for(key: str, run: str) -> str:
    """The command that writes metric ``key`` of ``metrics.json`` (by the key's family)."""
    for prefix, cmd in COMMANDS:
        if key.startswith(prefix):
            return cmd.replace("RUN", run)
    return f"difflab eval --run {run}"


def run_argument(run: Path) -> str:
    """What follows ``--run`` in a command on ``run``: the folder, or for the output folder of a
    diffusers model that model's folder with ``--out``."""
    source = _json(run / "diffusers.json").get("source")
    return f"{source} --out {run}" if source else str(run)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(", ", ": "))
    return str(v)


def _table(rows: Sequence[Sequence[str]], head: Sequence[str]) -> str:
    th = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td class=num>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _metrics_html(run: Path) -> str:
    metrics = _json(run / "metrics.json")
    if not metrics:
        cmd = f"difflab eval --run {run_argument(run)}"
        return f"<p class=muted>no metrics.json: run <code>{_esc(cmd)}</code></p>"
    rows = [
        (f"<code>{_esc(k)}</code>", _esc(_fmt(v)), f"<code>{_esc(command_for(k, run_argument(run)))}</code>")
        for k, v in metrics.items()
    ]
    return _table(rows, ("metric", "value", "written by"))


def _samples_html(run: Path) -> str:
    info = _json(run / "samples.json")
    if not info:
        return ""
    opts = " ".join(
        f"--{k} {v}" for k, v in info.items() if k in ("sampler", "n", "seed", "eta", "class", "guidance")
    )
    extra = ", ".join(f"{k} {v}" for k, v in info.items() if k in ("nfe", "seconds"))
    cmd = f"difflab sample --run {run_argument(run)} {opts}"
    return f"<p class=muted>drawn by <code>{_esc(cmd)}</code> ({_esc(extra)})</p>"


def _summary_html(run: Path) -> str:
    parts = []
    split = _json(run / "split.json")
    if split:
        keep = {k: v for k, v in split.items() if k not in ("test_indices", "sha256")}
        parts.append(
            "<h3>data</h3>" + _table([(_esc(k), _esc(_fmt(v))) for k, v in keep.items()], ("key", "value"))
        )
    link = _json(run / "diffusers.json")
    if link:
        rows = [("source", _esc(link.get("source"))), ("data", _esc(link.get("data")))]
        rows += [(_esc(k), _esc(_fmt(v))) for k, v in link.get("scheduler", {}).items()]
        parts.append("<h3>diffusers model</h3>" + _table(rows, ("key", "value")))
    train = _json(run / "train.json")
    if train:
        parts.append(
            "<h3>training</h3>"
            + _table([(_esc(k), _esc(_fmt(v))) for k, v in train.items()], ("key", "value"))
        )
    cfg = run / "config.toml"
    if cfg.is_file():
        parts.append(f"<h3>config.toml</h3><pre>{_esc(cfg.read_text())}</pre>")
    return "".join(parts)


def _figures_html(run: Path) -> str:
    out = []
    for name, caption in FIGURES:
        path = run / name
        if path.is_file():
            wide = " class=wide" if name == "vlb.png" else ""
            out.append(
                f"<figure{wide}>{_img(path.read_bytes(), name)}<figcaption>{_esc(name)}: {_esc(caption)}"
                "</figcaption></figure>"
            )
    if not out:
        return "<p class=muted>no figures yet (difflab sample / eval / viz write them)</p>"
    return f"<div class=figs>{''.join(out)}</div>"


def _run_column(run: Path) -> str:
    return (
        f"<div class=run><h2>{_esc(run.name)}</h2><p class=muted>{_esc(run.resolve())}</p>"
        f"<h3>metrics</h3>{_metrics_html(run)}{_figures_html(run)}{_samples_html(run)}{_summary_html(run)}</div>"
    )


def render(runs: Sequence[str | Path]) -> str:
    """The report page of ``runs`` as an HTML string (see the module docstring)."""
    paths = [Path(r) for r in runs]
    for p in paths:
        if not (p / "config.toml").is_file():
            raise FileNotFoundError(f"{p} is not a run folder (no config.toml)")
    logs = [(p.name, read_log(p)) for p in paths if (p / "log.csv").is_file()]
    logs = [(label, rows) for label, rows in logs if rows]
    curves = (
        f"<h2>training curves</h2>{_img(training_curves_png(logs), 'training curves')}"
        if logs
        else "<p class=muted>no log.csv rows: nothing trained here (a diffusers model, or a fresh run)</p>"
    )
    names = ", ".join(p.name for p in paths)
    cols = f"grid-template-columns:repeat({len(paths)},minmax(0,1fr))"
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>difflab report: {_esc(names)}</title><style>{STYLE}</style></head><body>"
        f"<h1>difflab report: {_esc(names)}</h1>"
        f"<p class=muted>written {_esc(time.strftime('%Y-%m-%d %H:%M:%S %Z'))} by "
        f"<code>difflab report {' '.join('--run ' + _esc(p) for p in paths)}</code></p>"
        f'{curves}<div class=runs style="{cols}">{"".join(_run_column(p) for p in paths)}</div></body></html>'
    )


def write_report(runs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Write :func:`render`'s page to ``out`` (default ``report.html`` in the first run folder)."""
    if not runs:
        raise ValueError("give at least one run folder")
    out = Path(out) if out else Path(runs[0]) / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(runs), encoding="utf-8")
    return out


__all__ = ["command_for", "data_uri", "render", "run_argument", "write_report"]
