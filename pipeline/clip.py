"""CLIP with open_clip: small models for small images, contrastive pretraining on Ray Train, and the
evaluations built on a trained model (retrieval, zero-shot classification, linear probe).

The per-worker loop reads like `pipeline.train`'s: `prepare_model` and `ray.train.report` are the
distributed seams, plus open_clip's `ClipLoss`, which gathers every worker's features so that the
negatives of each pair are the whole global batch.
"""
from __future__ import annotations

import difflib
import logging
import json
import math
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.errors import PipelineError

# A small text tower: the captions are short and few, and the token embedding (vocabulary 49,408)
# dominates the parameter count, so it stays narrow.
SMALL_TEXT = {"context_length": 20, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
# Small open_clip models for 28-32 px images, registered at run time (architectures as data).
SMALL_MODELS: dict[str, dict[str, Any]] = {
    # A ViT image tower: 16 tokens of 7x7 patches at 28 px.
    "clip-vit-28": {"embed_dim": 128, "text_cfg": SMALL_TEXT,
                    "vision_cfg": {"image_size": 28, "patch_size": 7, "width": 128, "layers": 4,
                                   "head_width": 32, "mlp_ratio": 2.0}},
    # A CNN image tower: the CIFAR-style ResNet-20 of the model zoo, through open_clip's timm adapter.
    "clip-resnet20-28": {"embed_dim": 128, "text_cfg": SMALL_TEXT,
                         "vision_cfg": {"image_size": 28, "timm_model_name": "resnet20", "timm_pool": "avg",
                                        "timm_proj": "linear"}},
    # open_clip's own modified ResNet (attention pooling), one bottleneck block per stage, at 32 px.
    "clip-rn-32": {"embed_dim": 128, "text_cfg": SMALL_TEXT,
                   "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None}},
}


@lru_cache(maxsize=1)
def register_small_models() -> None:
    """Make the small models known to open_clip (and the model zoo to timm, for timm image towers)."""
    import open_clip

    import models  # noqa: F401  (registers the zoo in timm's registry)

    # open_clip registers configs from JSON files only, read at once (later rescans keep them).
    with tempfile.TemporaryDirectory(prefix="pipeline-clip-configs-") as folder:
        for name, config in SMALL_MODELS.items():
            (Path(folder) / f"{name}.json").write_text(json.dumps(config))
        open_clip.add_model_config(folder)


def model_names() -> list[str]:
    import open_clip

    register_small_models()
    return open_clip.list_models()


def check_model_name(name: str) -> str:
    """A ValueError naming close matches when `name` is no open_clip model (hf-hub:/local-dir: pass)."""
    if name.startswith(("hf-hub:", "local-dir:")):
        return name
    known = model_names()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown CLIP model '{name}'{hint}: use one of the small models "
                         f"{', '.join(SMALL_MODELS)} or any open_clip model name (open_clip.list_models())")
    return name


def create_model(name: str, pretrained: str | None = None, **kwargs):
    """An open_clip model and its tokenizer; one-line errors for unknown names and missing weights."""
    import open_clip

    check_model_name_or_raise(name)
    if pretrained and not Path(pretrained).expanduser().is_file():
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise PipelineError(f"no pretrained weights '{pretrained}' for CLIP model '{name}': use one of "
                                f"{', '.join(tags) or 'none (train it: stage clip_pretrain)'} or a weights file")
    try:
        with _quiet_root_logger():  # open_clip logs to the root logger (an untrained start, a failed download): we report those ourselves
            model = open_clip.create_model(name, pretrained=pretrained, output_dict=True, **kwargs)
    except RuntimeError as exc:
        if pretrained and "download" in str(exc).lower():
            raise PipelineError(f"the pretrained weights '{pretrained}' of CLIP model '{name}' cannot be fetched "
                                f"(offline?): download them once where the Hugging Face hub is reachable "
                                f"(they are cached), or give a local weights file as pretrained") from None
        raise
    try:
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:  # models with a Hugging Face tokenizer (SigLIP, ...) fetch it from the hub
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"the tokenizer of CLIP model '{name}' cannot be loaded ({reason}): it comes from "
                            f"the Hugging Face hub; fetch it once where the hub is reachable") from None
    return model, tokenizer


@contextmanager
def _quiet_root_logger():
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_model_name_or_raise(name: str) -> None:
    try:
        check_model_name(name)
    except ValueError as exc:
        raise PipelineError(str(exc)) from None


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


