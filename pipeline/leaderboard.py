"""ILSVRC-style leaderboard from MLflow: the best run per model, ranked by test top-1 error.

The ranking reports; it selects nothing. What picks runs (ensemble members, the registered champion) reads
their validation error through `by_validation`, never the test figures shown here.
"""
from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass, field

from pipeline.errors import PipelineError

# timm's results-file columns first, then ours.
COLUMNS = ["model", "top1", "top1_err", "top5", "top5_err", "param_count", "gmacs", "train_samples_per_sec",
           "family", "year", "accelerator", "epochs", "seed", "wall_time_s", "run_id"]
FORMATS = ("table", "markdown", "csv")
# Runs that compete on the leaderboard (sweep trials do not: their best config is retrained).
LEADERBOARD_STAGES = ("train", "retrain", "zero_shot", "linear_probe", "ensemble")
METRICS = ("top1", "top1_err", "top5", "top5_err", "param_count", "gmacs", "train_samples_per_sec")
# Validation metrics of a run (the train stage's), and of a retrained sweep winner (its sweep's best trial's).
VALIDATION = ("val_top1_err", "best_val_top1_err", "best_epoch", "val_loss", "sweep_val_top1_err")
SELECTION_KINDS = ("train", "retrain")  # runs of one network, which selection chooses among
FOOTNOTE = ("Ranked by test top-1 error, for reporting only: nothing is selected on it. Ensemble members and the "
            "registered champion are chosen by validation error (val_top1_err; a retrained sweep winner by its "
            "sweep's best, sweep_val_top1_err).")
# The default address of `pipeline ui`, where runs of an embedded store are browsed.
LOCAL_UI = "http://127.0.0.1:5000"


@dataclass
class Leaderboard:
    experiment: str
    rows: list[dict]
    notes: list[str]
    experiment_id: str = ""
    ui_url: str = LOCAL_UI
    references: list[dict] = field(default_factory=list)  # published results shown beside ours
    runs: list[dict] = field(default_factory=list)  # every leaderboard run, not only each model's best

    @property
    def columns(self) -> list[str]:
        """COLUMNS, plus `kind` when not every row is a plain training run, `diverged` when a run did and
        `sweep` when a row has one."""
        columns = list(COLUMNS)
        if any(r.get("val_top1_err") is not None for r in self.rows):
            columns.insert(columns.index("top5_err") + 1, "val_top1_err")
        if any(r.get("diverged") for r in self.rows):
            columns.insert(1, "diverged")
        if self.references or any(r["kind"] != "train" for r in self.rows):
            columns.insert(1, "kind")
        if any(r.get("sweep_run_id") for r in self.rows):
            columns.append("sweep")
        return columns

    def run_url(self, run_id: str) -> str:
        return f"{self.ui_url}/#/experiments/{self.experiment_id}/runs/{run_id}"


def ui_url(tracking_uri: str) -> str:
    """Where the MLflow UI of a tracking store is: the server itself (no credentials in the link), or
    `pipeline ui` for a local store."""
    from pipeline.tracking import split_userinfo

    if not tracking_uri.startswith(("http://", "https://")):
        return LOCAL_UI
    return split_userinfo(tracking_uri)[0].rstrip("/")


def _number(text: str | None, kind=float):
    try:
        return kind(text) if text not in (None, "") else None
    except ValueError:
        return None


def _row(run) -> dict:
    metrics, tags, params = run.data.metrics, run.data.tags, run.data.params
    end = run.info.end_time or run.info.start_time
    return {
        "model": tags["model"],
        "kind": tags.get("stage", "train"),
        "diverged": metrics.get("diverged", 0) >= 1,  # logged by training when the loss is NaN or infinite
        **{key: metrics.get(key) for key in METRICS},
        **{key: metrics.get(key) for key in VALIDATION},
        "family": tags.get("family", ""),
        "year": _number(tags.get("paper_year"), int),
        "accelerator": tags.get("accelerator", ""),
        "epochs": int(metrics["epochs"]) if "epochs" in metrics else None,
        "seed": _number(params.get("seed"), int),
        "wall_time_s": (end - run.info.start_time) / 1000,
        "run_id": run.info.run_id,
        "sweep_run_id": tags.get("sweep_run_id"),
        "members": tags.get("members", ""),
        "dataset": tags.get("dataset", ""),
        "_start": run.info.start_time,
    }


