#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv/ with the project installed, and Fashion-MNIST.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"

FMNIST_DIR=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ] && [ -z "${FASHION_MNIST_DIR:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist)..."
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
      || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null))
  else
    echo "Fashion-MNIST not found. Install it with: sudo apt-get install dataset-fashion-mnist"
    echo "  (or download the four IDX .gz files and set FASHION_MNIST_DIR to their folder)"
  fi
fi
# The team-server test runs Debian's PostgreSQL; the UI test drives Debian's chromium (never `playwright install`).
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing PostgreSQL and Chromium (Debian packages postgresql, chromium) for the tests..."
    (apt-get install -y -qq postgresql chromium >/dev/null 2>&1 \
      || (apt-get update -qq && apt-get install -y -qq postgresql chromium >/dev/null))
  else
    echo "For the team-server and UI tests: sudo apt-get install postgresql chromium"
  fi
fi
echo "Ready: source .venv/bin/activate, then: pipeline run experiments/quickstart.yaml"
