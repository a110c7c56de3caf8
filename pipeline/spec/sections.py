"""The spec's sections for data, training recipe, model entries, resources, ensembles and tracking."""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from pipeline.data.catalog import DATASETS
from pipeline.errors import PipelineError
from pipeline.spec import names
from pipeline.spec.hints import _did_you_mean, one_of


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    name: str = "fashion_mnist"
    path: str | None = None  # local files (IDX folder, imagefolder, parquet shards) or a hub id
    image_column: str | None = None
    label_column: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    image_size: int | None = Field(None, ge=8)  # resize to this size (default: the data set's own)
    in_chans: int | None = Field(None, ge=1, le=3)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # carved from the training set, seeded
    limit_train: int | None = Field(None, ge=1)
    limit_test: int | None = Field(None, ge=1)
    augment: bool = True
    max_shift: int = Field(2, ge=0)  # random translation in pixels
    streaming: bool | None = None  # default: the data set's own (ImageNet streams)
    synthetic_size: int = Field(2000, ge=10)
    seed: int = 0
    # A subset of the classes (their indices in the data set), kept in this order and relabelled 0..k-1 with
    # their names; the test set keeps the same classes. In-memory data sets only.
    classes: list[StrictInt] | None = Field(None, min_length=2)
    # Training images per class, drawn (seeded by data.seed) from what the validation split leaves: the
    # validation set is the one the full training set gives. In-memory data sets only.
    per_class: StrictInt | None = Field(None, ge=1)
    # Image files a loader cannot read: stop and name them (False), or leave them out and say how many (True).
    # In-memory sets read from files (huggingface) only.
    skip_unreadable: bool = False

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        return one_of("data set", name, DATASETS)

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, classes: list[int] | None) -> list[int] | None:
        if classes is not None:
            if any(c < 0 for c in classes):
                raise ValueError(f"{classes}: class indices start at 0")
            if len(set(classes)) != len(classes):
                raise ValueError(f"{classes} repeats a class: list each once")
        return classes

    @model_validator(mode="after")
    def _subset_fits(self):
        known = DATASETS[self.name].classes
        if self.classes and known and max(self.classes) >= len(known):
            raise ValueError(f"classes: '{self.name}' has classes 0..{len(known) - 1}, not {max(self.classes)}: "
                             "give indices below " + str(len(known)))
        if self.per_class is not None and self.limit_train is not None:
            raise ValueError("per_class and limit_train both cap the training set: give one")
        return self

    @model_validator(mode="after")
    def _source_given(self):
        if self.name == "huggingface" and not self.path:
            raise ValueError("data set 'huggingface' needs data.path: a hub id or a local folder")
        source = DATASETS[self.name].source
        defaults = type(self).model_fields
        # Options that the data set's loader never reads, refused rather than ignored.
        unread = ["synthetic_size"] if source != "synthetic" else ["path"]
        if source != "huggingface":
            unread += ["image_column", "label_column", "train_split", "test_split", "streaming", "skip_unreadable"]
        for name in unread:
            if getattr(self, name) not in (defaults[name].get_default(call_default_factory=True), False):
                raise ValueError(f"data.{name} does not apply to data set '{self.name}' ({source} source): "
                                 f"remove data.{name}")
        return self


class TransformConfig(Strict):
    """timm's train and eval transforms of a streamed data set (`timm.data.create_transform`); unset fields take
    the model's pretrained config (crop_pct, interpolation, mean, std) or timm's defaults."""

    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect-ratio range
    hflip: float = Field(0.5, ge=0, le=1)  # where the data set's labels allow flips
    color_jitter: float = Field(0.0, ge=0)  # brightness/contrast/saturation strength
    auto_augment: str | None = None  # timm's policy string, e.g. rand-m9-mstd0.5 (RandAugment)
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = None
    crop_pct: float | None = Field(None, gt=0, le=1)  # eval: resize to size / crop_pct, center crop to size
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @field_validator("auto_augment")
    @classmethod
    def _policy(cls, policy: str | None) -> str | None:
        if policy is not None and not policy.startswith(("rand", "augmix", "original", "v0", "3a", "trivial")):
            raise ValueError(f"unknown auto_augment policy '{policy}': use timm's strings, e.g. rand-m9-mstd0.5, "
                             "augmix-m5-w4-d2, original, v0, 3a")
        return policy


