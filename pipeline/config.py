"""The experiment spec: one YAML file, validated strictly (unknown keys, wrong types, unknown names)."""
from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline import names
from pipeline.data.catalog import DATASETS
from pipeline.errors import PipelineError

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

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        if name not in DATASETS:
            raise ValueError(f"unknown data set '{name}'{_did_you_mean(name, DATASETS)}; known: {', '.join(DATASETS)}")
        return name

    @model_validator(mode="after")
    def _source_given(self):
        if self.name == "huggingface" and not self.path:
            raise ValueError("data set 'huggingface' needs data.path: a hub id or a local folder")
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
    kwargs: dict[str, Any] = Field(default_factory=dict)  # extra arguments of timm.create_model
    train: dict[str, Any] = Field(default_factory=dict)  # per-model overrides of the train section
    resources: dict[str, Any] = Field(default_factory=dict)  # per-model overrides of the resources section

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        if not names.known("models", name):
            raise ValueError(f"unknown model '{name}'{_did_you_mean(name, names.names('models'))} "
                             f"(`pipeline models` lists the zoo; any timm model name works)")
        return name


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


SEARCH_TYPES = ("choice", "grid", "uniform", "loguniform", "randint")


class SearchParam(Strict):
    """One dimension of a sweep: choice/grid over `values`, or uniform/loguniform/randint in [low, high)."""

    type: str
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None

    @field_validator("type")
    @classmethod
    def _known_type(cls, name: str) -> str:
        if name not in SEARCH_TYPES:
            raise ValueError(f"unknown search-space type '{name}'{_did_you_mean(name, SEARCH_TYPES)}; "
                             f"known: {', '.join(SEARCH_TYPES)}")
        return name

    @model_validator(mode="after")
    def _arguments(self):
        if self.type in ("choice", "grid"):
            if not self.values or self.low is not None or self.high is not None:
                raise ValueError(f"type '{self.type}' takes values: [a, b, ...] (and no low/high)")
        else:
            if self.low is None or self.high is None or self.values is not None:
                raise ValueError(f"type '{self.type}' takes low: and high: (and no values)")
            if not self.low < self.high:
                raise ValueError(f"type '{self.type}' needs low < high (got {self.low} and {self.high})")
            if self.type == "loguniform" and self.low <= 0:
                raise ValueError(f"type 'loguniform' needs low > 0 (got {self.low})")
        return self

    def candidates(self) -> list[Any]:
        """Values that stand for the whole range when checking it against the training config."""
        if self.values is not None:
            return list(self.values)
        if self.type == "randint":  # Tune's randint excludes high
            return [int(self.low), int(self.high) - 1]
        return [self.low, self.high]


class SweepConfig(Strict):
    """Ray Tune over the train section; selection on a validation metric only."""

    space: dict[str, SearchParam] = Field(min_length=1)  # train field -> search dimension
    num_samples: int = Field(4, ge=1)  # for grid: repeats of the whole grid
    search: Literal["random", "grid", "optuna"] = "random"
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1)  # ASHA: epochs before a trial can be stopped
    reduction_factor: int = Field(2, ge=2)  # ASHA: keep the best 1/reduction_factor at each rung
    metric: Literal["val_loss", "val_top1", "val_top5"] = "val_loss"
    mode: Literal["min", "max"] | None = None  # default: min for val_loss, max for accuracies
    max_concurrent_trials: int = Field(2, ge=1)
    # Per trial; the trial's own driver takes no CPU, so the trials' workers can fill the cluster.
    resources: ResourcesConfig = Field(default_factory=lambda: ResourcesConfig(num_workers=1, max_failures=0))
    retrain_epochs: int | None = Field(None, ge=1)  # retrain stage; default: twice the sweep's epochs
    models: list[str] | None = None  # names from the spec's models: to sweep (and retrain); default: every model

    @field_validator("space")
    @classmethod
    def _train_fields(cls, space: dict[str, SearchParam]) -> dict[str, SearchParam]:
        known = list(TrainConfig.model_fields)
        for name, param in space.items():
            if name not in known:
                raise ValueError(f"'{name}' is not a field of the train section"
                                 f"{_did_you_mean(name, known)}; known: {', '.join(known)}")
            for value in param.candidates():
                try:
                    TrainConfig.model_validate({name: value})
                except ValidationError as exc:
                    raise ValueError(f"{_first_error(exc)} (a value of the search space)") from None
        return space

    @model_validator(mode="after")
    def _search_fits_space(self):
        if self.mode is None:
            self.mode = "min" if self.metric == "val_loss" else "max"
        if self.search == "grid" and (ranges := [n for n, p in self.space.items() if p.type not in ("choice", "grid")]):
            raise ValueError(f"search 'grid' needs discrete values, but {', '.join(ranges)} is a range: "
                             "use type choice/grid, or search random/optuna")
        if self.search == "optuna" and (grids := [n for n, p in self.space.items() if p.type == "grid"]):
            raise ValueError(f"search 'optuna' samples, it cannot enumerate a grid ({', '.join(grids)}): "
                             "use type choice, or search grid/random")
        return self


