"""Top-k scoring of a classifier's outputs, the one definition every evaluation uses (training loop, CLIP
zero-shot and linear probe, ensembles)."""
from __future__ import annotations

import torch


def topk_hits(scores: torch.Tensor, labels: torch.Tensor, k: int = 5) -> torch.Tensor:
    """(N, min(k, classes)) booleans: whether the i-th highest score of each row is its label."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return top == labels[:, None]


def topk_scores(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy and error (%) of logits or probabilities against labels."""
    hits = topk_hits(scores, labels)
    top1, top5 = 100 * hits[:, 0].float().mean().item(), 100 * hits.any(1).float().mean().item()
    return {"top1": top1, "top1_err": 100 - top1, "top5": top5, "top5_err": 100 - top5}