ADAPTIVE_OPTIMIZERS = ("adam", "adamw", "nadam", "radam", "nadamw", "lamb", "lambw", "adabelief", "adafactor",
                       "lion", "adan", "laprop", "madgrad", "adopt", "adoptw", "mars")


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)  # per worker; with global_batch_size: the most one worker fits per step
    # The batch of one optimizer step over all workers; the per-worker batch is derived from it, with gradient
    # accumulation when global / workers is more than batch_size. Default: batch_size x workers x grad_accum_steps.
    global_batch_size: int | None = Field(None, ge=1)
    grad_accum_steps: int = Field(1, ge=1)  # without global_batch_size: micro-batches per optimizer step
    # lr is the rate at a global batch of lr_base_size and is scaled to the run's global batch (timm's
    # --lr-base/--lr-base-size): linear (SGD), sqrt (adaptive optimizers), auto picks by optimizer. None: lr as given.
    lr_base_size: int | None = Field(None, ge=1)
    lr_scale: Literal["auto", "linear", "sqrt"] = "auto"
    transforms: TransformConfig = Field(default_factory=TransformConfig)  # streamed data sets
    mixup: float = Field(0.0, ge=0)  # Mixup alpha (timm.data.Mixup); 0: off
    cutmix: float = Field(0.0, ge=0)  # CutMix alpha; 0: off
    mixup_prob: float = Field(1.0, ge=0, le=1)  # probability a batch is mixed
    mixup_switch_prob: float = Field(0.5, ge=0, le=1)  # with both on: probability of CutMix instead of Mixup
    ema_decay: float | None = Field(None, gt=0, lt=1)  # EMA of the weights (timm.utils.ModelEmaV3), e.g. 0.9998
    compile: bool = False  # torch.compile the model
    optimizer: str = "adamw"  # any timm.optim name
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    momentum: float = Field(0.9, ge=0, le=1)
    scheduler: str = "cosine"  # any timm.scheduler name
    warmup_epochs: int = Field(1, ge=0)
    min_lr: float = Field(1e-6, ge=0)
    # Step schedules (timm's create_scheduler_v2): step: x decay_rate every decay_epochs; multistep: at milestones.
    decay_epochs: float = Field(90, gt=0)
    decay_milestones: list[int] = Field(default_factory=lambda: [90, 180, 270])
    decay_rate: float = Field(0.1, gt=0, le=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    channels_last: bool | None = None  # default: on GPU
    seed: int = 0
    eval_test_every_epoch: bool = False  # test error per epoch too (training vs test curves), not only at the end

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, name: str) -> str:
        if not names.known("optimizers", name.lower()):
            raise ValueError(f"unknown optimizer '{name}'{_did_you_mean(name, names.names('optimizers'))}")
        return name.lower()

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, name: str) -> str:
        known = ["cosine", "tanh", "step", "multistep", "plateau", "poly", "none"]
        if name not in known:
            raise ValueError(f"unknown scheduler '{name}'; known: {', '.join(known)}")
        return name

    def batch_plan(self, world_size: int) -> dict[str, Any]:
        """Per-worker micro-batch, accumulation steps, global batch and the (scaled) learning rate on
        `world_size` workers. Pure arithmetic, so the driver logs it and the unit key includes it."""
        if self.global_batch_size is None:
            micro, accum = self.batch_size, self.grad_accum_steps
        else:
            per_worker, rest = divmod(self.global_batch_size, world_size)
            if rest or not per_worker:
                raise PipelineError(f"train.global_batch_size {self.global_batch_size} does not split evenly over "
                                    f"{world_size} workers: make it a multiple of {world_size}")
            accum = -(-per_worker // self.batch_size)  # the fewest micro-batches that fit batch_size
            while per_worker % accum:
                accum += 1
            micro = per_worker // accum
        global_batch = micro * accum * world_size
        lr, rule = self.lr, "none"
        if self.lr_base_size is not None:
            rule = self.lr_scale if self.lr_scale != "auto" else \
                ("sqrt" if self.optimizer in ADAPTIVE_OPTIMIZERS else "linear")
            ratio = global_batch / self.lr_base_size
            lr = self.lr * (ratio ** 0.5 if rule == "sqrt" else ratio)
        return {"micro_batch": micro, "grad_accum_steps": accum, "global_batch": global_batch, "lr": lr,
                "lr_scale_rule": rule}


class ModelEntry(Strict):
    name: str
    # A name of its own: its unit (train/ID), its leaderboard row (tag `entry`) and `init: unit:train/ID`.
    id: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)  # extra arguments of timm.create_model
    data: dict[str, Any] = Field(default_factory=dict)  # per-model overrides of the data section
    train: dict[str, Any] = Field(default_factory=dict)  # per-model overrides of the train section
    resources: dict[str, Any] = Field(default_factory=dict)  # per-model overrides of the resources section
    # Where the weights start (pipeline/training/weights.py): scratch; timm (the model's default pretrained tag)
    # or timm:TAG; a weights file (safetensors or a state dict); a LoggedModel (models:/m-ID, models:/NAME@alias);
    # unit:STAGE/NAME, the model another unit of the spec trains (an edge of the workflow's DAG). A
    # clip_image_classifier also starts from a CLIP model, its head the zero-shot classifier:
    # clip:unit:clip_pretrain/MODEL (the spec's pretraining unit) or clip:OPEN_CLIP_NAME[.TAG].
    init: str = "scratch"
    freeze: Literal["backbone"] | int | None = None  # backbone: the classifier alone trains; N: the first N groups
    layer_decay: float | None = Field(None, gt=0, le=1)  # timm's layer-wise lr decay (create_optimizer_v2)
    head_lr: float | None = Field(None, gt=0)  # the classifier's learning rate, in the units of train.lr
    # WiSE-FT after fine-tuning from a clip init: each a, the weights (1-a) zero-shot + a fine-tuned evaluated.
    wise_ft: list[float] | None = Field(None, min_length=1)

    @field_validator("init")
    @classmethod
    def _init_source(cls, init: str) -> str:
        kind, value = init_source(init)
        if kind == "unit" and "/" not in value:
            raise ValueError(f"init '{init}': name a unit as unit:STAGE/NAME, e.g. unit:train/lenet5")
        if kind == "model" and not value.strip("/"):
            raise ValueError(f"init '{init}': give a model, e.g. models:/m-<id> or models:/NAME@champion")
        if kind == "clip":
            if value.startswith("unit:"):
                if not value.startswith("unit:clip_pretrain/") or not value[len("unit:clip_pretrain/"):]:
                    raise ValueError(f"init '{init}': name the CLIP pretraining unit, e.g. "
                                     "clip:unit:clip_pretrain/clip-rn-32")
            elif not names.known("clip_models", value.split(".", 1)[0]):
                name = value.split(".", 1)[0]
                raise ValueError(f"init '{init}': unknown CLIP model '{name}'"
                                 f"{_did_you_mean(name, names.names('clip_models'))}: give clip:unit:clip_pretrain/"
                                 "MODEL or clip:OPEN_CLIP_NAME[.TAG]")
        return init

    @field_validator("wise_ft")
    @classmethod
    def _mixing_weights(cls, alphas: list[float] | None) -> list[float] | None:
        if alphas is not None and (any(not 0 <= a <= 1 for a in alphas)
                                   or len({round(a, 2) for a in alphas}) != len(alphas)):
            raise ValueError(f"wise_ft {alphas}: give mixing weights a between 0 and 1, distinct to two decimals "
                             "(a: the fine-tuned model's share)")
        return alphas

    @model_validator(mode="after")
    def _clip_init(self):
        kind = init_source(self.init)[0]
        if kind == "clip" and self.name != CLIP_CLASSIFIER:
            raise ValueError(f"init '{self.init}' starts a {CLIP_CLASSIFIER} (a CLIP image tower and a head), not "
                             f"a {self.name}: set name: {CLIP_CLASSIFIER}")
        if self.wise_ft is not None and kind != "clip":
            raise ValueError(f"wise_ft mixes the fine-tuned weights with the zero-shot ones of a clip init: give "
                             f"init: clip:... or remove wise_ft (init is '{self.init}')")
        return self

    @field_validator("id")
    @classmethod
    def _id_spelling(cls, id: str | None) -> str | None:
        if id is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", id):
            raise ValueError(f"id '{id}': use letters, digits and - _ . (it names the unit, train/ID)")
        return id

    @field_validator("freeze", mode="before")
    @classmethod
    def _freeze(cls, freeze):
        if isinstance(freeze, bool) or isinstance(freeze, int) and freeze < 1:
            raise ValueError(f"freeze {freeze!r}: give backbone, or the number of leading layer groups (1 or more)")
        return freeze

    @property
    def finetuned(self) -> bool:
        """Whether the entry sets any option of transfer (its weights' source, freezing, layer decay, head lr)."""
        return self.init != "scratch" or any(v is not None for v in (self.freeze, self.layer_decay, self.head_lr))

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        if not names.known("models", name):
            raise ValueError(f"unknown model '{name}'{_did_you_mean(name, names.names('models'))} "
                             f"(`pipeline models` lists the zoo; any timm model name works)")
        return name


