"""Fashion-MNIST from its four IDX files, found in an explicit folder, $FASHION_MNIST_DIR, or Debian's package."""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.data.catalog import DATASETS

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
HOW_TO_GET = ("install it with `apt-get install dataset-fashion-mnist`, or put the four IDX .gz files "
              "in a folder and set FASHION_MNIST_DIR or data.path")

# sha256 of each file's decompressed content.
FILES = {
    "train": (("train-images-idx3-ubyte.gz", (60000, 28, 28),
               "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
              ("train-labels-idx1-ubyte.gz", (60000,),
               "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9")),
    "test": (("t10k-images-idx3-ubyte.gz", (10000, 28, 28),
              "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
             ("t10k-labels-idx1-ubyte.gz", (10000,),
              "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34")),
}


def find_dir(explicit: str | None = None) -> Path:
    for candidate in (explicit, os.environ.get("FASHION_MNIST_DIR"), DEBIAN_DIR):
        if candidate:
            return Path(candidate)
    return DEBIAN_DIR


def load_fashion_mnist(split: str, folder: str | None = None):
    """The split as ImageTensors (torch is imported here: the checksums above serve the workflow's keys)."""
    from pipeline.data.idx import read_idx
    from pipeline.data.tensors import ImageTensors

    directory = find_dir(folder)
    (images_file, images_shape, images_sum), (labels_file, labels_shape, labels_sum) = FILES[split]
    images = read_idx(directory / images_file, images_shape, images_sum, HOW_TO_GET)
    labels = read_idx(directory / labels_file, labels_shape, labels_sum, HOW_TO_GET)
    info = DATASETS["fashion_mnist"]
    return ImageTensors(images.unsqueeze(1), labels.long(), list(info.classes), info.mean, info.std,
                        info.hflip, name="fashion_mnist")
