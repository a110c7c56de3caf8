"""Evaluations of a CLIP model: retrieval, zero-shot classification, linear probe; saving and loading."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.clip import create_model
from pipeline.clip.data import ImageInput
from pipeline.scoring import topk_hits, topk_scores


@torch.no_grad()
def encode_images(model, images: torch.Tensor, image_input: ImageInput, device, batch_size: int = 512,
                  autocast=None) -> torch.Tensor:
    """L2-normalized image embeddings of uint8 images, in order."""
    model.eval()
    parts = []
    for chunk in images.split(batch_size):
        with autocast() if autocast else torch.autocast(device.type, enabled=False):
            parts.append(model.encode_image(image_input(chunk.to(device)), normalize=True).float())
    return torch.cat(parts) if parts else torch.empty(0)


@torch.no_grad()
def encode_texts(model, tokens: torch.Tensor, device, batch_size: int = 1024) -> torch.Tensor:
    model.eval()
    return torch.cat([model.encode_text(chunk.to(device), normalize=True).float()
                      for chunk in tokens.split(batch_size)])


def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor, groups: torch.Tensor,
                     ks=(1, 5)) -> dict[str, float]:
    """Image-to-text and text-to-image recall@k (%) of paired rows. A retrieved item counts when it
    belongs to the query's group: its own caption, or any caption of its class when captions come
    from labels (they describe every image of the class equally well)."""
    similarity = image_features @ text_features.T
    same = groups[:, None] == groups[None, :]
    metrics = {}
    for k in ks:
        k_ = min(k, len(groups))
        for name, sims in (("i2t", similarity), ("t2i", similarity.T)):
            top = sims.topk(k_, dim=1).indices
            metrics[f"{name}_r{k}"] = 100 * same.gather(1, top).any(1).float().mean().item()
    return metrics


def zero_shot_classifier(model, tokenizer, classes: list[str], templates: list[str], device) -> torch.Tensor:
    """(embed_dim, classes) weights: each class's text embedding averaged over the templates."""
    import open_clip

    model.eval()
    return open_clip.build_zero_shot_classifier(model, tokenizer, classes, templates, device=device).float()


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1, top-5 (and their errors) and mean per-class recall, in %."""
    hits = topk_hits(logits, labels, k=1)[:, 0]
    recalls = [hits[labels == c].float().mean().item() for c in labels.unique()]
    return {**topk_scores(logits, labels), "mean_class_recall": 100 * sum(recalls) / len(recalls)}


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, num_classes: int,
                 steps: int = 300, lr: float = 0.01, weight_decay: float = 1e-4, seed: int = 0) -> nn.Linear:
    """Multinomial logistic regression on frozen features: full-batch AdamW, `steps` steps."""
    torch.manual_seed(seed)
    mean, std = train_features.mean(0), train_features.std(0) + 1e-6
    probe = nn.Linear(train_features.shape[1], num_classes)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    x = (train_features - mean) / std
    for _ in range(steps):
        loss = F.cross_entropy(probe(x), train_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    # Fold the standardization into the layer: the probe takes raw features.
    with torch.no_grad():
        probe.weight.div_(std)
        probe.bias.sub_(probe.weight @ mean)
    return probe


def save_model(model, meta: dict[str, Any], folder: Path) -> None:
    """Weights (model.pt) and what it takes to rebuild the model (model.json)."""
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "model.json").write_text(json.dumps(meta, indent=2))


def load_trained(folder: str | Path):
    """(model, tokenizer, ImageInput) of a model saved by the pretraining stage."""
    folder = Path(folder)
    meta = json.loads((folder / "model.json").read_text())
    model, tokenizer = create_model(meta["model"], **meta.get("model_kwargs", {}))
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    return model, tokenizer, ImageInput(meta["image_size"], tuple(meta["mean"]), tuple(meta["std"])), meta
