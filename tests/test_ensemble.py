"""The ensemble stage on a real MLflow store: saved probabilities of runs, averaged into a leaderboard row."""
import os

import pytest
import torch
from mlflow import MlflowClient
from rich.console import Console

from pipeline import leaderboard, workflow
from pipeline.config import parse_spec
from pipeline.errors import PipelineError
from pipeline.stages.ensemble import build_ensemble, scores
from pipeline.tracking import Tracker
from conftest import log_predictions

N, CLASSES = 1000, 10


def log_member(tracker, experiment, model, probs, labels, tmp_path, dataset="synthetic"):
    """A finished training run as the train stage leaves it: test metrics and saved probabilities."""
    metrics = {**scores(probs.float(), labels), "param_count": 1.0, "gmacs": 0.5}
    run_id = tracker.start_run(experiment, model, tags={"model": model, "stage": "train", "dataset": dataset},
                               metrics=metrics)
    log_predictions(tracker, run_id, probs, labels, tmp_path)
    tracker.finish(run_id)
    return run_id


def noisy_probs(labels, right_fraction, seed):
    """Softmax outputs that are right on a random `right_fraction` of the items, confidently wrong elsewhere."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(labels), CLASSES, generator=g)
    right = torch.rand(len(labels), generator=g) < right_fraction
    wrong = (labels + 1 + torch.randint(CLASSES - 1, labels.shape, generator=g)) % CLASSES
    target = torch.where(right, labels, wrong)
    logits[torch.arange(len(labels)), target] += 3.0
    return logits.softmax(1)


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ensemble")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    experiment = tracker.experiment_id("ens")
    labels = torch.randint(CLASSES, (N,), generator=torch.Generator().manual_seed(0))
    probs = {name: noisy_probs(labels, fraction, seed)
             for name, fraction, seed in (("a", 0.72, 1), ("b", 0.66, 2), ("c", 0.6, 3), ("d", 0.3, 4))}
    runs = {name: log_member(tracker, experiment, name, p, labels, tmp_path) for name, p in probs.items()}
    return tracker, experiment, labels, probs, runs


def test_top_k_ensemble_averages_the_best_runs_and_logs_a_leaderboard_row(members):
    tracker, experiment, labels, probs, runs = members
    ranked = sorted(probs, key=lambda m: scores(probs[m].half().float(), labels)["top1_err"])
    assert ranked == ["a", "b", "c", "d"]  # the fixture's intent; the leaderboard must agree
    result = build_ensemble(tracker, "ens", [], 3, None)
    assert result["model"] == "ensemble(top3)" and result["members"] == ["a", "b", "c"]
    # Independent check: the mean of the three float16 probability tables, scored by hand.
    mean = torch.stack([probs[m].half().float() for m in "abc"]).mean(0)
    expected_top1 = 100 * (mean.argmax(1) == labels).float().mean().item()
    singles = {m: 100 - 100 * (probs[m].half().float().argmax(1) == labels).float().mean().item() for m in "abc"}
    metrics = result["metrics"]
    assert metrics["top1"] == pytest.approx(expected_top1)
    assert metrics["gain_top1_err"] == pytest.approx(min(singles.values()) - (100 - expected_top1))
    assert metrics["gain_top1_err"] > 0  # errors of independent members partly cancel
    assert metrics["param_count"] == pytest.approx(3.0) and metrics["gmacs"] == pytest.approx(1.5)

    board = leaderboard.build(tracker.uri, "ens")
    row = next(r for r in board.rows if r["model"] == "ensemble(top3)")
    assert row["kind"] == "ensemble" and row["members"] == "a,b,c" and row["run_id"] == result["run_id"]
    assert board.rows[0] is row and "kind" in board.columns
    run = tracker.client.get_run(result["run_id"])
    assert run.data.params["members"] == ",".join(runs[m] for m in "abc")
    assert {a.path for a in tracker.client.list_artifacts(result["run_id"], "predictions")} == \
        {"predictions/test_probs.pt", "predictions/test_labels.pt"}
    # A second top-k ensemble does not count the first one as a member.
    again = build_ensemble(tracker, "ens", [], 2, "pair")
    assert again["members"] == ["a", "b"] and again["model"] == "pair"


def test_named_members_by_model_or_run_id(members):
    tracker, experiment, labels, probs, runs = members
    result = build_ensemble(tracker, "ens", ["d", runs["a"]], None, None)
    assert result["model"] == "ensemble(d+a)" and result["members"] == ["d", "a"]
    expected = scores(torch.stack([probs["d"].half().float(), probs["a"].half().float()]).mean(0), labels)
    assert result["metrics"]["top1_err"] == pytest.approx(expected["top1_err"])
    assert result["best_single"] == "a"
    with pytest.raises(PipelineError, match="'nope' is neither a model on the leaderboard"):
        build_ensemble(tracker, "ens", ["a", "nope"], None, None)


def test_members_of_different_test_sets_are_refused(members, tmp_path):
    tracker, experiment, labels, probs, runs = members
    other = tracker.experiment_id("mixed")
    log_member(tracker, other, "x", probs["a"], labels, tmp_path)
    log_member(tracker, other, "y", probs["b"][:200], labels[:200], tmp_path)
    with pytest.raises(PipelineError, match="not evaluated on the same test set"):
        build_ensemble(tracker, "mixed", [], 2, None)
    lonely = tracker.experiment_id("lonely")
    log_member(tracker, lonely, "x", probs["a"], labels, tmp_path)
    with pytest.raises(PipelineError, match="needs two or more runs"):
        build_ensemble(tracker, "lonely", [], 3, None)


def test_spec_section_is_validated():
    base = {"name": "e", "models": ["lenet5"], "stages": ["ensemble"]}
    assert parse_spec({**base, "ensemble": {"top_k": 2}}).ensemble.top_k == 2
    with pytest.raises(PipelineError, match="not both"):
        parse_spec({**base, "ensemble": {"top_k": 2, "members": ["a", "b"]}})
    with pytest.raises(PipelineError, match="at least two"):
        parse_spec({**base, "ensemble": {"members": ["a"]}})
    with pytest.raises(PipelineError, match="ensemble.top_k"):
        parse_spec({**base, "ensemble": {"top_k": 1}})


@pytest.mark.slow
def test_trained_runs_ensemble_in_a_workflow(ray_cluster, workdir):
    """train -> ensemble -> leaderboard on a real Ray cluster: the train stage's saved probabilities feed it."""
    spec = parse_spec({
        "name": "ens", "data": {"name": "synthetic", "synthetic_size": 400, "val_fraction": 0.1},
        "models": ["lenet5", "resnet20"],
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.005, "warmup_epochs": 0},
        "resources": {"num_workers": 1}, "tracking": {"uri": f"sqlite:///{workdir / 'mlflow.db'}"},
        "storage_path": str(workdir / "checkpoints"), "stages": ["train", "ensemble", "leaderboard"],
        "ensemble": {"top_k": 2}})
    context = workflow.run(spec, Console(file=open(os.devnull, "w")))
    assert not context.failures
    result = context.outputs["ensemble"]
    assert len(result["members"]) == 2 and result["model"] == "ensemble(top2)"
    client = MlflowClient(spec.tracking.uri)
    labels = torch.load(client.download_artifacts(context.outputs["train"]["resnet20"]["run_id"],
                                                  "predictions/test_labels.pt", str(workdir)))
    assert torch.equal(labels, context.data.test.labels)
    board = context.outputs["leaderboard"]["board"]
    row = next(r for r in board.rows if r["kind"] == "ensemble")
    assert row["top1_err"] == pytest.approx(result["metrics"]["top1_err"])
    trained = client.get_run(context.outputs["train"]["resnet20"]["run_id"])
    assert trained.data.tags["accelerator"] == "cpu" and trained.data.tags["paper_year"] == "2015"
    assert trained.data.params["seed"] == "0" and trained.data.params["epochs"] == "1"


def test_top_k_passes_over_a_diverged_run(members, tmp_path):
    tracker, experiment, labels, probs, runs = members
    board = tracker.experiment_id("diverged")
    for name in "abc":
        run_id = log_member(tracker, board, name, probs[name], labels, tmp_path)
    tracker.log(run_id, {"diverged": 1.0})  # c: its loss became NaN at the end
    result = build_ensemble(tracker, "diverged", [], 3, None)
    assert result["members"] == ["a", "b"]
    assert any("c (run" in note and "diverged" in note for note in result["notes"])
