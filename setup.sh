#!/usr/bin/env bash
# Set up .venv/ at the project root with everything the pipeline needs (one environment), at the exact
# versions of requirements.lock, then run the default study with DVC (skip that part with SKIP_STUDY=1).
#   bash setup.sh                  install from requirements.lock, run the default study
#   bash setup.sh --refresh-lock   install the newest versions pyproject.toml allows, rewrite requirements.lock
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3.11}
# --no-compile: pip would byte-compile all ~18,000 installed modules (about a minute on 2 cores); Python compiles
# the few thousand the pipeline imports when it first imports them
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-compile)
quiet() { grep -v -e "is ignored: it is neither a file nor a directory" || true; }
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if [ "${1:-}" = "--refresh-lock" ]; then
  "${PIP[@]}" --upgrade -e '.[dev]' 2>&1 | quiet
  { sed -n '/^#/p' requirements.lock; .venv/bin/python -m pip freeze --exclude-editable; } > requirements.lock.new
  mv requirements.lock.new requirements.lock
  echo "setup.sh: requirements.lock refreshed; commit it (DVC re-runs the stages that depend on it)"
  exit 0
fi
"${PIP[@]}" -r requirements.lock 2>&1 | quiet
"${PIP[@]}" --no-deps -e . 2>&1 | quiet
.venv/bin/python -m pip check >/dev/null \
  || { .venv/bin/python -m pip check >&2; echo "setup.sh: requirements.lock does not satisfy pyproject.toml: bash setup.sh --refresh-lock" >&2; exit 1; }
.venv/bin/python -c "import torch, torchvision, nnunetv2, samseg, deepbet" \
  || { echo "setup.sh: the environment is incomplete (see pip output above)" >&2; exit 1; }
.venv/bin/python -m pipeline doctor
if [ "${SKIP_STUDY:-0}" != "1" ]; then
  [ -d .git ] || { echo "setup.sh: run the study from a git checkout (DVC needs one)" >&2; exit 1; }
  PATH="$PWD/.venv/bin:$PATH" dvc repro
  PATH="$PWD/.venv/bin:$PATH" dvc metrics show
fi
