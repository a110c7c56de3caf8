"""The `ensemble` stage: the saved test-set probabilities of several runs, averaged, as a leaderboard row.

The lecture's ensembles (AlexNet's 7 CNNs, the 2016 winner's fusion of Inception, ResNet and WRN models)
average the members' softmax outputs. Members are the experiment's top-k runs by validation error (the
test set, which then scores the ensemble and its gain, chooses nothing) or a named set; each must have
saved `predictions/test_probs.pt` (the train stage does, for in-memory data sets). The result is a
LoggedModel that holds every member's weights and averages their softmax outputs.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.engine.context import Job, RunContext
from pipeline.engine.registry import stage
from pipeline.engine.units import Unit
from pipeline.errors import PipelineError
from pipeline.scoring import topk_scores

PROBS = "predictions/test_probs.pt"
LABELS = "predictions/test_labels.pt"
DEFAULT_TOP_K = 3


@dataclass
class Member:
    model: str
    run_id: str
    probs: torch.Tensor  # float32 (N, classes)
    labels: torch.Tensor | None


def has_predictions(client, run_id: str) -> bool:
    return any(a.path == PROBS for a in client.list_artifacts(run_id, "predictions"))


def load_member(client, model: str, run_id: str) -> Member:
    with tempfile.TemporaryDirectory() as directory:
        probs = torch.load(client.download_artifacts(run_id, PROBS, directory), weights_only=True).float()
        has_labels = any(a.path == LABELS for a in client.list_artifacts(run_id, "predictions"))
        labels = torch.load(client.download_artifacts(run_id, LABELS, directory), weights_only=True) \
            if has_labels else None
    return Member(model, run_id, probs, labels)


def select(board, client, top_k: int | None, named: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(model, run id) of each member, and notes on runs passed over. Members are chosen by validation
    error (`leaderboard.by_validation`), never by the test set the ensemble is then scored on; a member
    named by its model or its entry's id is the best run of that name on validation."""
    from pipeline.results.leaderboard import by_validation, row_label

    ranked, notes = by_validation(board)
    if named:
        by_model: dict[str, str] = {}
        for row in ranked + board.rows:  # a name's best run on validation first, else its shown row
            by_model.setdefault(row_label(row), row["run_id"])
            by_model.setdefault(row["model"], row["run_id"])
        chosen = []
        for name in named:
            if name in by_model:
                chosen.append((name, by_model[name]))
                continue
            try:
                run = client.get_run(name)
            except Exception:  # MlflowException for an unknown id; the message below says what to give
                run = None
            if run is None or run.info.experiment_id != board.experiment_id:
                raise PipelineError(f"ensemble member '{name}' is neither a model on the leaderboard of "
                                    f"'{board.experiment}' ({', '.join(by_model) or 'none'}) nor a run id in it")
            chosen.append((run.data.tags.get("entry") or run.data.tags.get("model", name), name))
        missing = [model for model, run_id in chosen if not has_predictions(client, run_id)]
        if missing:
            raise PipelineError(f"ensemble members {', '.join(missing)} have no saved test-set probabilities "
                                f"({PROBS}): retrain them with this version, on an in-memory data set")
        return chosen, []
    chosen = []
    for row in ranked:
        if len(chosen) == top_k:
            break
        if has_predictions(client, row["run_id"]):
            chosen.append((row_label(row), row["run_id"]))
        else:
            notes.append(f"{row_label(row)} (run {row['run_id']}) has no saved test-set probabilities: passed over")
    return chosen, notes


