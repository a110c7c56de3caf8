"""End to end on a real local Ray cluster (2 training workers) and a real MLflow store."""
import os
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from rich.console import Console

from pipeline import leaderboard, workflow
from pipeline.config import parse_spec
from pipeline.logged_models import download_model_files, model_of_run
from pipeline.tracking import Tracker


def tiny_spec(workdir: Path, **train) -> dict:
    return {"name": "tiny", "data": {"name": "synthetic", "synthetic_size": 1000},
            "models": ["lenet5", {"name": "resnet20", "train": {"lr": 0.001}}],
            "train": {"epochs": 2, "batch_size": 32, "lr": 0.005, "warmup_epochs": 0, **train},
            "resources": {"num_workers": 2}, "tracking": {"uri": f"sqlite:///{workdir / 'mlflow.db'}"},
            "storage_path": str(workdir / "checkpoints")}


def child_runs(client, context):
    runs = client.search_runs([context.experiment_id], f"tags.mlflow.parentRunId = '{context.parent_run_id}'")
    return {run.data.tags["model"]: run for run in runs}


def test_spec_runs_end_to_end(ray_cluster, workdir):
    spec = parse_spec(tiny_spec(workdir))
    context = workflow.run(spec, Console(file=open(os.devnull, "w")))
    assert not context.failures
    client = MlflowClient(spec.tracking.uri)
    runs = child_runs(client, context)
    assert set(runs) == {"lenet5", "resnet20"}
    board = leaderboard.build(spec.tracking.uri, spec.experiment_name)
    assert sorted(r["model"] for r in board.rows) == ["lenet5", "resnet20"]
    assert [r["top1_err"] for r in board.rows] == sorted(r["top1_err"] for r in board.rows)
    for model, run in runs.items():
        reported = context.outputs["train"][model]["metrics"]  # what the workers reported to Ray Train
        logged = run.data.metrics
        assert run.info.status == "FINISHED"
        for key in ("top1", "top1_err", "top5_err", "val_loss", "val_top1", "train_loss", "train_samples_per_sec"):
            assert logged[key] == pytest.approx(reported[key]), key
        assert logged["top1"] > 30  # well above chance (10%)
        assert logged["param_count"] > 0 and logged["gmacs"] > 0
        assert run.data.params["train.epochs"] == "2" and run.data.params["model"] == model
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_top1")) == [1, 2]
        assert run.data.tags["family"] and run.data.tags["dataset"] == "synthetic"
        model_id = model_of_run(client, run.info.run_id)  # the run's LoggedModel holds the weights
        assert "MLmodel" in {a.path for a in client.list_logged_model_artifacts(model_id)}
        assert {"artifacts/model.pt", "artifacts/model.json"} <= \
            {a.path for a in client.list_logged_model_artifacts(model_id, "artifacts")}
    weights, _ = download_model_files(Tracker(spec.tracking.uri), model_of_run(client, runs["lenet5"].info.run_id),
                                      workdir / "weights")
    assert any(k.endswith("weight") for k in torch.load(weights, weights_only=True))
    # Test-set probabilities, gathered from both workers in data-set order, agree with the test accuracy.
    probs = torch.load(client.download_artifacts(runs["resnet20"].info.run_id, "predictions/test_probs.pt",
                                                 str(workdir)))
    labels = context.data.test.labels
    assert probs.shape == (len(labels), 10)
    accuracy = 100 * (probs.float().argmax(1) == labels).float().mean().item()
    assert accuracy == pytest.approx(runs["resnet20"].data.metrics["top1"], abs=0.5)
    parent = client.get_run(context.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(context.parent_run_id)} >= {"spec.yaml", "leaderboard.csv"}


def test_streamed_data_set_trains_through_the_same_loop(ray_cluster, workdir):
    from test_data import _write_parquet_shards

    _write_parquet_shards(workdir / "shards", "train", 4, 60)
    _write_parquet_shards(workdir / "shards", "test", 2, 20)
    tree = tiny_spec(workdir)
    tree["data"] = {"name": "huggingface", "path": str(workdir / "shards"), "streaming": True, "in_chans": 1,
                    "image_size": 8, "val_fraction": 0.2}
    tree["models"] = ["lenet5"]
    tree["stages"] = ["train"]
    tree["resources"]["cpus_per_worker"] = 0.5  # Ray Data's decode tasks take the cluster's other CPU
    spec = parse_spec(tree)
    context = workflow.run(spec, Console(file=open(os.devnull, "w")))
    assert not context.failures and context.data is None  # nothing was loaded into memory
    run = MlflowClient(spec.tracking.uri).get_run(context.outputs["train"]["lenet5"]["run_id"])
    metrics = run.data.metrics
    # 240 training records, every 5th held out: 192 train across 2 workers, batch 32 -> 3 steps each.
    assert 0 <= metrics["data_wait_frac"] <= 1
    assert metrics["epochs"] == 2 and 0 <= metrics["top1"] <= 100 and metrics["val_loss"] > 0
    assert run.data.tags["dataset"] == "huggingface"
