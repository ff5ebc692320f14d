"""``difflab eval bpd --ode`` and ``difflab viz vlb`` on a tiny toy run: wired to the library."""

import json
import math

import pytest
from test_cli import TINY

from difflab import runs as jobs
from difflab.cli import main
from difflab.ode_likelihood import ode_nll
from difflab.runs.common import scored_subset


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("lik") / "run"
    assert main(["train", "--config", "toy2d", "--run", str(run), "--no-progress", *TINY]) == 0
    return run


def test_eval_bpd_ode_reports_the_ode_likelihood(run):
    assert main(["eval", "bpd", "--run", str(run), "--n", "12", "--ode", "--rtol", "1e-4",
                 "--atol", "1e-4", "--no-progress"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["ode_points"] == 12 and m["bound_points"] == 12
    _, diffusion, model, splits = jobs.load_run(run)
    pick = scored_subset(len(splits.test), 12)  # the examples eval bpd scores
    want = ode_nll(diffusion, model, splits.test[pick], rtol=1e-4, atol=1e-4) / 2
    assert m["ode_nats_per_dim"] == pytest.approx(float(want.mean()), rel=1e-6)
    assert m["ode_nats_per_dim_stderr"] == pytest.approx(float(want.std() / 12**0.5), rel=1e-6)


def test_viz_vlb_plots_the_bound_it_reports(run, tmp_path, capsys):
    assert main(["eval", "bpd", "--run", str(run), "--n", "20", "--no-progress"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    capsys.readouterr()
    out = tmp_path / "vlb.png"
    assert main(["viz", "vlb", "--run", str(run), "--n", "20", "--out", str(out), "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert out.stat().st_size > 1000
    parts = report["runs"]["run"]
    # the same draws as `eval bpd` (seeded): the plotted parts are the reported bound, in bits
    assert parts["total"] * math.log(2.0) == pytest.approx(m["bound_nats_per_dim"], rel=1e-9)
    assert parts["total"] == pytest.approx(parts["prior"] + parts["diffusion"] + parts["decoder"], rel=1e-12)


def test_bound_commands_reject_processes_without_a_bound(tmp_path, capsys):
    run = tmp_path / "ve"
    assert main(["train", "--config", "toy2d", "--run", str(run), "--no-progress", *TINY,
                 "--set", "diffusion.process=ve", "--set", "train.steps=2"]) == 0
    assert main(["viz", "vlb", "--run", str(run), "--no-progress"]) == 2
    assert "needs a process with a variational bound" in capsys.readouterr().err
    assert main(["eval", "bpd", "--run", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "has no variational bound" in err and "--ode" in err
