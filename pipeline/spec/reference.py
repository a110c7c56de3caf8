"""Published results as data: the reference rows a table is compared against, and the spec's `reference` section.

The catalogue of published figures is `models/references.yaml` (named tables of rows); a spec names the table it
reproduces (`reference.table`) or gives its own rows (`reference.rows`), which override the catalogue's for the
same model, data set and metric. Every row is validated here, in the catalogue as in a spec: a source on each,
a known model, metric and data set, a value with a number in it. Pure schema and YAML (no torch)."""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.data.catalog import DATASETS
from pipeline.errors import PipelineError
from pipeline.spec import names
from pipeline.spec.hints import _did_you_mean, _first_error, one_of
from pipeline.spec.sections import Strict

CATALOGUE = Path(__file__).resolve().parents[2] / "models" / "references.yaml"
METRICS = ("top1_err", "top5_err")  # test errors in %, as the leaderboard has them
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_SPREAD = re.compile(r"±\s*(\d+(?:\.\d+)?)")


class Budget(Strict):
    """What a published figure was obtained with; an unset field is unknown (not stated by the source)."""

    epochs: float | None = Field(None, gt=0)
    train_images: int | None = Field(None, ge=1)
    augmentation: str | None = None  # as the source says it, e.g. "none" or "4-pixel padding, random crop, flip"
    crop: str | None = None  # evaluation crop(s), e.g. "single 224 center crop", "10-crop"
    ensemble: bool | None = None  # true: several models' outputs combined; false: a single model
    split: str | None = None  # the evaluation split when it is not the data set's test split, e.g. ILSVRC-2012 test
    notes: str | None = None


class ReferenceRow(Strict):
    model: str
    dataset: str
    metric: str
    value: str  # as printed, e.g. "6.43 (6.61±0.16)": the first number is the figure, "±x" its spread
    source: str = Field(min_length=1)  # paper and table or figure number
    budget: Budget = Field(default_factory=Budget)

    @field_validator("value", mode="before")
    @classmethod
    def _printed(cls, value):
        value = str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        if isinstance(value, str) and not _NUMBER.search(value):
            raise ValueError(f"value '{value}' has no number in it: write the figure as printed, e.g. \"6.43\"")
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        if not names.known("models", name):
            raise ValueError(f"unknown model '{name}'{_did_you_mean(name, names.names('models'))}")
        return name

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        return one_of("metric", metric, METRICS)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        return one_of("data set", name, DATASETS)

    @property
    def number(self) -> float:
        return float(_NUMBER.search(self.value).group())

    @property
    def spread(self) -> float | None:
        """The published standard deviation, where the value prints one (e.g. "6.61±0.16")."""
        found = _SPREAD.search(self.value)
        return float(found.group(1)) if found else None

    @property
    def key(self) -> tuple[str, str, str]:
        return self.model, self.dataset, self.metric


def _rows(raw, where: str, dataset: str | None = None, source: str | None = None) -> list[ReferenceRow]:
    if not isinstance(raw, list):
        raise PipelineError(f"{where}: rows must be a list of rows (model, metric, value, source, budget)")
    rows = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise PipelineError(f"{where} row {i + 1}: a row is a mapping (model, metric, value, source, budget)")
        defaults = {k: v for k, v in (("dataset", dataset), ("source", source)) if v is not None}
        try:
            rows.append(ReferenceRow.model_validate({**defaults, **item}))
        except ValidationError as exc:
            error = _first_error(exc)
            if exc.errors()[0]["type"] == "missing":
                error = f"{'.'.join(map(str, exc.errors()[0]['loc']))} is missing: every row needs model, metric, " \
                        "value and source"
            raise PipelineError(f"{where} row {i + 1} ({item.get('model', '?')}): {error}") from None
    return rows


def load_tables(text: str, where: str) -> dict[str, list[ReferenceRow]]:
    """The named tables of a references file's text, every row validated; a bad row is a one-line error."""
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise PipelineError(f"{where} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(tree, dict) or not isinstance(tree.get("tables"), dict):
        raise PipelineError(f"{where}: expected 'tables:' mapping table names to their rows")
    tables = {}
    for name, table in tree["tables"].items():
        if not isinstance(table, dict):
            raise PipelineError(f"{where}: table '{name}' is a mapping (description, dataset, rows)")
        if unknown := set(table) - {"description", "dataset", "source", "rows"}:
            raise PipelineError(f"{where}: table '{name}' has unknown key '{sorted(unknown)[0]}' (description, "
                                "dataset, source, rows)")
        tables[name] = _rows(table.get("rows"), f"{where} table '{name}'", table.get("dataset"), table.get("source"))
    return tables


@lru_cache(maxsize=1)
def catalogue() -> dict[str, list[ReferenceRow]]:
    """The project's published figures (models/references.yaml), by table name."""
    return load_tables(CATALOGUE.read_text(), str(CATALOGUE.name))


class ReferenceConfig(Strict):
    """The spec's `reference` section: the published table this experiment reproduces, and how close is close."""

    table: str | None = None  # a table of models/references.yaml
    rows: list[ReferenceRow] = Field(default_factory=list)  # own rows; they override the table's
    # A difference up to this many percentage points counts as reproduced (besides our spread over seeds).
    tolerance: float = Field(0.0, ge=0)

    @field_validator("table")
    @classmethod
    def _known_table(cls, name: str | None) -> str | None:
        if name is not None and name not in catalogue():
            known = list(catalogue())
            raise ValueError(f"unknown reference table '{name}'{_did_you_mean(name, known)}; known: {', '.join(known)}"
                             f" (models/references.yaml), or give your own reference.rows")
        return name

    @model_validator(mode="after")
    def _unique(self):
        seen = set()
        for row in self.rows:
            if row.key in seen:
                raise ValueError(f"reference.rows: {row.model} on {row.dataset} ({row.metric}) is given twice")
            seen.add(row.key)
        return self

    def resolved(self) -> list[ReferenceRow]:
        """The table's rows with the spec's own rows in place of those for the same model, data set and metric."""
        own = {row.key: row for row in self.rows}
        table = catalogue()[self.table] if self.table else []
        return [own.pop(row.key, row) for row in table] + list(own.values())
