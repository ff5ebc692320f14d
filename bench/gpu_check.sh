#!/usr/bin/env bash
# The GPU check, one command on a machine with one CUDA GPU and PyTorch installed (no internet needed):
#
#   bash bench/gpu_check.sh [OUT.json]        # default: gpu_check.json in the current folder
#
# Runs, each section under its own time limit (7.5 minutes in all at most, kill grace included):
#   env       GPU, PyTorch, CUDA, which Python dependencies are missing            (30 s)
#   tests     the @pytest.mark.cuda tests: CUDA vs CPU training step, bf16, sampling  (90 s)
#   train     cifar10-ddpm U-Net, bf16 autocast, optimizer steps/s, eager            (60 s)
#   compile   the same under torch.compile (compilation timed apart)                (150 s)
#   sample    DDIM at 50 NFE, images/s                                               (45 s)
#   torchrun  a 1-GPU torchrun (DDP/NCCL) smoke run of `difflab train` on toy2d      (45 s)
# and writes one JSON with every section's result (or its error / timeout). Without a GPU it stops
# within seconds with one message and exit status 3. Exit status 1 if any section failed.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${1:-gpu_check.json}")
PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

timeout 60 "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' 2>"$TMP/probe.err"
rc=$?
if [ "$rc" -eq 3 ]; then
    echo "gpu_check: no CUDA GPU visible to PyTorch ($PY: torch.cuda.is_available() is False); nothing run" >&2
    exit 3
elif [ "$rc" -ne 0 ]; then
    echo "gpu_check: $PY cannot run PyTorch ($(tail -1 "$TMP/probe.err")); set PYTHON=...; nothing run" >&2
    exit 3
fi

section() {  # section NAME SECONDS COMMAND...: the command's last stdout line (JSON) -> $TMP/NAME.json
    local name=$1 limit=$2; shift 2
    echo "gpu_check: $name (at most ${limit} s)" >&2
    local t0=$SECONDS
    timeout --kill-after=5 "$limit" "$@" >"$TMP/$name.out" 2>"$TMP/$name.err"
    local rc=$?
    "$PY" - "$name" "$rc" "$((SECONDS - t0))" "$TMP" <<'PYEOF'
import json, sys
name, rc, secs, tmp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
lines = [l for l in open(f"{tmp}/{name}.out").read().splitlines() if l.strip()]
try:
    result = json.loads(lines[-1])
except (IndexError, ValueError):
    result = {}
result.update(exit_code=rc, wall_seconds=secs)
if rc in (124, 137):
    result["error"] = "timed out"
elif rc != 0:
    result["error"] = (open(f"{tmp}/{name}.err").read()[-1500:] or "\n".join(lines[-20:]))
json.dump(result, open(f"{tmp}/{name}.json", "w"))
PYEOF
}

cd "$ROOT"
section env 30 "$PY" bench/gpu_check.py env
section tests 90 "$PY" bench/gpu_check.py tests
section train 60 "$PY" bench/gpu_check.py train
section compile 150 "$PY" bench/gpu_check.py train --compile
section sample 45 "$PY" bench/gpu_check.py sample
section torchrun 45 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m difflab.cli train \
    --config toy2d --run-dir "$TMP/ddp-run" --set train.device=cuda --set train.steps=20 \
    --set train.max_minutes=0 --set train.log_every=10 --set train.ckpt_every=20 --no-progress

"$PY" - "$TMP" "$OUT" <<'PYEOF'
import json, sys
tmp, out = sys.argv[1], sys.argv[2]
names = ("env", "tests", "train", "compile", "sample", "torchrun")
report = {n: json.load(open(f"{tmp}/{n}.json")) for n in names}
report["ok"] = all(r.get("exit_code") == 0 for r in report.values())
json.dump(report, open(out, "w"), indent=2)
print(json.dumps(report, indent=2))
print(f"gpu_check: wrote {out}", file=sys.stderr)
sys.exit(0 if report["ok"] else 1)
PYEOF
