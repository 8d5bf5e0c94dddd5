#!/usr/bin/env bash
# Set up .venv/ at the project root with everything the pipeline needs (one environment),
# then run the default study with DVC (skip that part with SKIP_STUDY=1).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 \
  | grep -v -e "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -c "import torch, torchvision, nnunetv2, samseg, deepbet" \
  || { echo "setup.sh: the environment is incomplete (see pip output above)" >&2; exit 1; }
.venv/bin/python -m pipeline doctor
if [ "${SKIP_STUDY:-0}" != "1" ]; then
  [ -d .git ] || { echo "setup.sh: run the study from a git checkout (DVC needs one)" >&2; exit 1; }
  PATH="$PWD/.venv/bin:$PATH" dvc repro
  PATH="$PWD/.venv/bin:$PATH" dvc metrics show
fi
