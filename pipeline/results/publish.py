"""The leaderboard in the MLflow UI: the experiment's description, the UI's links to models and runs."""
from __future__ import annotations

from pipeline.results import reproduction
from pipeline.results.formats import _cell
from pipeline.results.leaderboard import (
    FOOTNOTE,
    Leaderboard,
    build,
    selection_error,
)
from pipeline.tracking.queries import find_runs

# The default address of `pipeline ui`, where runs of an embedded store are browsed.


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


def publish_leaderboard(tracking_uri: str, experiment: str, run_id: str | None = None, client=None) -> Leaderboard:
    """Write the leaderboard into the experiment's description (and the run's, given one), and mark the
    experiment as model training for the UI. Callers serialize: one writer at a time."""
    from mlflow import MlflowClient

    from pipeline.tracking.logged_models import models_by_run

    board = build(tracking_uri, experiment)
    client = client or MlflowClient(tracking_uri)
    model_ids = models_by_run(client, board.experiment_id)
    text = description(board, model_ids)
    config = reproduction.spec_reference(client, board.experiment_id)  # the table the workflow's spec reproduces
    if config is not None and (compared := reproduction.compare(board.rows, config)):
        text += f"\n**Published against ours**\n\n{reproduction.VERDICTS}\n\n{reproduction.to_markdown(compared)}"
    client.set_experiment_tag(board.experiment_id, NOTE_TAG, text)
    client.set_experiment_tag(board.experiment_id, KIND_TAG, MODEL_TRAINING)
    if run_id:  # the workflow run's Description: its spec's description, then the leaderboard
        about = client.get_run(run_id).data.tags.get("description")
        client.set_tag(run_id, NOTE_TAG, f"{about}\n\n{text}" if about else text)
    return board


def ui_links(tracking_uri: str, base_url: str, experiment: str | None = None) -> list[str]:
    """Where to look in the MLflow UI: each experiment's Models view and its latest workflow run (one
    experiment, or every one of the store)."""
    from mlflow import MlflowClient

    from pipeline.tracking.store import sqlite_path

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
        latest = find_runs(client, exp.experiment_id, {"stage": "workflow"}, max_results=1)
        if latest:
            lines.append(f"{exp.name}: latest workflow run {base}/runs/{latest[0].info.run_id}?{TRAINING_VIEW}")
    return lines