def best_per_model(rows: list[dict]) -> list[dict]:
    """Keep each model's best run; ties go to the lower top-5 error, then the earlier run. A diverged run
    (its errors are no result) ranks below every run that did not diverge."""
    def key(r):
        return r.get("diverged", False), r["top1_err"], r["top5_err"], r["_start"]

    best: dict[str, dict] = {}
    for row in sorted(rows, key=key):
        best.setdefault(row["model"], row)
    return sorted(best.values(), key=lambda r: (*key(r), r["model"]))


def selection_error(row: dict) -> float | None:
    """The validation top-1 error a run is selected by: its last epoch's (the weights it keeps), or for a
    retrained sweep winner, which trains without a validation split, its sweep's best trial's."""
    return row.get("val_top1_err") if row.get("val_top1_err") is not None else row.get("sweep_val_top1_err")


def by_validation(board: "Leaderboard", kinds=SELECTION_KINDS) -> tuple[list[dict], list[str]]:
    """Each model's run with the lowest validation error, ranked by it (ties: validation loss, then the
    earlier run); test metrics play no part. Notes on the models passed over (diverged, or no validation
    metric)."""
    eligible, notes, passed = [], [], {}
    for row in board.runs or board.rows:
        if row["kind"] not in kinds:
            continue
        if row.get("diverged"):
            passed.setdefault(row["model"], f"{row['model']} (run {row['run_id']}) diverged: passed over")
        elif selection_error(row) is None:
            passed.setdefault(row["model"], f"{row['model']} (run {row['run_id']}) has no validation metric "
                                            "(trained without a validation split): passed over")
        else:
            eligible.append(row)
    ranked = sorted(eligible, key=lambda r: (selection_error(r), r.get("val_loss") or 0.0, r["_start"]))
    best: dict[str, dict] = {}
    for row in ranked:
        best.setdefault(row["model"], row)
    notes = [note for model, note in passed.items() if model not in best]
    return list(best.values()), notes


def ilsvrc_references() -> list[dict]:
    """The lecture's ILSVRC winners (top-5 test error of the winning entry), from the model catalogue."""
    from models.catalogue import FAMILIES

    winners = sorted((f for f in FAMILIES if f.ilsvrc_top5_err is not None), key=lambda f: f.year)
    return [{"model": f"{f.name} (ILSVRC entry)", "kind": "reference", "family": f.name, "year": f.year,
             "top5_err": f.ilsvrc_top5_err, "top5": 100 - f.ilsvrc_top5_err} for f in winners]


def _filter(family: str | None, tags: dict[str, str]) -> str:
    def quoted(value: str) -> str:
        return "'" + value.replace("'", "\\'") + "'"

    clauses = [f"tags.family = {quoted(family)}"] if family else []
    clauses += [f"tags.`{key}` = {quoted(value)}" for key, value in tags.items()]
    return " and ".join(clauses)


def parse_tag_filters(items: list[str] | None) -> dict[str, str]:
    """`--tag key=value` options as a dict; a malformed one is a one-line error."""
    tags = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PipelineError(f"tag filter '{item}' is not KEY=VALUE: write e.g. --tag dataset=fashion_mnist")
        tags[key.strip()] = value.strip()
    return tags


