"""The ensemble stage on runs made by the real train stage (the session's `trained` workflow), and its
selection rule: members are chosen by validation error, never by the test set they are then scored on."""
import pytest
import torch
from conftest import log_predictions

from pipeline.errors import PipelineError
from pipeline.results import leaderboard
from pipeline.scoring import topk_scores as scores
from pipeline.spec.loading import parse_spec
from pipeline.stages.ensemble import build_ensemble
from pipeline.tracking.store import Tracker

CLASSES = 10


def saved_probs(trained, model):
    """A trained run's saved test-set probabilities and labels, as the train stage keeps them."""
    client, run_id = trained.tracker.client, trained.runs[model]
    folder = trained.folder / f"probs-{model}"
    folder.mkdir(exist_ok=True)
    probs = torch.load(client.download_artifacts(run_id, "predictions/test_probs.pt", str(folder)), weights_only=True)
    labels = torch.load(client.download_artifacts(run_id, "predictions/test_labels.pt", str(folder)),
                        weights_only=True)
    return probs.float(), labels


def validation_order(trained):
    metrics = {m: trained.tracker.client.get_run(r).data.metrics for m, r in trained.runs.items()}
    return sorted(metrics, key=lambda m: (metrics[m]["val_top1_err"], metrics[m]["val_loss"])), metrics


def test_the_workflow_ensemble_averages_the_members_best_on_validation(trained):
    result = trained.context.outputs["ensemble"]
    order, metrics = validation_order(trained)
    assert result["members"] == order[:2] and result["model"] == "ensemble(top2)"
    # Independent check: the mean of the members' saved probabilities, scored by hand.
    probs = [saved_probs(trained, m) for m in order[:2]]
    labels = probs[0][1]
    assert torch.equal(labels, trained.context.data.test.labels)
    mean = torch.stack([p for p, _ in probs]).mean(0)
    expected_err = 100 - 100 * (mean.argmax(1) == labels).float().mean().item()
    assert result["metrics"]["top1_err"] == pytest.approx(expected_err)
    # The gain is over the member validation picks alone, scored from its saved probabilities.
    assert result["best_single"] == order[0]
    single_err = 100 - 100 * (probs[0][0].argmax(1) == labels).float().mean().item()
    assert result["metrics"]["gain_top1_err"] == pytest.approx(single_err - expected_err)

    client = trained.tracker.client
    run = client.get_run(result["run_id"])
    assert run.data.params["members"] == ",".join(trained.runs[m] for m in order[:2])
    assert run.data.metrics["top1_err"] == pytest.approx(expected_err)
    # Its LoggedModel holds the members (their models) and how they are combined.
    model = client.get_logged_model(result["model_id"])
    assert model.source_run_id == result["run_id"] and model.tags["kind"] == "ensemble"
    assert {m.key: m.value for m in model.metrics}["top1_err"] == pytest.approx(expected_err)
    board = leaderboard.build(trained.uri, trained.experiment)
    row = next(r for r in board.rows if r["kind"] == "ensemble" and r["run_id"] == result["run_id"])
    assert row["members"] == ",".join(order[:2])


def test_named_members_by_model_or_run_id(trained):
    order, _ = validation_order(trained)
    last, first = order[-1], order[0]
    result = build_ensemble(trained.tracker, trained.experiment, [last, trained.runs[first]], None, None,
                            data=trained.spec.data)
    try:
        check_named(trained, result, last, first)
    finally:  # the shared store keeps only the workflow's runs
        trained.tracker.client.delete_logged_model(result["model_id"])
        trained.tracker.client.delete_run(result["run_id"])


def check_named(trained, result, last, first):
    assert result["members"] == [last, first] and result["model"] == f"ensemble({last}+{first})"
    (a, labels), (b, _) = saved_probs(trained, last), saved_probs(trained, first)
    assert result["metrics"]["top1_err"] == pytest.approx(scores(torch.stack([a, b]).mean(0), labels)["top1_err"])
    assert result["best_single"] == first  # the one with the lower validation error
    with pytest.raises(PipelineError, match="'nope' is neither a model on the leaderboard"):
        build_ensemble(trained.tracker, trained.experiment, [first, "nope"], None, None)
    # The ensemble's pyfunc holds both members' weights.
    model = trained.tracker.client.get_logged_model(result["model_id"])
    assert model.tags.get("pyfunc") != "false"


