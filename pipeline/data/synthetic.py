"""A synthetic image data set for fast tests: one smooth random template per class, plus noise."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.data.tensors import ImageTensors


def make_synthetic(num_images: int, num_classes: int = 10, image_size: int = 28, in_chans: int = 1,
                   seed: int = 0, noise: float = 0.35) -> ImageTensors:
    generator = torch.Generator().manual_seed(seed)
    # Templates come from a fixed seed so that train and test sets share them.
    coarse = torch.rand(num_classes, in_chans, 4, 4, generator=torch.Generator().manual_seed(12345))
    templates = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)
    labels = torch.randint(num_classes, (num_images,), generator=generator)
    pixels = templates[labels] + noise * torch.randn(num_images, in_chans, image_size, image_size,
                                                     generator=generator)
    images = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageTensors(images, labels, [f"class{i}" for i in range(num_classes)], (0.5,) * in_chans,
                        (0.25,) * in_chans, hflip=False, name="synthetic")
