#!/usr/bin/env bash
# Every CUDA path on a GPU machine, in one go (issue 16): set-up with the CUDA torch build and
# Triton, the CUDA tests, then each suite with --device cuda; fails on the first suite that
# writes a row that is not ok. Usage: bash scripts/gpu_check.sh [results-root]   (default gpu-results/)
# Time on one H200-class GPU is dominated by the kernels runs; FIGURES=0 skips the Llama-7B table.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-results}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
bash scripts/setup.sh --test
.venv/bin/python -m pip install -q -e ".[triton]"
PY=.venv/bin/python
$PY -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name())"

# 1. the tests that need a GPU: every family and kernels mode on it, the Triton kernels compiled for it, CUDA timing and memory
$PY -m pytest -q tests/test_cuda.py tests/test_triton.py tests/test_measure.py
# 2. every suite on the GPU; all_ok fails unless every row of the newest run is ok
all_ok() {
  $PY - "$OUT/$1" <<'PY'
import json, pathlib, sys
run = max(pathlib.Path(sys.argv[1]).glob("*/rows.jsonl"), key=lambda p: p.stat().st_mtime)
rows = [json.loads(line) for line in run.read_text().splitlines() if line.strip()]
bad = [r for r in rows if r.get("status", "ok") != "ok"]
print(f"{run.parent}: {len(rows)} rows, {len(bad)} not ok")
for r in bad:
    print("  ", r.get("family"), r.get("shape"), r.get("mode"), r.get("status"), r.get("reason"))
sys.exit(1 if bad or not rows else 0)
PY
}
for dtype in float32 bfloat16; do
  $PY bench.py --suite kernels --device cuda --dtype $dtype --config suites/kernels/gpu-check.yaml --out "$OUT"
  all_ok kernels
done
$PY bench.py --suite approx --quick --device cuda --out "$OUT" && all_ok approx
$PY bench.py --suite llama-compress --quick --device cuda --out "$OUT" && all_ok llama-compress
$PY bench.py --suite train-vision --quick --device cuda --out "$OUT" && all_ok train-vision
$PY bench.py --suite train-lm --quick --device cuda --out "$OUT" && all_ok train-lm
# 3. the figures: Llama-7B shapes, bfloat16, rho 0.5 / 0.2, 1-4096 tokens, eager and the Triton kernels
if [ "${FIGURES:-1}" = 1 ]; then
  $PY bench.py --suite kernels --device cuda --dtype bfloat16 --config suites/kernels/llama7b-gpu.yaml --out "$OUT"
  all_ok kernels
fi
echo "gpu_check: every CUDA path ran with ok rows; results in $OUT/"
