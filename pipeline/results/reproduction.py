"""Published figures beside ours, with a verdict per row: reproduced, not reproduced, or not comparable.

A reference row (pipeline/spec/reference.py) is compared with the leaderboard row of its model (chosen by
validation, averaged over its seeds): the difference ours - published, and
- not comparable, with the reason, when the budgets differ: another data set or evaluation split, an ensemble
  against a single model, other epochs, fewer training images, augmentation against none, or no such metric;
- reproduced when the difference is within the spread (our standard deviation over seeds, or the published one)
  or within the spec's tolerance (`reference.tolerance`, percentage points);
- not reproduced otherwise."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from pipeline.errors import PipelineError
from pipeline.spec.reference import ReferenceConfig, ReferenceRow, catalogue

REPRODUCED, NOT_REPRODUCED, NOT_COMPARABLE = "reproduced", "not reproduced", "not comparable"
VERDICTS = ("Verdict: reproduced when ours (mean over seeds) is within our spread, the published spread or the spec's "
            "tolerance of the published figure; not comparable when the budgets differ (the reason says how).")
COLUMNS = ["model", "dataset", "metric", "published", "ours", "n", "difference", "verdict", "reason",
           "published budget", "our budget", "source"]


@dataclass
class Comparison:
    reference: ReferenceRow
    ours: dict | None  # the leaderboard row, None when the model has no run here
    verdict: str
    reason: str

    @property
    def mean(self) -> float | None:
        return None if self.ours is None else self.ours.get(self.reference.metric)

    @property
    def std(self) -> float | None:
        return None if self.ours is None else self.ours.get(f"{self.reference.metric}_std")

    @property
    def runs(self) -> int:
        return 0 if self.ours is None else self.ours.get("runs", 1)

    @property
    def difference(self) -> float | None:
        return None if self.mean is None else self.mean - self.reference.number


def published_budget(row: ReferenceRow) -> str:
    b = row.budget
    parts = [f"{b.epochs:g} epochs" if b.epochs else "", f"{b.train_images:,} train images" if b.train_images else "",
             f"augmentation: {b.augmentation}" if b.augmentation else "", f"crop: {b.crop}" if b.crop else "",
             {True: "ensemble", False: "single model", None: ""}[b.ensemble], b.split or "", b.notes or ""]
    return "; ".join(p for p in parts if p) or "not stated"


def our_budget(ours: dict) -> str:
    parts = [f"{ours['epochs']} epochs" if ours.get("epochs") else "",
             f"at most {ours['limit_train']:,} train images" if ours.get("limit_train") else "",
             {True: "augmentation", False: "no augmentation", None: ""}[ours.get("augment")],
             "ensemble" if ours.get("kind") == "ensemble" else "single model", ours.get("dataset") or ""]
    return "; ".join(p for p in parts if p)


def _budget_difference(ref: ReferenceRow, ours: dict) -> str | None:
    """Why the two figures were not obtained under the same budget, or None when nothing stated differs."""
    b = ref.budget
    if ours.get("dataset") and ours["dataset"] != ref.dataset:
        return f"data set differs: published on {ref.dataset}, ours on {ours['dataset']}"
    if b.split:
        return f"split differs: published on {b.split}, ours on {ref.dataset}'s test split"
    if b.ensemble is not None and b.ensemble != (ours.get("kind") == "ensemble"):
        return "published: " + ("an ensemble, ours a single model" if b.ensemble else "a single model, ours an ensemble")
    if b.epochs and ours.get("epochs") and float(ours["epochs"]) != b.epochs:
        return f"epochs differ: published {b.epochs:g}, ours {ours['epochs']}"
    if b.train_images and ours.get("limit_train") and ours["limit_train"] < b.train_images:
        return f"training images differ: published {b.train_images:,}, ours at most {ours['limit_train']:,}"
    if b.augmentation and ours.get("augment") is not None and (b.augmentation.lower() != "none") != ours["augment"]:
        return f"augmentation differs: published {b.augmentation}, ours {'on' if ours['augment'] else 'none'}"
    return None


def verdict(ref: ReferenceRow, ours: dict | None, tolerance: float = 0.0) -> Comparison:
    """The comparison of one reference row with our leaderboard row for its model."""
    if ours is None:
        return Comparison(ref, None, NOT_COMPARABLE, "no run of this model here")
    if ours.get(ref.metric) is None:
        return Comparison(ref, ours, NOT_COMPARABLE, f"our run has no {ref.metric}")
    compared = Comparison(ref, ours, NOT_COMPARABLE, "")
    if reason := _budget_difference(ref, ours):
        compared.reason = reason
        return compared
    spreads = {"our spread": compared.std or 0.0, "the published spread": ref.spread or 0.0, "tolerance": tolerance}
    name, allowed = max(spreads.items(), key=lambda item: item[1])
    within = abs(compared.difference) <= allowed
    compared.verdict = REPRODUCED if within else NOT_REPRODUCED
    compared.reason = (f"difference {compared.difference:+.2f} {'within' if within else 'outside'} "
                       + (f"{name} ±{allowed:.2f}" if allowed else "an exact match (no spread: one run, no tolerance)"))
    return compared


def applicable(config: ReferenceConfig | None, board_rows: list[dict]) -> list[ReferenceRow]:
    """The reference rows a leaderboard is compared against: the spec's (its table and own rows), else every
    catalogue row of a model on the leaderboard."""
    if config is not None and (config.table or config.rows):
        return config.resolved()
    models = {r["model"] for r in board_rows}
    return [row for table in catalogue().values() for row in table if row.model in models]


def compare(board_rows: list[dict], config: ReferenceConfig | None) -> list[Comparison]:
    ours = {r["model"]: r for r in board_rows if r.get("kind") != "reference"}
    tolerance = config.tolerance if config is not None else 0.0
    return [verdict(ref, ours.get(ref.model), tolerance) for ref in applicable(config, board_rows)]


def spec_reference(client, experiment_id: str) -> ReferenceConfig | None:
    """The `reference` section of the spec the experiment's latest workflow run recorded (spec.yaml), if any."""
    import tempfile
    from pathlib import Path

    import yaml
    from pydantic import ValidationError

    from pipeline.spec.hints import _first_error

    runs = client.search_runs([experiment_id], "tags.stage = 'workflow'", order_by=["attributes.start_time DESC"],
                              max_results=1)
    if not runs:
        return None
    with tempfile.TemporaryDirectory() as directory:
        try:
            text = Path(client.download_artifacts(runs[0].info.run_id, "spec.yaml", directory)).read_text()
        except Exception:  # noqa: BLE001  (a run without its spec: no reference section to read)
            return None
    section = (yaml.safe_load(text) or {}).get("reference")
    try:
        return None if section is None else ReferenceConfig.model_validate(section)
    except ValidationError as exc:
        raise PipelineError(f"the reference section of workflow run {runs[0].info.run_id}'s spec: "
                            f"{_first_error(exc)}") from None


