"""Where a worker gets its learning rate: the optimizer at the lr the driver scaled to the global batch
(`recipe.resolve_recipe`), in timm's parameter groups (layer decay, the head's own lr: `finetune.py`) when
fine-tuning, and timm's schedule stepped per update (or per epoch on validation top-1, for
plateau)."""
from __future__ import annotations

import torch.nn as nn

from pipeline.training.config import Optimization


class LearningRate:
    def __init__(self, model: nn.Module, optim: Optimization, epochs: int, updates_per_epoch: int):
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2

        self.per_epoch = optim.scheduler == "plateau"  # timm's plateau scheduler only steps on epochs
        params = model
        if optim.layer_decay is not None or optim.head_lr_scale is not None:  # fine-tuning: groups with lr_scale
            from pipeline.training.finetune import param_groups

            params = param_groups(model, optim.weight_decay, optim.layer_decay, optim.head_lr_scale)
        self.optimizer = create_optimizer_v2(params, opt=optim.optimizer, lr=optim.lr,
                                             weight_decay=optim.weight_decay, momentum=optim.momentum)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=optim.scheduler, num_epochs=epochs, warmup_epochs=optim.warmup_epochs,
            min_lr=optim.min_lr, step_on_epochs=self.per_epoch, decay_epochs=optim.decay_epochs,
            decay_milestones=list(optim.decay_milestones), decay_rate=optim.decay_rate,
            updates_per_epoch=updates_per_epoch)
        if self.scheduler is None:  # timm's schedulers apply each group's lr_scale; without one it is applied here
            for group in self.optimizer.param_groups:
                group["lr"] = optim.lr * group.get("lr_scale", 1.0)

    def after_update(self, updates: int) -> None:
        if self.scheduler is not None and not self.per_epoch:
            self.scheduler.step_update(updates)

    def after_epoch(self, epoch: int, val_top1: float | None) -> None:
        """`epoch` counts from 1; the plateau schedule needs the epoch's validation top-1."""
        if self.scheduler is not None and self.per_epoch:
            self.scheduler.step(epoch, val_top1)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]