@dataclass
class ClipWorkerConfig:
    """Everything a pretraining worker needs, picklable; built by the driver."""

    model: str
    pretrained: str | None
    model_kwargs: dict[str, Any]
    train: dict[str, Any]  # a ClipTrainConfig as a dict
    data_ref: Any  # ray.ObjectRef of PairData
    image_input: ImageInput
    max_shift: int = 0
    threads: int = 1
    progress: Any = None  # set by `fit`
    label: str = ""


def contrastive_loss(model, loss_fn, images: torch.Tensor, tokens: torch.Tensor,
                     caption_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ClipLoss of a batch of pairs; each distinct caption goes through the text tower once."""
    unique, inverse = caption_ids.unique(return_inverse=True)
    out = model(images, tokens[unique])
    loss = loss_fn(out["image_features"], out["text_features"][inverse], out["logit_scale"])
    return loss, out["logit_scale"]


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
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    top1, top5 = 100 * hits[:, 0].float().mean().item(), 100 * hits.any(1).float().mean().item()
    recalls = [hits[labels == c, 0].float().mean().item() for c in labels.unique()]
    return {"top1": top1, "top1_err": 100 - top1, "top5": top5, "top5_err": 100 - top5,
            "mean_class_recall": 100 * sum(recalls) / len(recalls)}


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


def pretrain_loop_per_worker(config: ClipWorkerConfig) -> None:
    import ray
    import ray.train
    import ray.train.torch
    from open_clip.loss import ClipLoss
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    from pipeline.data.augment import random_hflip, random_translate
    from pipeline.data.batches import TensorBatches
    from pipeline.data.captions import heldout_pairs
    from pipeline.train import Events, all_reduce_sum, load_checkpoint, report, unwrap, worker_setup

    hp, rank, world_size, device, autocast = worker_setup(config.threads, config.train)

    data: PairData = ray.get(config.data_ref)
    batches = TensorBatches(data.train.as_tensors(), rank, world_size, hp.batch_size, device, hp.seed)
    tokens = data.tokens.to(device)
    image_input = config.image_input

    torch.manual_seed(hp.seed)
    model, tokenizer = create_model(config.model, config.pretrained, **config.model_kwargs)
    if not config.pretrained:
        model.logit_scale.data.fill_(math.log(1 / hp.init_temperature))
    model = ray.train.torch.prepare_model(model)
    loss_fn = ClipLoss(local_loss=hp.local_loss, gather_with_grad=True, cache_labels=True,
                       rank=rank, world_size=world_size)
    optimizer = create_optimizer_v2(unwrap(model), opt="adamw", lr=hp.lr, weight_decay=hp.weight_decay)
    steps = batches.steps_per_epoch
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=hp.epochs, warmup_epochs=hp.warmup_epochs,
                                       min_lr=hp.min_lr, step_on_epochs=False, updates_per_epoch=steps)

    start_epoch, history = 0, []
    if (state := load_checkpoint()) is not None:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"], state["history"]
    events = Events(config) if rank == 0 else None
    if events and state is not None:
        events.resumed(start_epoch, history)

    heldout_index, heldout_captions, heldout_groups = heldout_pairs(data.heldout, hp.heldout_pairs, hp.seed)
    budget_s = hp.time_limit_min * 60 if hp.time_limit_min else None
    spent_s = sum(h["epoch_time_s"] for h in history)
    out_of_time = False
    for epoch in range(start_epoch, hp.epochs):
        if out_of_time or (budget_s and spent_s >= budget_s):
            break
        model.train()
        started = time.perf_counter()
        # Seeded per epoch and rank: a restarted worker draws the same captions and shifts again.
        generator = torch.Generator().manual_seed(hp.seed * 100_003 + epoch * 101 + rank)
        loss_sum, seen = torch.zeros((), device=device), 0
        last_event = started
        for step, (images, groups) in enumerate(batches.epoch(epoch)):
            caption_ids = data.train.sample_captions(groups.cpu(), generator, hp.captions_per_group).to(device)
            images = random_translate(images, config.max_shift, generator)
            if data.train.hflip:
                images = random_hflip(images, generator)
            with autocast():
                loss, _ = contrastive_loss(model, loss_fn, image_input(images), tokens, caption_ids)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if hp.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
            optimizer.step()
            if budget_s:  # the cosine schedule runs over the epochs or the time budget, whichever ends first
                time_used = _slowest_clock(spent_s + time.perf_counter() - started, device) / budget_s
                fraction = max(time_used, (epoch * steps + step + 1) / (hp.epochs * steps))
                _set_lr(optimizer, _cosine(hp.lr, hp.min_lr, fraction))
                out_of_time = time_used >= 1
            else:
                scheduler.step_update(epoch * steps + step + 1)
            with torch.no_grad():  # CLIP's cap on the temperature: logit scale at most 100
                unwrap(model).logit_scale.clamp_(0, math.log(100))
            loss_sum += loss.detach() * len(groups)
            seen += len(groups)
            if events and step == 0 and epoch == start_epoch:
                events("first_step", time=time.time(), node=ray.get_runtime_context().get_node_id())
            if events and time.perf_counter() - last_event > 2:
                last_event = time.perf_counter()
                events("step", epoch=epoch + 1, epochs=hp.epochs, step=step + 1, steps=steps,
                          loss=loss_sum.item() / seen, images_per_sec=seen * world_size / (last_event - started))
            if out_of_time:
                break
        train_time = time.perf_counter() - started
        loss_total, seen_total = all_reduce_sum([loss_sum.item(), seen], device)
        metrics = {"epoch": epoch + 1, "train_loss": loss_total / seen_total,
                   "temperature": 1 / unwrap(model).logit_scale.exp().item(),
                   "logit_scale": unwrap(model).logit_scale.exp().item(),
                   "samples_per_sec": seen_total / train_time, "lr": optimizer.param_groups[0]["lr"]}
        if rank == 0:  # held-out evaluation is small: rank 0 alone computes it while the others wait
            clip = unwrap(model)
            image_features = encode_images(clip, data.heldout.images[heldout_index], image_input, device,
                                           autocast=autocast)
            with autocast():
                text_features = encode_texts(clip, tokens[heldout_captions], device)
            metrics.update(retrieval_recall(image_features, text_features, heldout_groups.to(device)))
            if data.classes and data.eval_templates:
                weights = zero_shot_classifier(clip, tokenizer, data.classes, data.eval_templates, device)
                labels = data.heldout.groups[heldout_index].to(device)
                metrics["val_zero_shot_top1"] = classification_metrics(image_features @ weights, labels)["top1"]
        metrics["epoch_time_s"] = time.perf_counter() - started
        spent_s += metrics["epoch_time_s"]
        history.append(metrics)
        report(metrics, {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": history,
                         "model_name": config.model} if rank == 0 else None)
        if events:
            events("epoch", metrics=metrics)


def _slowest_clock(seconds: float, device) -> float:
    """The largest of the workers' clocks: every worker takes the same decision on the same step."""
    import torch.distributed as dist

    value = torch.tensor([seconds], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.item()


def _cosine(lr: float, min_lr: float, fraction: float) -> float:
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0)))


