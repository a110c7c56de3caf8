"""What a CLIP worker reads: image-text pairs and how images are prepared for the image tower."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ImageInput:
    """uint8 images (N, C, H, W) to the model's input: resized, as 3 channels, normalized."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    @classmethod
    def of_model(cls, model, mean=None, std=None) -> "ImageInput":
        """The model's input size; its own normalization unless the data's is given (a model trained here)."""
        cfg = getattr(model.visual, "preprocess_cfg", {})
        return cls(input_size(model), tuple(mean or cfg.get("mean")), tuple(std or cfg.get("std")))


def input_size(model) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


@dataclass
class PairData:
    """What every pretraining worker reads (through the Ray object store)."""

    train: Any  # CaptionPairs
    heldout: Any  # CaptionPairs, for retrieval metrics
    tokens: torch.Tensor  # (K, context) tokens of every caption
    classes: list[str] = field(default_factory=list)  # for the zero-shot monitor (captions from labels)
    eval_templates: list[str] = field(default_factory=list)