def build(tracking_uri: str, experiment: str, family: str | None = None,
          tags: dict[str, str] | None = None, references: bool | None = None) -> Leaderboard:
    """The experiment's leaderboard; `references` adds the ILSVRC winners (default: for ImageNet)."""
    from mlflow import MlflowClient

    from pipeline.tracking import redact, sqlite_path

    db = sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        raise PipelineError(f"no tracking store at {db}: run an experiment first (pipeline run experiments/quickstart.yaml)"
                            " or set --tracking-uri / MLFLOW_TRACKING_URI")
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(e.name for e in client.search_experiments() if e.name != "Default") or "none yet"
        raise PipelineError(f"no experiment '{experiment}' in {redact(tracking_uri)} (experiments: {names}): "
                            f"pass --experiment NAME")
    runs = client.search_runs([found.experiment_id], _filter(family, tags or {}), max_results=50000)
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
        if family or tags:
            wanted = ", ".join([f"family={family}"] * bool(family) + [f"{k}={v}" for k, v in (tags or {}).items()])
            raise PipelineError(f"experiment '{experiment}' has no leaderboard runs with {wanted}: "
                                "check the filter (tags are shown in the MLflow UI)")
        raise PipelineError(f"experiment '{experiment}' has no training runs yet: run a spec that trains on it")
    if references is None:
        references = "imagenet" in experiment.lower() or any(r["dataset"].startswith("imagenet") for r in rows)
    best = best_per_model(rows)
    notes += [f"{r['model']} (run {r['run_id']}) diverged (its loss became NaN or infinite): its errors are no "
              "result and it is never an ensemble member or the champion; lower train.lr or set train.grad_clip"
              for r in best if r["diverged"]]
    return Leaderboard(experiment, best, notes, found.experiment_id, ui_url(tracking_uri),
                       ilsvrc_references() if references else [], rows)


def _cell(key: str, value) -> str:
    if value is None:
        return ""
    if key in ("top1", "top1_err", "top5", "top5_err", "val_top1_err"):
        return f"{value:.2f}"
    if key == "param_count":
        return f"{value:.3f}"
    if key == "gmacs":
        return f"{value:.4f}"
    if key in ("train_samples_per_sec", "wall_time_s"):
        return f"{value:.1f}"
    return str(value)


def _ranked(board: Leaderboard) -> list[tuple[str, dict]]:
    """(rank, row): our runs ranked, then the reference rows marked `ref`."""
    return [(str(rank), row) for rank, row in enumerate(board.rows, 1)] + [("ref", r) for r in board.references]


def _value(board: Leaderboard, row: dict, column: str):
    if column == "diverged":
        return "yes" if row.get("diverged") else None
    if column == "sweep":
        return board.run_url(row["sweep_run_id"]) if row.get("sweep_run_id") else None
    return row.get(column)


def to_csv(board: Leaderboard) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = board.columns
    writer.writerow(columns)
    for _, row in _ranked(board):
        writer.writerow(["" if (v := _value(board, row, c)) is None else v for c in columns])
    return out.getvalue()


