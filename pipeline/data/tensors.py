"""Small image data sets as in-memory uint8 tensors, split and sharded without copies of Python objects."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass
class ImageTensors:
    """Images as uint8 (N, C, H, W), labels as int64 (N,), plus what training needs to know about them."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool = False  # whether a horizontal flip keeps the label (not for digits)
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def subset(self, index: torch.Tensor) -> "ImageTensors":
        return replace(self, images=self.images[index], labels=self.labels[index])

    def head(self, n: int | None) -> "ImageTensors":
        return self if n is None or n >= len(self) else self.subset(torch.arange(n))

    def split(self, fraction: float, seed: int) -> tuple["ImageTensors", "ImageTensors"]:
        """A seeded (rest, held-out) split; the held-out part is `fraction` of the images."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        n_held = int(round(len(self) * fraction))
        return self.subset(order[n_held:]), self.subset(order[:n_held])

    def shard(self, rank: int, world_size: int) -> "ImageTensors":
        """The rank's share: every world_size-th image, so shards differ in size by one at most."""
        return self.subset(torch.arange(rank, len(self), world_size))