def build_ensemble(tracker, experiment: str, members_spec: list[str], top_k: int | None, name: str | None,
                   run_id: str | None = None, fallback_labels: torch.Tensor | None = None, data=None) -> dict:
    """Average the members' test-set probabilities and log the result as a leaderboard run (`run_id`, or a
    new top-level run) with its LoggedModel; `data` (the members' DataConfig) names the test set its metrics
    are linked to."""
    from pipeline.results import leaderboard

    board = leaderboard.build(tracker.uri, experiment)
    top_k = None if members_spec else (top_k or DEFAULT_TOP_K)
    chosen, notes = select(board, tracker.client, top_k, members_spec)
    if len(chosen) < 2:
        raise PipelineError(f"an ensemble needs two or more runs with saved test-set probabilities; "
                            f"'{experiment}' has {len(chosen)}: train more models first")
    members = [load_member(tracker.client, model, run_id) for model, run_id in chosen]
    shapes = {tuple(m.probs.shape) for m in members}
    label_sets = [m.labels for m in members if m.labels is not None]
    labels = label_sets[0] if label_sets else fallback_labels
    if len(shapes) > 1 or labels is None or any(not torch.equal(l, labels) for l in label_sets) \
            or len(labels) != members[0].probs.shape[0]:
        raise PipelineError(f"ensemble members {', '.join(m.model for m in members)} were not evaluated on the same "
                            f"test set (probabilities {sorted(shapes)}): ensemble runs of one data set and split")
    probs = torch.stack([m.probs for m in members]).mean(0)
    metrics = topk_scores(probs, labels)
    # Members are scored here the same way (from their saved probabilities) so the gain compares like with like.
    singles = {m.model: topk_scores(m.probs, labels) for m in members}
    # The gain is over the member validation would have picked alone (the test set picks nothing).
    from pipeline.results.leaderboard import selection_error

    rows = {row["run_id"]: row for row in board.runs or board.rows}
    validated = [m for m in members if m.run_id in rows and selection_error(rows[m.run_id]) is not None]
    best = min(validated, key=lambda m: selection_error(rows[m.run_id])).model if validated else \
        min(singles, key=lambda model: (singles[model]["top1_err"], singles[model]["top5_err"]))
    cost = {key: sum(rows[m.run_id][key] or 0 for m in members if m.run_id in rows) for key in ("param_count", "gmacs")}
    metrics.update({"gain_top1_err": singles[best]["top1_err"] - metrics["top1_err"],
                    "gain_top5_err": singles[best]["top5_err"] - metrics["top5_err"],
                    "best_single_top1_err": singles[best]["top1_err"], "members": len(members), **cost})
    label = name or (f"ensemble(top{top_k})" if top_k else f"ensemble({'+'.join(m.model for m in members)})")
    datasets = {rows[m.run_id]["dataset"] for m in members if m.run_id in rows} - {""}
    tags = {"model": label, "stage": "ensemble", "family": "ensemble", "members": ",".join(m.model for m in members),
            **({"dataset": datasets.pop()} if len(datasets) == 1 else {})}
    params = {"members": ",".join(m.run_id for m in members), "top_k": top_k or "", "best_single": best}
    created = run_id is None
    if created:
        run_id = tracker.start_run(board.experiment_id, label, tags=tags)
    else:
        tracker.client.update_run(run_id, name=label)
        for key, value in tags.items():
            tracker.client.set_tag(run_id, key, value)
    from pipeline.tracking.logged_models import TEST_METRICS

    tracker.log(run_id, {k: v for k, v in metrics.items() if k not in TEST_METRICS}, params=params)
    with tempfile.TemporaryDirectory() as directory:
        torch.save(probs.half(), Path(directory) / "test_probs.pt")
        torch.save(labels, Path(directory) / "test_labels.pt")
        tracker.log_artifact(run_id, Path(directory) / "test_probs.pt", "predictions")
        tracker.log_artifact(run_id, Path(directory) / "test_labels.pt", "predictions")
    model_id = log_ensemble_model(tracker, run_id, label, members, tags, params, metrics, data)
    if created:
        tracker.finish(run_id)
    return {"run_id": run_id, "model_id": model_id, "model": label, "members": [m.model for m in members],
            "best_single": best,
            "metrics": metrics, "notes": notes}


def log_ensemble_model(tracker, run_id: str, label: str, members: list[Member], tags: dict, params: dict,
                       metrics: dict, data) -> str:
    """The ensemble as a LoggedModel: every member's weights and model.json, and `model.json` of kind
    `ensemble` saying how they are combined (the mean of their softmax outputs)."""
    import json

    from pipeline.tracking.logged_models import log_model, model_of_run
    from pipeline.tracking.model_files import download_model_files

    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        files, described = {}, []
        for i, member in enumerate(members):
            member_id = model_of_run(tracker.client, member.run_id)
            if member_id is not None:  # unique names: MLflow keeps a pyfunc's artifacts by file name
                weights, meta = download_model_files(tracker, member_id, folder / f"member_{i}")
                files[f"weights_{i}"] = weights.rename(folder / f"member_{i}.pt")
                files[f"meta_{i}"] = meta.rename(folder / f"member_{i}.json")
            described.append({"model": member.model, "run_id": member.run_id, "model_id": member_id})
        (folder / "model.json").write_text(json.dumps({"kind": "ensemble", "combine": "mean of softmax outputs",
                                                       "members": described}, indent=2))
        # A pyfunc when every member has its weights; otherwise the model's record and metrics only.
        complete = all(d["model_id"] for d in described)
        return log_model(tracker, run_id, label, {"meta": folder / "model.json", **files} if complete else None,
                         params, {**tags, "kind": "ensemble"}, metrics, data)


@stage("ensemble", after=("train", "retrain"))
def plan(context: RunContext, planned: list[Unit]) -> list[Unit]:
    """One unit, after every training unit of the spec (finished or not): its members are the experiment's
    best runs by then, or the named ones; its key is the members' run ids with the ensemble's config."""
    config = context.spec.ensemble

    def identify(outputs):
        from pipeline.results import leaderboard

        board = leaderboard.build(context.tracker.uri, context.spec.experiment_name)
        top_k = None if config.members else (config.top_k or DEFAULT_TOP_K)
        chosen, _ = select(board, context.tracker.client, top_k, config.members)
        return {"members": [run_id for _, run_id in chosen], "config": config.model_dump(mode="json")}

    return [Unit(name="ensemble", stage="ensemble", title="ensemble", identify=identify,
                 after=[u.name for u in planned if u.stage in ("train", "retrain")],
                 from_run=lambda run, context: {"run_id": run.info.run_id, "metrics": dict(run.data.metrics)},
                 run=run_unit)]


def run_unit(job: Job) -> dict:
    """Average the test-set probabilities of the spec's ensemble members into the job's run."""
    context, config = job.context, job.spec.ensemble
    result = build_ensemble(job.tracker, job.spec.experiment_name, config.members, config.top_k, config.name,
                            job.run_id, data=job.spec.data)
    for note in result["notes"]:
        context.print(f"[yellow]note:[/] {note}")
    m = result["metrics"]
    context.print(
        f"[bold]{result['model']}[/] of {', '.join(result['members'])}: top-1 error {m['top1_err']:.2f}% "
        f"(best single, {result['best_single']}: {m['best_single_top1_err']:.2f}%; gain {m['gain_top1_err']:+.2f} "
        f"points), top-5 error {m['top5_err']:.2f}%, run {result['run_id']}")
    return result