# --- the selection rule, on runs whose validation and test rankings are made to disagree ----------------

def noisy_probs(labels, right_fraction, seed):
    """Softmax outputs right on a random `right_fraction` of the items, confidently wrong elsewhere."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(labels), CLASSES, generator=g)
    right = torch.rand(len(labels), generator=g) < right_fraction
    wrong = (labels + 1 + torch.randint(CLASSES - 1, labels.shape, generator=g)) % CLASSES
    logits[torch.arange(len(labels)), torch.where(right, labels, wrong)] += 3.0
    return logits.softmax(1)


def log_member(tracker, experiment, model, probs, labels, folder, val_err, **extra):
    metrics = {**scores(probs.float(), labels), "val_top1_err": val_err, "param_count": 1.0, "gmacs": 0.5, **extra}
    run_id = tracker.start_run(experiment, model, tags={"model": model, "stage": "train"}, metrics=metrics)
    log_predictions(tracker, run_id, probs, labels, folder)
    tracker.finish(run_id)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the module (creating one costs seconds); an experiment per test."""
    return Tracker(f"sqlite:///{tmp_path_factory.mktemp('selection') / 'mlflow.db'}")


@pytest.fixture
def disagreeing(store, tmp_path, request):
    """Four runs: on the test set a is best, then b, c, d; on validation d, c, b, a."""
    tracker, name = store, request.node.name[5:60]
    experiment = tracker.experiment_id(name)
    labels = torch.randint(CLASSES, (500,), generator=torch.Generator().manual_seed(0))
    probs = {name: noisy_probs(labels, fraction, seed)
             for name, fraction, seed in (("a", 0.8, 1), ("b", 0.7, 2), ("c", 0.6, 3), ("d", 0.5, 4))}
    val = {"a": 30.0, "b": 25.0, "c": 20.0, "d": 15.0}
    runs = {n: log_member(tracker, experiment, n, p, labels, tmp_path, val[n]) for n, p in probs.items()}
    return tracker, name, labels, probs, runs


def test_members_follow_validation_where_the_test_set_would_pick_others(disagreeing):
    tracker, name, labels, probs, runs = disagreeing
    board = leaderboard.build(tracker.uri, name)
    assert [r["model"] for r in board.rows] == ["a", "b", "c", "d"]  # the reported ranking: by test error
    assert [r["model"] for r in leaderboard.by_validation(board)[0]] == ["d", "c", "b", "a"]
    result = build_ensemble(tracker, name, [], 2, None)
    assert result["members"] == ["d", "c"] and result["best_single"] == "d"
    expected = scores(torch.stack([probs["d"].half().float(), probs["c"].half().float()]).mean(0), labels)
    assert result["metrics"]["top1_err"] == pytest.approx(expected["top1_err"])


def test_top_k_passes_over_diverged_runs_and_runs_without_validation(disagreeing, tmp_path):
    tracker, name, labels, probs, runs = disagreeing
    tracker.log(runs["d"], {"diverged": 1.0})
    unvalidated = tracker.start_run(tracker.experiment_id(name), "e", tags={"model": "e", "stage": "train"},
                                    metrics=scores(probs["a"], labels))
    log_predictions(tracker, unvalidated, probs["a"], labels, tmp_path)
    tracker.finish(unvalidated)
    result = build_ensemble(tracker, name, [], 2, None)
    assert result["members"] == ["c", "b"]
    assert any(n.startswith("d (run") and "diverged" in n for n in result["notes"])
    assert any(n.startswith("e (run") and "no validation metric" in n for n in result["notes"])


def test_members_of_different_test_sets_are_refused(disagreeing, tmp_path):
    tracker, name, labels, probs, runs = disagreeing
    other = tracker.experiment_id("mixed")
    log_member(tracker, other, "x", probs["a"], labels, tmp_path, 10.0)
    log_member(tracker, other, "y", probs["b"][:200], labels[:200], tmp_path, 11.0)
    with pytest.raises(PipelineError, match="not evaluated on the same test set"):
        build_ensemble(tracker, "mixed", [], 2, None)
    lonely = tracker.experiment_id("lonely")
    log_member(tracker, lonely, "x", probs["a"], labels, tmp_path, 10.0)
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
