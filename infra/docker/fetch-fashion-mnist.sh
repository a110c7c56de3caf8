#!/usr/bin/env bash
# Put Fashion-MNIST's four IDX files where the image build copies them from (infra/docker/fashion-mnist/), from
# $FASHION_MNIST_DIR or Debian's package dataset-fashion-mnist. The image then holds them at
# /opt/datasets/fashion-mnist, its $FASHION_MNIST_DIR. Usage: infra/docker/fetch-fashion-mnist.sh [DEST]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-$here/fashion-mnist}
source=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
files="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
for f in $files; do
  if [ ! -f "$source/$f" ]; then
    echo "Fashion-MNIST not found in $source: sudo apt-get install dataset-fashion-mnist, or set FASHION_MNIST_DIR" >&2
    exit 1
  fi
done
mkdir -p "$dest"
for f in $files; do cp "$source/$f" "$dest/$f"; done
echo "Fashion-MNIST in $dest"