def _set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# --- the benchmark: zero-shot after a time budget, beside the same image tower trained supervised ---

def supervised_baseline(model_name: str, model_kwargs: dict, splits, image_input: ImageInput, epochs: int,
                        batch_size: int, lr: float, weight_decay: float, max_shift: int, time_budget_s: float,
                        threads: int, seed: int = 0) -> dict[str, float]:
    """The CLIP model's image tower plus a linear head, trained with cross-entropy in a plain loop:
    the same epochs, global batch, augmentation and CPU threads, within the same wall-clock budget."""
    from timm.optim import create_optimizer_v2

    from pipeline.data.augment import random_hflip, random_translate
    from pipeline.data.batches import TensorBatches

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    clip_model, _ = create_model(model_name, **model_kwargs)
    tower = clip_model.visual
    with torch.no_grad():
        width = tower(image_input(splits.train.images[:2])).shape[1]
    net = nn.Sequential(tower, nn.Linear(width, splits.train.num_classes))
    batches = TensorBatches(splits.train, 0, 1, batch_size, torch.device("cpu"), seed)
    optimizer = create_optimizer_v2(net, opt="adamw", lr=lr, weight_decay=weight_decay)
    total_steps = epochs * batches.steps_per_epoch
    generator = torch.Generator().manual_seed(seed)
    started, steps_done, out_of_time = time.perf_counter(), 0, False
    for epoch in range(epochs):
        net.train()
        for images, labels in batches.epoch(epoch):
            images = random_translate(images, max_shift, generator)
            if splits.train.hflip:
                images = random_hflip(images, generator)
            loss = F.cross_entropy(net(image_input(images)), labels, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps_done += 1
            # The cosine schedule runs over the epochs or the time budget, whichever ends first.
            fraction = max(steps_done / total_steps, (time.perf_counter() - started) / time_budget_s)
            _set_lr(optimizer, _cosine(lr, 1e-5, fraction))
            if fraction >= 1:
                out_of_time = True
                break
        if out_of_time:
            break
    train_time = time.perf_counter() - started
    net.eval()
    with torch.no_grad():
        logits = torch.cat([net(image_input(chunk)) for chunk in splits.test.images.split(1000)])
    return {**classification_metrics(logits, splits.test.labels), "train_time_s": train_time,
            "epochs": steps_done / batches.steps_per_epoch}


def run_benchmark(spec_path: str, overrides: list[str], budget_min: float, target: float, console) -> bool:
    """Pretrain and evaluate zero-shot as the spec says, then train the same image tower supervised
    with the same budget; print the figures side by side. True when the target is met."""
    from rich.table import Table

    from pipeline import workflow
    from pipeline.config import load_spec

    spec = load_spec(spec_path, overrides)
    spec.stages = ["clip_pretrain", "zero_shot"]
    started = time.perf_counter()
    context = workflow.run(spec, console)
    if context.failures:
        raise PipelineError(f"pretraining failed: {', '.join(context.failures)} (see the run's 'error' tag in MLflow)")
    pretrain = context.outputs["clip_pretrain"]
    if "history" not in pretrain:
        raise PipelineError("the pretraining is cached, so its time is not measured here: rerun with a fresh "
                            "store, or pass --set clip.train.seed=N for a new unit")
    pretrain_s = sum(h["epoch_time_s"] for h in pretrain["history"])
    evaluated = context.outputs["zero_shot"]
    zero_shot = evaluated["zero_shot"]["metrics"]
    probe = evaluated.get("linear_probe", {}).get("metrics")
    console.print(f"pretraining: {len(pretrain['history'])} epochs in {pretrain_s / 60:.1f} min "
                  f"(whole workflow so far {(time.perf_counter() - started) / 60:.1f} min); "
                  "now the same image tower, supervised, with the same budget...")
    clip_config = spec.clip
    image_input = ImageInput.of_model(create_model(clip_config.model, **clip_config.model_kwargs)[0],
                                      context.data.train.mean, context.data.train.std)
    supervised = supervised_baseline(
        clip_config.model, clip_config.model_kwargs, context.data, image_input,
        clip_config.train.epochs, clip_config.train.batch_size * spec.resources.num_workers, clip_config.train.lr,
        clip_config.train.weight_decay, spec.data.max_shift if spec.data.augment else 0, pretrain_s,
        max(1, int(spec.resources.num_workers * spec.resources.cpus_per_worker)), clip_config.train.seed)

    table = Table(title=f"{clip_config.model} on {spec.data.name}: test set, {len(context.data.test):,} images")
    for column in ("", "top-1", "top-5", "mean class recall", "training"):
        table.add_column(column, justify="left" if not column else "right")
    train_note = f"{len(pretrain['history'])} epochs, {pretrain_s / 60:.1f} min"
    table.add_row("zero-shot (contrastive pretraining)", f"{zero_shot['top1']:.2f}%", f"{zero_shot['top5']:.2f}%",
                  f"{zero_shot['mean_class_recall']:.2f}%", train_note)
    if probe:
        table.add_row("linear probe on the same frozen features", f"{probe['top1']:.2f}%", f"{probe['top5']:.2f}%",
                      f"{probe['mean_class_recall']:.2f}%", train_note + " + probe")
    table.add_row("supervised, same image tower", f"{supervised['top1']:.2f}%", f"{supervised['top5']:.2f}%",
                  f"{supervised['mean_class_recall']:.2f}%",
                  f"{supervised['epochs']:.1f} epochs, {supervised['train_time_s'] / 60:.1f} min")
    console.print(table)
    met = zero_shot["top1"] >= target and pretrain_s <= budget_min * 60
    console.print(f"target: zero-shot top-1 >= {target:.0f}% after at most {budget_min:g} min of pretraining: "
                  f"[bold]{'met' if met else 'NOT met'}[/] ({zero_shot['top1']:.2f}% after {pretrain_s / 60:.1f} min)")
    return met