def load_config(path: str) -> ReferenceConfig:
    """A spec file's reference section (`pipeline leaderboard --spec`); an empty one when it has none."""
    from pipeline.spec.loading import load_spec

    return load_spec(path).reference or ReferenceConfig()


def _cell(compared: Comparison, column: str) -> str:
    ref = compared.reference
    mean, std = compared.mean, compared.std
    return {
        "model": ref.model, "dataset": ref.dataset, "metric": ref.metric, "published": ref.value,
        "ours": "" if mean is None else (f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"),
        "n": str(compared.runs) if compared.ours else "", "verdict": compared.verdict, "reason": compared.reason,
        "difference": "" if compared.difference is None else f"{compared.difference:+.2f}",
        "published budget": published_budget(ref), "our budget": our_budget(compared.ours) if compared.ours else "",
        "source": ref.source,
    }[column]


def cells(rows: list[Comparison]) -> list[list[str]]:
    return [[_cell(c, column) for column in COLUMNS] for c in rows]


def to_markdown(rows: list[Comparison]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(text.replace("|", "/") for text in line) + " |" for line in cells(rows)]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[Comparison]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(cells(rows))
    return out.getvalue()


def show(rows: list[Comparison], fmt: str, console, title: str) -> None:
    if not rows:
        console.print("reference: no published figure for these models (models/references.yaml); a spec can give "
                      "its own (reference.rows)")
        return
    if fmt == "markdown":
        print(to_markdown(rows), end="")
    elif fmt == "csv":
        print(to_csv(rows), end="")
    else:
        from rich.table import Table

        table = Table(title=title)
        for column in COLUMNS:
            table.add_column(column, justify="right" if column in ("ours", "n", "difference", "published") else "left")
        for line in cells(rows):
            table.add_row(*line)
        console.print(table)
