"""Normalization and augmentation as batched tensor ops on the worker's device (no per-image Python loop)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) to float, scaled to [0, 1] and standardized per channel."""
    return (images.float().div_(255) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def random_translate(images: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by up to max_shift pixels in x and y (zero padding): a padded random crop."""
    if max_shift <= 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n, 1), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * max_shift + 1, (n, 1), generator=generator).to(images.device)
    rows = torch.arange(h, device=images.device).view(1, h) + dy  # (N, H)
    cols = torch.arange(w, device=images.device).view(1, w) + dx  # (N, W)
    batch = torch.arange(n, device=images.device).view(n, 1, 1)
    # Advanced indexing around the channel slice yields (N, H, W, C).
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


class Augment:
    """The training transform of one data set: translate, flip where the labels allow it, normalize."""

    def __init__(self, mean, std, hflip: bool, max_shift: int, device: torch.device, seed: int = 0):
        self.mean = torch.tensor(mean, device=device)
        self.std = torch.tensor(std, device=device)
        self.hflip = hflip
        self.max_shift = max_shift
        self.generator = torch.Generator().manual_seed(seed)

    def train(self, images: torch.Tensor) -> torch.Tensor:
        images = random_translate(images, self.max_shift, self.generator)
        if self.hflip:
            images = random_hflip(images, self.generator)
        return normalize(images, self.mean, self.std)

    def eval(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images, self.mean, self.std)
