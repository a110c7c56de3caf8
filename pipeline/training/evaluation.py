"""Loss and scoring of a classifier: training loss with auxiliary heads, evaluation over a split."""
from __future__ import annotations

import torch
import torch.nn as nn

from pipeline.data.augment import Augment
from pipeline.scoring import topk_hits
from pipeline.training.harness import all_reduce_sum, unwrap


def split_outputs(output) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Main logits and auxiliary logits (GoogLeNet's side heads return a tuple in training)."""
    if isinstance(output, (tuple, list)):
        return output[0], list(output[1:])
    return output, []


def classification_loss(model: nn.Module, output, labels, criterion) -> tuple[torch.Tensor, torch.Tensor]:
    logits, aux = split_outputs(output)
    loss = criterion(logits, labels)
    if aux:
        weight = getattr(unwrap(model), "aux_loss_weight", 0.3)
        loss = loss + weight * sum(criterion(a, labels) for a in aux)
    return loss, logits


@torch.no_grad()
def evaluate(model: nn.Module, batches, augment: Augment, criterion, device, autocast,
             probabilities: list | None = None) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy over every worker's shard, summed across workers.

    With `probabilities` given, this worker's softmax outputs are appended to it, batch by batch.
    """
    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    for images, labels in batches:
        with autocast():
            logits = model(augment.eval(images)).float()
        if probabilities is not None:
            probabilities.append(logits.softmax(1).cpu())
        loss_sum += criterion(logits, labels).item() * len(labels)
        hits = topk_hits(logits, labels)
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        count += len(labels)
    loss_sum, correct1, correct5, count = all_reduce_sum([loss_sum, correct1, correct5, count], device)
    count = max(count, 1)
    return {"loss": loss_sum / count, "top1": 100 * correct1 / count, "top5": 100 * correct5 / count}
