"""The driver-side recipe of a training run: model entries, identity, data shape and the worker config."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from pipeline.data.fingerprint import data_fingerprint
from pipeline.engine.context import RunContext
from pipeline.engine.keys import model_code
from pipeline.errors import PipelineError
from pipeline.spec.options import check_options
from pipeline.spec.schema import Spec
from pipeline.spec.sections import DataConfig, ModelEntry, TrainConfig
from pipeline.training.config import (
    Init,
    Mixing,
    Optimization,
    Recipe,
    Stream,
    TensorAugment,
    WorkerConfig,
)

# The code a trained network depends on (a unit's key hashes it, with its model's module): the driver's
# recipe and unit, the harness, the worker loop and its evaluation, and the data path.
TRAINING_CODE = ("pipeline/training/clip_transfer.py", "pipeline/training/config.py",
                 "pipeline/training/evaluation.py", "pipeline/training/finetune.py",
                 "pipeline/training/harness.py",
                 "pipeline/training/learning_rate.py", "pipeline/training/loop.py", "pipeline/training/mixing.py",
                 "pipeline/training/recipe.py", "pipeline/training/relay.py", "pipeline/training/unit.py",
                 "pipeline/training/weights.py",
                 "pipeline/scoring.py", "pipeline/data")


def training_code(model: str, *more: str) -> tuple[str, ...]:
    """What a unit training `model` is keyed on: the training code, the model's source and `more`."""
    return (*TRAINING_CODE, *model_code(model), *more)


def finetune_options(entry: ModelEntry) -> dict[str, Any]:
    """The entry's fine-tuning options that are set (freeze, layer_decay, head_lr, wise_ft)."""
    return {k: v for k in ("freeze", "layer_decay", "head_lr", "wise_ft") if (v := getattr(entry, k)) is not None}


def training_identity(spec: Spec, entry: ModelEntry, train: TrainConfig, data: DataConfig,
                      init: Init | None = None) -> dict[str, Any]:
    """What decides a training run's result: model, recipe, data, world size and the global batch; and when
    fine-tuning, its options and the digest of the weights it starts from."""
    world_size = spec.resources_for(entry).num_workers
    identity = {"model": entry.name, "kwargs": entry.kwargs, "train": train.model_dump(mode="json"),
                "data": data_fingerprint(data), "world_size": world_size,
                "global_batch": train.batch_plan(world_size)["global_batch"]}
    if options := finetune_options(entry):
        identity["finetune"] = options
    if entry.id is not None:  # its own unit and leaderboard row, whatever else it shares with another entry
        identity["entry"] = entry.id
    if init is not None and init.source != "scratch":
        identity["init"] = init.digest
    return identity


def validation_summary(history: list[dict[str, float]]) -> dict[str, float]:
    """Selection metrics of a run, from its per-epoch history: the last epoch's validation error (the
    weights it keeps) and its best epoch's, under keys of their own; none without a validation split."""
    scored = [h for h in history if "val_top1" in h]
    if not scored:
        return {}
    best = min(scored, key=lambda h: (100 - h["val_top1"], h.get("val_loss", 0.0)))
    return {"val_top1_err": 100 - scored[-1]["val_top1"], "best_val_top1_err": 100 - best["val_top1"],
            "best_epoch": best["epoch"]}


def paper_year(model: str) -> str:
    from models.catalogue import FAMILIES, family_of

    family = family_of(model)
    return next((str(f.year) for f in FAMILIES if f.name == family), "")


def accelerator(resources) -> str:
    """What the workers train on: 'cpu', or the GPU's name as seen from a worker (the driver may have none)."""
    if resources.gpus_per_worker <= 0:
        return "cpu"
    import ray

    @ray.remote(num_cpus=0, num_gpus=resources.gpus_per_worker)
    def gpu_name() -> str:
        import torch

        return torch.cuda.get_device_name(0)

    return ray.get(gpu_name.remote(), timeout=300)


def data_shape(context: RunContext, data: DataConfig) -> dict[str, Any]:
    """Channels, image size, classes and normalization of a data set, and how workers read it."""
    from pipeline.data import dataset_info, normalization

    info = dataset_info(data)
    splits = context.splits(data)
    if splits is not None:
        return {"in_chans": splits.train.in_chans, "image_size": splits.train.image_size, "classes": splits.classes,
                "mean": splits.train.mean, "std": splits.train.std, "hflip": splits.train.hflip,
                "stream": {}, "test_labels": splits.test.labels}
    in_chans = data.in_chans or info.in_chans or 3
    image_size = data.image_size or info.image_size or 224
    stream = stream_args(data, info)
    mean, std = normalization(data, in_chans)
    return {"in_chans": in_chans, "image_size": image_size, "classes": stream["classes"], "mean": mean, "std": std,
            "hflip": info.hflip, "stream": stream, "test_labels": None}


