"""The sweep section: Ray Tune's search space, search, early stopping and the retrain budget."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.spec.hints import _did_you_mean, _first_error
from pipeline.spec.sections import ResourcesConfig, Strict, TrainConfig

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
        known = [name for name in TrainConfig.model_fields if name != "transforms"]
        for name, param in space.items():
            if name == "transforms":  # a stream's transforms are resolved once per sweep, not per trial
                raise ValueError("sweep.space cannot search train.transforms: set them in train.transforms")
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
