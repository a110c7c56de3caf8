"""ILSVRC-style leaderboard from MLflow: the best run per model, ranked by test top-1 error."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from pipeline.errors import PipelineError

# timm's results-file columns first, then ours.
COLUMNS = ["model", "top1", "top1_err", "top5", "top5_err", "param_count",
           "gmacs", "train_samples_per_sec", "epochs", "wall_time_s", "run_id"]
FORMATS = ("table", "markdown", "csv")
# Runs that compete on the leaderboard (sweep trials do not: their best config is retrained).
LEADERBOARD_STAGES = ("train", "retrain", "zero_shot", "linear_probe", "ensemble")


@dataclass
class Leaderboard:
    experiment: str
    rows: list[dict]
    notes: list[str]


def _row(run) -> dict:
    metrics = run.data.metrics
    end = run.info.end_time or run.info.start_time
    return {
        "model": run.data.tags["model"],
        **{key: metrics.get(key) for key in ("top1", "top1_err", "top5", "top5_err", "param_count", "gmacs",
                                             "train_samples_per_sec")},
        "epochs": int(metrics["epochs"]) if "epochs" in metrics else None,
        "wall_time_s": (end - run.info.start_time) / 1000,
        "run_id": run.info.run_id,
        "_start": run.info.start_time,
    }


def best_per_model(rows: list[dict]) -> list[dict]:
    """Keep each model's best run; ties go to the lower top-5 error, then the earlier run."""
    best: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: (r["top1_err"], r["top5_err"], r["_start"])):
        best.setdefault(row["model"], row)
    return sorted(best.values(), key=lambda r: (r["top1_err"], r["top5_err"], r["_start"], r["model"]))


def build(tracking_uri: str, experiment: str) -> Leaderboard:
    from mlflow import MlflowClient

    from pipeline.tracking import sqlite_path

    db = sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        raise PipelineError(f"no tracking store at {db}: run an experiment first (pipeline run experiments/quickstart.yaml)"
                            " or set --tracking-uri / MLFLOW_TRACKING_URI")
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(e.name for e in client.search_experiments() if e.name != "Default") or "none yet"
        raise PipelineError(f"no experiment '{experiment}' in {tracking_uri} (experiments: {names}): "
                            f"pass --experiment NAME")
    runs = client.search_runs([found.experiment_id], max_results=50000)
    rows, notes = [], []
    for run in runs:
        if "model" not in run.data.tags or run.data.tags.get("stage") not in LEADERBOARD_STAGES:
            continue
        if "top1_err" not in run.data.metrics or "top5_err" not in run.data.metrics:
            notes.append(f"run {run.info.run_id} ({run.data.tags['model']}, {run.info.status.lower()}) "
                         f"has no test metrics: left out")
            continue
        rows.append(_row(run))
    if not rows and not notes:
        raise PipelineError(f"experiment '{experiment}' has no training runs yet: run a spec that trains on it")
    return Leaderboard(experiment, best_per_model(rows), notes)


def _cell(key: str, value) -> str:
    if value is None:
        return ""
    if key in ("top1", "top1_err", "top5", "top5_err"):
        return f"{value:.2f}"
    if key == "param_count":
        return f"{value:.3f}"
    if key == "gmacs":
        return f"{value:.4f}"
    if key in ("train_samples_per_sec", "wall_time_s"):
        return f"{value:.1f}"
    return str(value)


def to_csv(board: Leaderboard) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in board.rows:
        writer.writerow(["" if row[c] is None else row[c] for c in COLUMNS])
    return out.getvalue()


def to_markdown(board: Leaderboard) -> str:
    header = ["rank", *COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, row in enumerate(board.rows, 1):
        lines.append("| " + " | ".join([str(rank), *(_cell(c, row[c]) for c in COLUMNS)]) + " |")
    return "\n".join(lines) + "\n"


def to_rich_table(board: Leaderboard):
    from rich.table import Table

    table = Table(title=f"Leaderboard: {board.experiment} (best run per model, by test top-1 error)")
    table.add_column("#", justify="right")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("model", "run_id") else "right")
    for rank, row in enumerate(board.rows, 1):
        table.add_row(str(rank), *(_cell(c, row[c]) for c in COLUMNS))
    return table


def show(board: Leaderboard, fmt: str, console) -> None:
    if fmt not in FORMATS:
        raise PipelineError(f"unknown format '{fmt}': use one of {', '.join(FORMATS)}")
    if fmt == "table":
        console.print(to_rich_table(board))
        for note in board.notes:
            console.print(f"[yellow]note:[/] {note}")
    else:
        print(to_csv(board) if fmt == "csv" else to_markdown(board), end="")
