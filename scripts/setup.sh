#!/usr/bin/env bash
# Create .venv (once) and install resbudget into it with its test tools. Safe to run again: it only adds what is missing.
# On a CPU-only machine torch 2.13.0 is installed first, so pip never pulls a multi-GB CUDA build for "torch>=2.9".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[test,deploy,search,postgres,tensorboard]"
