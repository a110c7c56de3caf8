"""Small image data sets as in-memory uint8 tensors, split and sharded without copies of Python objects."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from pipeline.errors import PipelineError


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

    def select_classes(self, classes: list[int]) -> "ImageTensors":
        """The images of some classes, relabelled 0..k-1 in the order given, with their names."""
        if max(classes) >= self.num_classes:
            raise PipelineError(f"data.classes: {self.name or 'the data set'} has classes 0..{self.num_classes - 1}, "
                                f"not {max(classes)}: give indices below {self.num_classes}")
        relabel = torch.full((self.num_classes,), -1, dtype=torch.int64)
        relabel[torch.tensor(classes)] = torch.arange(len(classes))
        kept = relabel[self.labels] >= 0
        picked = self.subset(kept.nonzero().flatten())
        return replace(picked, labels=relabel[picked.labels], classes=[self.classes[c] for c in classes])

    def per_class(self, n: int, seed: int) -> "ImageTensors":
        """n images of every class, drawn with a seeded permutation (the same seed draws the same first images,
        so a smaller n is a subset of a larger one); in their original order."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        chosen = []
        for label in range(self.num_classes):
            mine = order[self.labels[order] == label]
            if len(mine) < n:
                raise PipelineError(f"data.per_class {n}: class '{self.classes[label]}' has only {len(mine)} training "
                                    "images after the validation split: lower data.per_class (or data.val_fraction)")
            chosen.append(mine[:n])
        return self.subset(torch.cat(chosen).sort().values)

    def shard(self, rank: int, world_size: int) -> "ImageTensors":
        """The rank's share: every world_size-th image, so shards differ in size by one at most."""
        return self.subset(torch.arange(rank, len(self), world_size))
