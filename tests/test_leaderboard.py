import csv
import io

import pytest

from pipeline import leaderboard
from pipeline.errors import PipelineError
from pipeline.tracking import Tracker


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    experiment = tracker.experiment_id("bench")
    return uri, tracker, experiment


def add_run(tracker, experiment, model, top1_err, top5_err=1.0, finish=True, **extra):
    metrics = {"top1": 100 - top1_err, "top1_err": top1_err, "top5": 100 - top5_err, "top5_err": top5_err,
               "param_count": 1.5, "gmacs": 0.01, "train_samples_per_sec": 1000.0, "epochs": 2, **extra}
    run_id = tracker.start_run(experiment, model, tags={"model": model, "stage": "train"}, metrics=metrics)
    if finish:
        tracker.finish(run_id)
    return run_id


def test_best_run_per_model_ranked_by_top1_error(store):
    uri, tracker, experiment = store
    add_run(tracker, experiment, "lenet5", 12.0)
    best_lenet = add_run(tracker, experiment, "lenet5", 10.5)
    add_run(tracker, experiment, "resnet20", 8.0)
    add_run(tracker, experiment, "vit", 20.0)
    board = leaderboard.build(uri, "bench")
    assert [r["model"] for r in board.rows] == ["resnet20", "lenet5", "vit"]
    assert board.rows[1]["run_id"] == best_lenet and board.rows[1]["top1_err"] == 10.5


def test_ties_are_broken_by_top5_then_by_the_earlier_run(store):
    uri, tracker, experiment = store
    first = add_run(tracker, experiment, "a", 5.0, top5_err=1.0)
    add_run(tracker, experiment, "a", 5.0, top5_err=1.0)
    add_run(tracker, experiment, "b", 5.0, top5_err=0.5)
    board = leaderboard.build(uri, "bench")
    assert [r["model"] for r in board.rows] == ["b", "a"]
    assert board.rows[1]["run_id"] == first


def test_runs_without_metrics_give_a_note_not_a_crash(store):
    uri, tracker, experiment = store
    add_run(tracker, experiment, "ok", 3.0)
    crashed = tracker.start_run(experiment, "crashed", tags={"model": "broken", "stage": "train"})
    tracker.finish(crashed, "FAILED")
    board = leaderboard.build(uri, "bench")
    assert [r["model"] for r in board.rows] == ["ok"]
    assert len(board.notes) == 1 and crashed in board.notes[0] and "failed" in board.notes[0]


def test_csv_follows_timm_results_columns(store):
    uri, tracker, experiment = store
    add_run(tracker, experiment, "m", 7.25, top5_err=0.5)
    rows = list(csv.DictReader(io.StringIO(leaderboard.to_csv(leaderboard.build(uri, "bench")))))
    assert list(rows[0])[:6] == ["model", "top1", "top1_err", "top5", "top5_err", "param_count"]
    assert list(rows[0])[6:] == ["gmacs", "train_samples_per_sec", "epochs", "wall_time_s", "run_id"]
    assert float(rows[0]["top1"]) == 92.75 and rows[0]["epochs"] == "2"
    markdown = leaderboard.to_markdown(leaderboard.build(uri, "bench"))
    assert markdown.splitlines()[2].startswith("| 1 | m | 92.75 | 7.25 |")


def test_unknown_experiment_and_empty_store_are_clear_errors(store, tmp_path):
    uri, tracker, experiment = store
    with pytest.raises(PipelineError, match="no experiment 'nope'.*bench"):
        leaderboard.build(uri, "nope")
    with pytest.raises(PipelineError, match="no training runs"):
        leaderboard.build(uri, "bench")
    with pytest.raises(PipelineError, match="no tracking store"):
        leaderboard.build(f"sqlite:///{tmp_path / 'missing.db'}", "bench")
    assert not (tmp_path / "missing.db").exists()