def resolve_recipe(train: TrainConfig, world_size: int) -> Recipe:
    """The train section as a worker uses it on `world_size` workers: micro-batch, accumulation and the
    scaled lr from `TrainConfig.batch_plan`, every other option as given. Sweep trials call it too."""
    plan = train.batch_plan(world_size)
    optim = Optimization(
        optimizer=train.optimizer, lr=plan["lr"], weight_decay=train.weight_decay, momentum=train.momentum,
        scheduler=train.scheduler, warmup_epochs=train.warmup_epochs, min_lr=train.min_lr,
        decay_epochs=train.decay_epochs, decay_milestones=tuple(train.decay_milestones),
        decay_rate=train.decay_rate, grad_clip=train.grad_clip, micro_batch=plan["micro_batch"],
        grad_accum_steps=plan["grad_accum_steps"], global_batch=plan["global_batch"])
    mixing = Mixing(mixup=train.mixup, cutmix=train.cutmix, prob=train.mixup_prob,
                    switch_prob=train.mixup_switch_prob) if train.mixup or train.cutmix else None
    return Recipe(epochs=train.epochs, seed=train.seed, optim=optim, mixing=mixing,
                  label_smoothing=train.label_smoothing, ema_decay=train.ema_decay, precision=train.precision,
                  channels_last=train.channels_last, compile=train.compile,
                  eval_test_every_epoch=train.eval_test_every_epoch)


def worker_config(context: RunContext, entry: ModelEntry, train: TrainConfig, data: DataConfig, threads: int,
                  label: str, evaluate_test: bool = True, resources=None,
                  outputs: dict[str, dict] | None = None, source: str | None = None) -> tuple[WorkerConfig, dict[str, Any]]:
    """The one place a WorkerConfig is built (train, retrain, sweep trials and the benchmarks); `resources`
    are the run's (default: the spec's for the entry), which fix the world size of the global batch; `outputs`
    of the units it needs hold an `init: unit:...` source (the unit `source`, where it is not the one named)."""
    from pipeline.training.weights import resolve_init

    check_options(data, train)
    shape = data_shape(context, data)
    init = resolve_init(context, entry, shape, outputs, source)
    shape["init"] = init
    if resources is None:
        resources = context.spec.resources_for(entry) if entry in context.spec.models else context.spec.resources
    mean, std, stream = tuple(shape["mean"]), tuple(shape["std"]), None
    augment = TensorAugment(hflip=bool(shape["hflip"] and data.augment), max_shift=data.max_shift if data.augment else 0)
    if shape["stream"]:  # timm's transforms for this model, run by the stream's Ray Data tasks
        from pipeline.data.transforms import resolve_transforms

        transforms = resolve_transforms(entry.name, train.transforms.model_dump(), shape["image_size"],
                                        shape["in_chans"], mean, std, shape["hflip"])
        if not data.augment:  # training images get the evaluation transform: no random crop, flip or colour
            transforms = {**transforms, "train": transforms["eval"]}
        mean, std = transforms["mean"], transforms["std"]
        train_cpus = resources.num_workers * resources.cpus_per_worker
        check_decode_cpus(train_cpus)
        val_every = max(2, round(1 / data.val_fraction)) if data.val_fraction else 0
        stream = Stream(train=shape["stream"]["train"], test=shape["stream"]["test"], transforms=transforms,
                        val_every=val_every, train_cpus=train_cpus)
        augment = TensorAugment(hflip=False, max_shift=0)
    config = WorkerConfig(
        model=entry.name, model_kwargs=entry.kwargs, recipe=finetune_recipe(entry, train, resources.num_workers),
        num_classes=len(shape["classes"]), in_chans=shape["in_chans"], mean=tuple(mean), std=tuple(std),
        augment=augment, threads=threads, splits_ref=context.splits_ref(data), stream=stream, label=label,
        evaluate_test=evaluate_test, system_metrics=context.spec.tracking.system_metrics,
        init=None if init.source == "scratch" else replace(init, weights=_shared(init.weights)))
    return config, shape


def finetune_recipe(entry: ModelEntry, train: TrainConfig, world_size: int) -> Recipe:
    """The recipe with the entry's fine-tuning options: frozen layers, layer decay, the head's lr."""
    recipe = resolve_recipe(train, world_size)
    head_scale = entry.head_lr / train.lr if entry.head_lr is not None else None
    return replace(recipe, freeze=entry.freeze,
                   optim=replace(recipe.optim, layer_decay=entry.layer_decay, head_lr_scale=head_scale))


def _shared(weights):
    """Initial weights in Ray's object store for the workers (as they are where no Ray runs: `pipeline status`)."""
    import ray

    return ray.put(weights) if ray.is_initialized() else weights


def check_decode_cpus(train_cpus: float) -> None:
    """A streamed set is decoded by Ray Data tasks of 1 CPU each: with every CPU of the cluster taken by the
    training workers they would never run, and the workers would wait for data forever."""
    import ray

    if not ray.is_initialized():
        return
    total = ray.cluster_resources().get("CPU", 0)
    if total - train_cpus < 1:
        raise PipelineError(f"a streamed data set needs CPUs to decode images beside the training workers, but the "
                            f"workers take {train_cpus:g} of the cluster's {total:g} CPUs: lower "
                            "resources.cpus_per_worker or num_workers, or add nodes")


def stream_args(data: DataConfig, info) -> dict[str, Any]:
    """The streamed splits, described once by the driver (files, pieces, row counts; the first image decoded)."""
    from pipeline.data.stream import describe

    source = data.path or info.hub_id
    columns = (data.image_column or info.image_column, data.label_column or info.label_column)
    train = describe(source, data.train_split, *columns)
    test = describe(source, data.test_split, *columns)
    if not (train.classes or info.classes):
        raise PipelineError(f"data set '{source}' has no class names on its label column '{columns[1]}': "
                            "use a ClassLabel column")
    return {"train": train, "test": test, "classes": list(train.classes or info.classes)}