class ClipCaptionsConfig(Strict):
    """Image-text pairs: captions made from the data set's class labels, or an image-caption data set."""

    path: str | None = None  # a `datasets` image-caption set (hub id or local folder); None: from class labels
    image_column: str = "image"
    text_column: str = "text"  # strings, or lists of strings (several captions per image)
    split: str = "train"
    limit: int | None = Field(None, ge=1)
    descriptions: dict[str, list[str]] = Field(default_factory=dict)  # class name -> other names (adds to built-ins)
    train_templates: list[str] | None = None  # default: pipeline.data.captions.TRAIN_TEMPLATES
    eval_templates: list[str] | None = None  # zero-shot prompts; default: EVAL_TEMPLATES (none used in training)

    @field_validator("train_templates", "eval_templates")
    @classmethod
    def _placeholders(cls, templates):
        from pipeline.data.captions import check_templates

        return None if templates is None else check_templates(templates)

    def templates(self) -> tuple[list[str], list[str]]:
        from pipeline.data.captions import EVAL_TEMPLATES, TRAIN_TEMPLATES

        return self.train_templates or list(TRAIN_TEMPLATES), self.eval_templates or list(EVAL_TEMPLATES)


class ClipTrainConfig(Strict):
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(256, ge=2)  # per worker; the contrastive negatives are the global batch
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_epochs: int = Field(0, ge=0)
    min_lr: float = Field(1e-5, ge=0)
    init_temperature: float = Field(0.07, gt=0, le=1)  # learnable (logit_scale = 1 / temperature, capped at 100)
    local_loss: bool = False  # ClipLoss: each worker scores its own rows against the global batch
    captions_per_group: int | None = Field(2, ge=1)  # distinct captions a class draws per step; None: one per image
    # Train for at most this long (held-out evaluation included), the cosine schedule running over the
    # epochs or the time, whichever ends first (warm-up is skipped).
    time_limit_min: float | None = Field(None, gt=0)
    heldout_pairs: int = Field(1000, ge=10)  # retrieval metrics per epoch
    grad_clip: float | None = Field(None, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU
    seed: int = 0


class ZeroShotConfig(Strict):
    # "pretrain": the clip_pretrain stage's model (this run's, else the experiment's latest finished one
    # in MLflow); or any open_clip model name, with `pretrained` weights.
    model: str = "pretrain"
    pretrained: str | None = None
    linear_probe: bool = True
    probe_train_images: int | None = Field(20000, ge=10)  # training images whose features train the probe
    probe_steps: int = Field(300, ge=1)
    probe_lr: float = Field(0.01, gt=0)

    @field_validator("model")
    @classmethod
    def _known(cls, name: str) -> str:
        return name if name == "pretrain" else check_clip_model(name)


class ClipConfig(Strict):
    """Contrastive image-text pretraining (clip_pretrain) and zero-shot evaluation (zero_shot)."""

    model: str = "clip-rn-32"  # a small model of pipeline.clip.SMALL_MODELS or any open_clip model name
    pretrained: str | None = None  # an open_clip pretrained tag (openai, laion2b_...) or a weights file
    model_kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to open_clip.create_model
    captions: ClipCaptionsConfig = Field(default_factory=ClipCaptionsConfig)
    train: ClipTrainConfig = Field(default_factory=ClipTrainConfig)
    zero_shot: ZeroShotConfig = Field(default_factory=ZeroShotConfig)

    @field_validator("model")
    @classmethod
    def _known(cls, name: str) -> str:
        return check_clip_model(name)


class EnsembleConfig(Strict):
    """The ensemble stage: the test-set probabilities of the top_k leaderboard runs, or of named members, averaged."""

    top_k: int | None = Field(None, ge=2)  # default 3 when no members are named
    members: list[str] = Field(default_factory=list)  # model names (their best run) or run ids
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


# Stages that run without a models: list.
MODEL_FREE_STAGES = ("clip_pretrain", "zero_shot", "leaderboard")


class Spec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    data: DataConfig = Field(default_factory=DataConfig)
    models: list[ModelEntry] = Field(default_factory=list)  # required by every stage but the CLIP ones
    train: TrainConfig = Field(default_factory=TrainConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    # Ray checkpoints: a local path, a shared file system or s3://; $PIPELINE_STORAGE_PATH on a cluster.
    storage_path: str = Field(default_factory=lambda: os.environ.get("PIPELINE_STORAGE_PATH", ".pipeline/checkpoints"))
    stages: list[str] = Field(default_factory=lambda: ["train", "leaderboard"], min_length=1)
    # Units training at once; default: as many as the cluster's resources fit.
    max_concurrent_units: int | None = Field(None, ge=1)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)  # the ensemble stage
    clip: ClipConfig | None = None  # the clip_pretrain and zero_shot stages
    sweep: SweepConfig | None = None  # the sweep and retrain stages

    @field_validator("models", mode="before")
    @classmethod
    def _names_as_entries(cls, models):
        if isinstance(models, list):
            return [{"name": m} if isinstance(m, str) else m for m in models]
        return models

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, names: list[str]) -> list[str]:
        from pipeline import stages

        known = stages.available()
        for name in names:
            if name not in known:
                raise ValueError(f"unknown stage '{name}'{_did_you_mean(name, known)}; known: {', '.join(known)}")
        return names

    @model_validator(mode="after")
    def _sweep_given(self):
        if self.sweep is None and (needs := [n for n in ("sweep", "retrain") if n in self.stages]):
            raise ValueError(f"stage '{needs[0]}' needs a sweep: section (space:, num_samples:, ...)")
        if "retrain" in self.stages and "sweep" not in self.stages:
            raise ValueError("stage 'retrain' retrains the sweep's best config, and no stage produces one: "
                             "add stage 'sweep'")
        names = [entry.name for entry in self.models]
        for name in (self.sweep.models or []) if self.sweep else []:
            if name not in names:
                raise ValueError(f"sweep.models: '{name}' is not in models:{_did_you_mean(name, names)}; "
                                 f"models: {', '.join(names)}")
        return self

    def swept(self, entry: ModelEntry) -> bool:
        """Whether the sweep (and retrain) stages take this model entry."""
        return self.sweep is not None and (self.sweep.models is None or entry.name in self.sweep.models)

    @model_validator(mode="after")
    def _models_and_clip_given(self):
        if not self.models and (needs := [n for n in self.stages if n not in MODEL_FREE_STAGES]):
            raise ValueError(f"stage '{needs[0]}' needs at least one model in models:")
        if self.clip is None and (needs := [n for n in ("clip_pretrain", "zero_shot") if n in self.stages]):
            raise ValueError(f"stage '{needs[0]}' needs a clip: section (model:, captions:, train:, zero_shot:)")
        return self

    @model_validator(mode="after")
    def _overrides_valid(self):
        for entry in self.models:
            train = self.train_config(entry)
            try:
                train.batch_plan(self.resources_for(entry).num_workers)
            except PipelineError as exc:
                raise ValueError(f"models[{entry.name}]: {exc}") from None
        return self

    def train_config(self, entry: ModelEntry) -> TrainConfig:
        """The train section with the model's own overrides applied."""
        try:
            return TrainConfig.model_validate({**self.train.model_dump(), **entry.train})
        except ValidationError as exc:
            raise ValueError(f"models[{entry.name}].train: {_first_error(exc)}") from None

    def resources_for(self, entry: ModelEntry) -> ResourcesConfig:
        """The resources section with the model's own overrides applied (wrn28_10 on 4 GPUs beside LeNet on one CPU)."""
        try:
            return ResourcesConfig.model_validate({**self.resources.model_dump(), **entry.resources})
        except ValidationError as exc:
            raise ValueError(f"models[{entry.name}].resources: {_first_error(exc)}") from None

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.data.name.replace("_", "-")


