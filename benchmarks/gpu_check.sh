#!/usr/bin/env bash
# GPU figures of one lent-GPU session, printed as one table, in one call of under 8 minutes:
# CUDA tests, training img/s (ResNet-50 256x128 PxK 16x4, id and san-gal with cached maps, AMP off/on),
# exact vs fast heat maps img/s, evaluate_rank at Market size from GPU vs CPU features.
#
#   benchmarks/gpu_check.sh             # on the GPU machine (needs a Python with torch + CUDA)
#   benchmarks/gpu_check.sh --dry-run   # CPU rehearsal at toy sizes (about a minute): same code paths
#
# Python: $PYTHON, else .venv/bin/python, else python3; src/ is put on PYTHONPATH, so sangal need not
# be installed (the device machine has no network to build a venv). Hard limit: 450 s.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3; fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import torch, safetensors, scipy, yaml, tqdm, PIL" 2>/dev/null; then
  echo "gpu_check: $PY lacks torch/safetensors/scipy/pyyaml/tqdm/pillow; set PYTHON=/path/to/python" >&2
  exit 2
fi
exec timeout --signal=INT --kill-after=20 450 "$PY" benchmarks/gpu_check.py "$@"