def to_markdown(board: Leaderboard, links: bool = False) -> str:
    """A markdown table; with `links`, run ids (and sweeps) link to the MLflow UI."""
    columns = board.columns
    lines = ["| " + " | ".join(["rank", *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    for rank, row in _ranked(board):
        cells = []
        for column in columns:
            text = _cell(column, _value(board, row, column))
            if links and text and column == "run_id":
                text = f"[{text[:12]}]({board.run_url(text)})"
            elif links and text and column == "sweep":
                text = f"[sweep]({text})"
            cells.append(text)
        lines.append("| " + " | ".join([rank, *cells]) + " |")
    return "\n".join(lines) + "\n"


def to_rich_table(board: Leaderboard):
    from rich.table import Table

    table = Table(title=f"Leaderboard: {board.experiment} (best run per model, by test top-1 error)")
    table.add_column("#", justify="right")
    columns = board.columns
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "kind", "diverged", "family", "accelerator",
                                                              "run_id", "sweep") else "right")
    for rank, row in _ranked(board):
        cells = [_cell(c, _value(board, row, c)) for c in columns]
        table.add_row(rank, *cells, style="dim" if rank == "ref" else None)
    return table


def show(board: Leaderboard, fmt: str, console) -> None:
    if fmt not in FORMATS:
        raise PipelineError(f"unknown format '{fmt}': use one of {', '.join(FORMATS)}")
    if fmt == "table":
        console.print(to_rich_table(board))
        console.print(FOOTNOTE)
        if board.references:
            console.print("ref: the ILSVRC-winning entries of these families (top-5 test error on ImageNet; "
                          "mostly ensembles), from models/catalogue.py")
        for note in board.notes:
            console.print(f"[yellow]note:[/] {note}")
    elif fmt == "markdown":
        notes = "".join(f"- note: {note}\n" for note in board.notes)  # a markdown list below the table
        print(to_markdown(board) + "\n" + FOOTNOTE + "\n" + ("\n" + notes if notes else ""), end="")
    else:  # the notes go to stderr, so that the CSV stays one table
        print(to_csv(board), end="")
        for note in board.notes:
            print(f"note: {note}", file=sys.stderr)


# --- two experiments side by side -------------------------------------------------------------

COMPARED = ("top1_err", "top5_err", "param_count", "gmacs")


def compare(left: Leaderboard, right: Leaderboard) -> list[dict]:
    """One row per model of either leaderboard: its best metrics in both and the change (right - left),
    ordered by the left experiment's ranking, then the right's."""
    by_model = {}
    for side, board in (("a", left), ("b", right)):
        for row in board.rows:
            by_model.setdefault(row["model"], {"model": row["model"]})[side] = row
    order: dict[str, int] = {}
    for row in left.rows + right.rows:
        order.setdefault(row["model"], len(order))
    merged = []
    for model in sorted(by_model, key=lambda m: order[m]):
        entry = by_model[model]
        a, b = entry.get("a") or {}, entry.get("b") or {}
        line = {"model": model}
        for key in COMPARED:
            line[f"{key}:a"], line[f"{key}:b"] = a.get(key), b.get(key)
        line["delta_top1_err"] = (b["top1_err"] - a["top1_err"]) if a and b else None
        merged.append(line)
    return merged


def show_comparison(left: Leaderboard, right: Leaderboard, fmt: str, console) -> None:
    if fmt not in FORMATS:
        raise PipelineError(f"unknown format '{fmt}': use one of {', '.join(FORMATS)}")
    rows = compare(left, right)
    keys = ["model", *(f"{k}:{s}" for k in COMPARED for s in "ab"), "delta_top1_err"]
    names = {"a": left.experiment, "b": right.experiment}
    header = [k if ":" not in k else f"{k.split(':')[0]} ({names[k.split(':')[1]]})" for k in keys]
    header[-1] = "delta top1_err"
    cells = [[_cell(k.split(":")[0], row[k]) if k != "delta_top1_err" or row[k] is None
              else f"{row[k]:+.2f}" for k in keys] for row in rows]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(["" if row[k] is None else row[k] for k in keys] for row in rows)
        print(out.getvalue(), end="")
    elif fmt == "markdown":
        print("\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                         *("| " + " | ".join(line) + " |" for line in cells)]))
    else:
        from rich.table import Table

        table = Table(title=f"{left.experiment} vs {right.experiment} (best run per model; "
                            f"delta = {right.experiment} - {left.experiment})")
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i == 0 else "right")
        for line in cells:
            table.add_row(*line)
        console.print(table)
        for note in left.notes + right.notes:
            console.print(f"[yellow]note:[/] {note}")


# --- the ranking where users look: the experiment's and the workflow run's descriptions ---------------

NOTE_TAG = "mlflow.note.content"  # the description the MLflow UI shows (markdown), on an experiment or a run
KIND_TAG = "mlflow.experimentKind"  # the UI opens an experiment of this kind in its model-training view
MODEL_TRAINING = "custom_model_development"


# The UI keeps its GenAI / model-training switch in the browser (default GenAI) unless the URL names it.
TRAINING_VIEW = "workflowType=machine_learning"


def models_url(board: Leaderboard) -> str:
    """The experiment's Models view, in the UI's model-training mode."""
    return f"{board.ui_url}/#/experiments/{board.experiment_id}/models?{TRAINING_VIEW}"


def model_url(board: Leaderboard, model_id: str) -> str:
    return f"{board.ui_url}/#/experiments/{board.experiment_id}/models/{model_id}"


def headline(board: Leaderboard) -> str:
    """The description's first line (all the UI shows until it is expanded): the leader and its error."""
    sound = [r for r in board.rows if not r.get("diverged")]
    if not sound:
        return f"**Leaderboard of {board.experiment}**: no result yet"
    leader = sound[0]
    return (f"**Leader: {leader['model']}, top-1 error {leader['top1_err']:.2f}%** (test) of {len(board.rows)} "
            f"model(s) on {board.experiment}")


def description(board: Leaderboard, model_ids: dict[str, str] | None = None) -> str:
    """The leaderboard as the markdown of a description: the headline, then a table whose rows link to
    their run and model, then the footnote on selection."""
    model_ids = model_ids or {}
    lines = [headline(board), "", "| # | model | kind | top-1 err | top-5 err | val top-1 err | params (M) | "
             "run | model |", "|---|---|---|---|---|---|---|---|---|"]
    for rank, row in enumerate(board.rows, 1):
        model_id = model_ids.get(row["run_id"])
        cells = [str(rank), row["model"] + (" (diverged)" if row.get("diverged") else ""), row["kind"],
                 _cell("top1_err", row["top1_err"]), _cell("top5_err", row["top5_err"]),
                 _cell("val_top1_err", selection_error(row)), _cell("param_count", row.get("param_count")),
                 f"[{row['run_id'][:8]}]({board.run_url(row['run_id'])})",
                 f"[{model_id}]({model_url(board, model_id)})" if model_id else ""]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines += ["", FOOTNOTE, "", f"All models: [Models view]({models_url(board)})"]
    return "\n".join(lines) + "\n"


def publish(tracking_uri: str, experiment: str, run_id: str | None = None, client=None) -> Leaderboard:
    """Write the leaderboard into the experiment's description (and the run's, given one), and mark the
    experiment as model training for the UI. Callers serialize: one writer at a time."""
    from mlflow import MlflowClient

    from pipeline.logged_models import models_by_run

    board = build(tracking_uri, experiment)
    client = client or MlflowClient(tracking_uri)
    model_ids = models_by_run(client, board.experiment_id)
    text = description(board, model_ids)
    client.set_experiment_tag(board.experiment_id, NOTE_TAG, text)
    client.set_experiment_tag(board.experiment_id, KIND_TAG, MODEL_TRAINING)
    if run_id:
        client.set_tag(run_id, NOTE_TAG, text)
    return board


def ui_links(tracking_uri: str, base_url: str, experiment: str | None = None) -> list[str]:
    """Where to look in the MLflow UI: each experiment's Models view and its latest workflow run (one
    experiment, or every one of the store)."""
    from mlflow import MlflowClient

    from pipeline.tracking import sqlite_path

    if (db := sqlite_path(tracking_uri)) is not None and not db.exists():
        return []
    client = MlflowClient(tracking_uri)
    found = [client.get_experiment_by_name(experiment)] if experiment else client.search_experiments()
    lines = []
    for exp in found:
        if exp is None or exp.name == "Default":
            continue
        base = f"{base_url.rstrip('/')}/#/experiments/{exp.experiment_id}"
        lines.append(f"{exp.name}: models {base}/models?{TRAINING_VIEW}")
        latest = client.search_runs([exp.experiment_id], "tags.stage = 'workflow'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
        if latest:
            lines.append(f"{exp.name}: latest workflow run {base}/runs/{latest[0].info.run_id}?{TRAINING_VIEW}")
    return lines