def check_clip_model(name: str) -> str:
    """A ValueError naming close matches when `name` is no open_clip model (hf-hub:/local-dir: pass)."""
    if name.startswith(("hf-hub:", "local-dir:")) or names.known("clip_models", name):
        return name
    small = sorted(n for n in names.names("clip_models") if n.startswith("clip-"))
    raise ValueError(f"unknown CLIP model '{name}'{_did_you_mean(name, names.names('clip_models'))}: use one of the "
                     f"small models {', '.join(small)} or any open_clip model name (open_clip.list_models())")


def _did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown key '{where}': remove it or check its spelling"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("value_error", "assertion_error"):
        return f"{where}: {message}" if where else message
    return f"{where}: {message} (got {error.get('input')!r})"


def _unshared(node: Any) -> Any:
    """A copy in which no two places share a mapping or list: YAML anchors (`train: *vgg`) alias one object,
    and an override of one model's field must not change the others (copy.deepcopy keeps the aliasing)."""
    if isinstance(node, dict):
        return {key: _unshared(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_unshared(value) for value in node]
    return node


def _entry_name(entry: Any) -> str:
    return str(entry.get("name") if isinstance(entry, dict) else entry)


def _matching(names: list[str], pattern: str, what: str) -> list[int]:
    """Indices of the names that a shell-style pattern matches; a one-line error listing them when none does."""
    indices = [i for i, name in enumerate(names) if fnmatch.fnmatchcase(name, pattern)]
    if not indices:
        raise PipelineError(f"{what}'{pattern}' matches no model of the spec; its models: {', '.join(names)}")
    return indices


def _set_path(node: Any, parts: list[str], value: Any) -> None:
    """Apply one `a.b.c=value` override. A list item is addressed by its index (models.0.lr) or, in the models
    list, by a model name or shell-style pattern (models.vit*.train.lr) that sets every model it matches."""
    head, *rest = parts
    if isinstance(node, list):
        try:
            indices = [range(len(node))[int(head)]]
        except ValueError:
            indices = _matching([_entry_name(entry) for entry in node], head, "")
        for index in indices:
            if not rest:
                node[index] = value
                continue
            if isinstance(node[index], str):  # a model given by name only: models.0.train.lr=...
                node[index] = {"name": node[index]}
            _set_path(node[index], rest, value)
    elif not rest:
        node[head] = value
    else:
        _set_path(node.setdefault(head, {}), rest, value)


def _select_models(tree: dict, only: Sequence[str], skip: Sequence[str]) -> None:
    """Keep the spec's models matching an `only` pattern (all when none) and none matching a `skip` pattern;
    each keeps its own recipe. Patterns are shell-style (`vgg*_bn_cifar`) and must each match a model."""
    entries = tree.get("models")
    if not isinstance(entries, list):
        return  # validation names the problem
    names = [_entry_name(entry) for entry in entries]
    kept = set(range(len(entries))) if not only else {i for p in only for i in _matching(names, p, "--model ")}
    kept -= {i for p in skip for i in _matching(names, p, "--skip ")}
    tree["models"] = [entry for i, entry in enumerate(entries) if i in kept]
    if not tree["models"]:
        raise PipelineError("--model/--skip leave no model to run: loosen them")


def _overridden(tree: dict, overrides: Sequence[str], only: Sequence[str], skip: Sequence[str]) -> dict:
    """A copy of the tree with the `--set` overrides applied and the models selected."""
    tree = _unshared(tree)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise PipelineError(f"override '{override}' is not KEY=VALUE: write e.g. --set train.epochs=1")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise PipelineError(f"override '{override}': the value {raw!r} is not valid YAML "
                                f"({getattr(exc, 'problem', None) or exc}): write a number, true/false, [a, b], "
                                "{key: value} or a quoted string") from None
        try:
            _set_path(tree, key.strip().split("."), value)
        except PipelineError as exc:
            raise PipelineError(f"override '{override}': {exc}") from None
        except (ValueError, IndexError, TypeError, AttributeError):
            raise PipelineError(f"override '{override}': '{key}' does not name a field of the spec") from None
    if only or skip:
        _select_models(tree, only, skip)
    return tree


def _culprit(tree: dict, overrides: Sequence[str], only: Sequence[str], skip: Sequence[str], error: str) -> str | None:
    """The first override from which on the spec fails with `error` (None when the file alone does)."""
    for count in range(len(overrides) + 1):
        try:
            Spec.model_validate(_overridden(tree, overrides[:count], only, skip))
        except ValidationError as exc:
            if _first_error(exc) == error:
                return overrides[count - 1] if count else None
        except PipelineError:
            pass  # --model/--skip patterns that only match once the overrides are in
    return None


def parse_spec(tree: Any, source: str = "spec", overrides: Sequence[str] = (),
               only: Sequence[str] = (), skip: Sequence[str] = ()) -> Spec:
    """Validate a spec tree after `--set` overrides (models by index in the file, name or pattern) and
    model selection (--model / --skip). A validation error names the override that brought it in."""
    if not isinstance(tree, dict):
        raise PipelineError(f"{source}: an experiment spec must be a YAML mapping (name:, data:, models:, ...)")
    try:
        return Spec.model_validate(_overridden(tree, overrides, only, skip))
    except ValidationError as exc:
        error = _first_error(exc)
    culprit = _culprit(tree, overrides, only, skip, error) if overrides else None
    raise PipelineError(f"override '{culprit}': {error}" if culprit else f"{source}: {error}")


def load_spec(path: str | Path, overrides: Sequence[str] = (), only: Sequence[str] = (),
              skip: Sequence[str] = ()) -> Spec:
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.y*ml"))
        raise PipelineError(f"spec {path} is a folder, not a file: give the path of an experiment YAML"
                            + (f" in it ({', '.join(found[:5])})" if found else " (see experiments/)"))
    if not path.is_file():
        raise PipelineError(f"spec file {path} not found: give the path of an experiment YAML (see experiments/)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PipelineError(f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}): "
                            "give a YAML file, saved as UTF-8") from None
    except OSError as exc:
        raise PipelineError(f"cannot read spec file {path}: {exc.strerror or exc}") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise PipelineError(f"{path}: malformed YAML{where}: {problem}") from None
    return parse_spec(tree, str(path), overrides, only, skip)
