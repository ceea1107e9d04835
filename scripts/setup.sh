#!/usr/bin/env bash
# Idempotent set-up: Fashion-MNIST from Debian, a virtualenv in .venv, vitprune + test deps from PyPI.
# torch/torchvision come from PyPI (CUDA builds, several GB, ~1.5 min the first time): PyPI's
# torchvision only loads with PyPI's own torch, and timm needs torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing dataset-fashion-mnist (apt)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi

stamp=".venv/.vitprune-installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing vitprune and its dependencies into .venv (first time: several GB)"
  if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e ".[dev]"; } > .venv/pip.log 2>&1; then
    grep -v "^WARNING: Location" .venv/pip.log | tail -20
    echo "setup: pip install failed (full log: .venv/pip.log)" >&2
    exit 1
  fi
  .venv/bin/python -c "import vitprune, timm, torchvision"
  rm -f .venv/.vitprune-installed-*
  touch "$stamp"
fi
