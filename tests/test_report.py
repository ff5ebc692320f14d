"""``difflab report``: the page is self-contained (no network reference, images as data: URIs) and
shows every metric of metrics.json with the command that writes it."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from difflab import config
from difflab.cli import main
from difflab.report import render


def _png(seed: int) -> bytes:
    arr = (np.random.default_rng(seed).random((40, 60)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def fake_run(tmp_path, name: str, bpd: float):
    run = tmp_path / name
    run.mkdir()
    config.save(config.load("digits"), run / "config.toml")
    rows = ["step,loss,lr,grad_norm,seconds"] + [
        f"{s},{1 / s:.6f},{1e-3 * s / 200:.6g},{2 / s:.5f},{0.1 * s:.2f}" for s in range(50, 250, 50)
    ]
    (run / "log.csv").write_text("\n".join(rows) + "\n")
    (run / "samples.png").write_bytes(_png(1))
    (run / "forward.png").write_bytes(_png(2))
    metrics = {
        "bound_bits_per_dim": bpd,
        "bound_parts_bits_per_dim": {"prior": 0.0012, "diffusion": 1.5, "decoder": 0.25},
        "fd": 12.3456,
        "ode_bits_per_dim": 1.2345,
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "split.json").write_text(json.dumps({"dataset": "digits", "shape": [1, 8, 8], "bins": 17}))
    (run / "samples.json").write_text(json.dumps({"sampler": "dpm++2m", "nfe": 20, "n": 100, "seed": 1}))
    return run


def test_report_is_self_contained_and_holds_every_metric(tmp_path):
    a, b = fake_run(tmp_path, "run-a", 1.7531), fake_run(tmp_path, "run-b", 2.0417)
    page = render([a, b])
    assert not re.search(r"https?:|ftp:|url\(|@import|href=", page, re.I)  # nothing fetched from anywhere
    assert not re.search(r"<(script|link|iframe|object|embed)\b", page, re.I)
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 1 + 2 * 2  # the curves, and samples + forward of each run
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()  # a real PNG
    for number in ("1.7531", "2.0417", "12.3456", "1.2345", "0.0012"):
        assert number in page
    assert f"difflab eval bpd --run {a} --ode" in page and f"difflab eval fd --run {b}" in page
    assert "grid-template-columns:repeat(2," in page  # side by side


def test_report_cli_writes_into_the_first_run(tmp_path, capsys):
    a = fake_run(tmp_path, "run-a", 1.5)
    assert main(["report", "--run", str(a)]) == 0
    assert json.loads(capsys.readouterr().out)["report"] == str(a / "report.html")
    assert "1.5" in (a / "report.html").read_text()
    assert main(["report", "--run", str(tmp_path / "missing")]) == 2


@pytest.mark.slow
def test_report_opens_in_a_headless_browser(tmp_path):
    """tools/report_screenshot.sh renders the page offline in chromium (needs chromium installed)."""
    import shutil
    import subprocess
    from pathlib import Path

    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("chromium is not installed")
    a = fake_run(tmp_path, "run-a", 1.5)
    page = tmp_path / "report.html"
    page.write_text(render([a]))
    shot = tmp_path / "shot.png"
    script = Path(__file__).resolve().parents[1] / "tools" / "report_screenshot.sh"
    subprocess.run(["bash", str(script), str(page), str(shot)], check=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("L"))
    assert img.shape[1] == 1280 and img.std() > 10  # a drawn page, not a blank one
