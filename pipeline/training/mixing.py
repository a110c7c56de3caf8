"""Where Mixup and CutMix are applied: timm's `Mixup` on each training batch of a worker, and the loss
that scores mixed (soft) targets."""
from __future__ import annotations

import torch
import torch.nn as nn

from pipeline.training.config import Mixing


class Mixer:
    """A batch's inputs and targets, mixed (timm's Mixup/CutMix) or as given with label smoothing; `criterion`
    is the training loss that fits the targets it returns."""

    def __init__(self, mixing: Mixing | None, label_smoothing: float, num_classes: int):
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        self.label_smoothing, self.num_classes = label_smoothing, num_classes
        self.mixup = Mixup(mixup_alpha=mixing.mixup, cutmix_alpha=mixing.cutmix, prob=mixing.prob,
                           switch_prob=mixing.switch_prob, label_smoothing=label_smoothing,
                           num_classes=num_classes) if mixing is not None else None
        self.criterion = SoftTargetCrossEntropy() if self.mixup else nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mixup is None:
            return inputs, labels
        if len(labels) % 2:  # timm's Mixup needs an even batch; an odd last batch gets smoothed targets
            from timm.data.mixup import mixup_target

            return inputs, mixup_target(labels, self.num_classes, smoothing=self.label_smoothing)
        return self.mixup(inputs, labels)
