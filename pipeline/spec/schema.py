"""The experiment spec: one YAML file, validated strictly (unknown keys, wrong types, unknown names)."""
from __future__ import annotations

import os

from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.errors import PipelineError
from pipeline.spec import names
from pipeline.spec.clip import ClipConfig
from pipeline.spec.hints import _did_you_mean, _first_error
from pipeline.spec.options import check_options
from pipeline.spec.reference import ReferenceConfig
from pipeline.spec.sections import (
    DataConfig,
    EnsembleConfig,
    ModelEntry,
    ResourcesConfig,
    Strict,
    TrackingConfig,
    TrainConfig,
)
from pipeline.spec.sweep import SweepConfig

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
    # Train each model once per seed (the train stage; each its own unit, in place of train.seed): the
    # leaderboard shows a model's mean and standard deviation over its seeds.
    seeds: list[int] | None = Field(None, min_length=1)
    # The published table this experiment reproduces, or its own reference rows (`pipeline leaderboard --reference`).
    reference: ReferenceConfig | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _names_as_entries(cls, models):
        if isinstance(models, list):
            return [{"name": m} if isinstance(m, str) else m for m in models]
        return models

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, chosen: list[str]) -> list[str]:
        known = names.stages()
        for name in chosen:
            if name not in known:
                raise ValueError(f"unknown stage '{name}'{_did_you_mean(name, known)}; known: {', '.join(known)}")
        return chosen

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

    @model_validator(mode="after")
    def _seeds_apply(self):
        if self.seeds is None:
            return self
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: {self.seeds} repeats a seed: list each once")
        if swept := [n for n in ("sweep", "retrain") if n in self.stages]:
            raise ValueError(f"seeds: trains each model once per seed in the train stage; stage '{swept[0]}' "
                             "selects one config per model: run the seeds in a spec without the sweep")
        if fixed := [entry.name for entry in self.models if "seed" in entry.train]:
            raise ValueError(f"models[{fixed[0]}].train.seed and seeds: both set the seed: give one")
        return self

    @model_validator(mode="after")
    def _transfer_in_train_only(self):
        for entry in self.models:
            if (entry.finetuned or entry.data) and "sweep" in self.stages and self.swept(entry):
                option = next(k for k in ("init", "freeze", "layer_decay", "head_lr", "data")
                              if getattr(entry, k) not in (None, "scratch", {}))
                raise ValueError(f"models[{entry.name}].{option} applies to the train stage; sweeps and retrains start "
                                 f"from scratch: leave {entry.name} out of sweep.models, or remove {option}")
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
            data = self.data_config(entry)
            try:
                train.batch_plan(self.resources_for(entry).num_workers)
                check_options(data, train)
            except PipelineError as exc:
                raise ValueError(f"models[{entry.id or entry.name}]: {exc}") from None
        self.clip_data()  # clip.data's errors
        if "ensemble" in self.stages and (own := [e.id or e.name for e in self.models if e.data]):
            raise ValueError(f"models[{own[0]}].data: the ensemble stage averages its members' probabilities on one "
                             "test set, and this model has a data set of its own: remove the ensemble stage, or the "
                             "model's data:")
        return self

    @model_validator(mode="after")
    def _unit_names_distinct(self):
        labels = [label for label, _ in self.named_entries()]
        for label in labels:
            if labels.count(label) > 1:
                raise ValueError(f"models: two entries are named '{label}' (an id, or a model's own name): give "
                                 "each entry a distinct id")
        return self

    def named_entries(self) -> list[tuple[str, ModelEntry]]:
        """The distinct model entries, each with a name unique in the spec: its `id`, else the model's, with its
        place in the list when two entries of one model differ (`lenet5`, `lenet5#1`). An entry identical to an
        earlier one is the same unit, listed once."""
        seen_names, seen_entries, named = set(), [], []
        for index, entry in enumerate(self.models):
            if entry in seen_entries:
                continue
            label = entry.id or (entry.name if entry.name not in seen_names else f"{entry.name}#{index}")
            named.append((label, entry))
            seen_names.add(label)
            seen_entries.append(entry)
        return named

    def data_config(self, entry: ModelEntry) -> DataConfig:
        """The data section with the model's own overrides applied (a subset of the classes, labels per class)."""
        if not entry.data:
            return self.data
        try:
            return DataConfig.model_validate({**self.data.model_dump(exclude_unset=True), **entry.data})
        except ValidationError as exc:
            raise ValueError(f"models[{entry.id or entry.name}].data: {_first_error(exc)}") from None

    def clip_data(self) -> DataConfig:
        """The data the CLIP pretraining learns from: the data section with `clip.data` applied."""
        if self.clip is None or not self.clip.data:
            return self.data
        try:
            return DataConfig.model_validate({**self.data.model_dump(exclude_unset=True), **self.clip.data})
        except ValidationError as exc:
            raise ValueError(f"clip.data: {_first_error(exc)}") from None

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