# The model an `init: clip:...` starts (models/clip_classifier.py).
CLIP_CLASSIFIER = "clip_image_classifier"


def init_source(init: str) -> tuple[str, str]:
    """(kind, value) of a model entry's `init`: scratch, timm (value: the tag, maybe empty), model (value: the
    models:/ URI), unit (value: STAGE/NAME), clip (value: unit:clip_pretrain/MODEL or an open_clip name with
    its tag) or file (value: its path)."""
    if init == "scratch":
        return "scratch", ""
    if init.startswith("clip:"):
        return "clip", init[5:]
    if init == "timm" or init.startswith("timm:"):
        return "timm", init[5:]
    if init.startswith("models:/"):
        return "model", init
    if init.startswith("unit:"):
        return "unit", init[5:]
    return "file", init


class ResourcesConfig(Strict):
    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0)
    threads_per_worker: int | None = Field(None, ge=1)  # torch CPU threads; default: cpus_per_worker
    max_failures: int = Field(2, ge=0)  # worker restarts from the latest checkpoint
    # On a cluster that can grow, how long a unit waits for nodes its workers fit on before it fails.
    max_wait_s: float = Field(600, gt=0)

    @property
    def threads(self) -> int:
        return self.threads_per_worker or max(1, int(self.cpus_per_worker))


class EnsembleConfig(Strict):
    """The ensemble stage: the test-set probabilities of the top_k leaderboard runs, or of named members, averaged."""

    top_k: int | None = Field(None, ge=2)  # default 3 when no members are named
    members: list[str] = Field(default_factory=list)  # model names or entry ids (their best run) or run ids
    name: str | None = None  # its model name on the leaderboard; default ensemble(top3) or ensemble(a+b)

    @model_validator(mode="after")
    def _one_selection(self):
        if self.members and self.top_k is not None:
            raise ValueError("give ensemble.top_k or ensemble.members, not both")
        if len(self.members) == 1:
            raise ValueError("ensemble.members needs at least two models or run ids")
        return self


class TrackingConfig(Strict):
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working folder
    experiment: str | None = None  # default: the data set's name
    system_metrics: bool = True  # each node's CPU, memory (and GPU) use in the training runs
