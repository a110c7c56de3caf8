"""End to end on a real local Ray cluster and a real MLflow store."""
import os
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from rich.console import Console

from pipeline.engine import workflow
from pipeline.results import leaderboard
from pipeline.spec.loading import load_spec, parse_spec
from pipeline.tracking.logged_models import model_of_run
from pipeline.tracking.model_files import download_model_files
from pipeline.tracking.store import Tracker

ROOT = Path(__file__).resolve().parents[1]


def tiny_spec(workdir: Path, **train) -> dict:
    return {"name": "tiny", "data": {"name": "synthetic", "synthetic_size": 1000},
            "models": ["lenet5", {"name": "resnet20", "train": {"lr": 0.001}}],
            "train": {"epochs": 2, "batch_size": 32, "lr": 0.005, "warmup_epochs": 0, **train},
            "resources": {"num_workers": 2}, "tracking": {"uri": f"sqlite:///{workdir / 'mlflow.db'}"},
            "storage_path": str(workdir / "checkpoints")}


def test_spec_runs_end_to_end(trained):
    """The shared tiny workflow (conftest `trained`): train on a real local Ray cluster, ensemble, leaderboard."""
    context, client = trained.context, MlflowClient(trained.uri)
    runs = {model: client.get_run(run_id) for model, run_id in trained.runs.items()}
    board = leaderboard.build(trained.uri, trained.experiment)
    assert set(runs) <= {r["model"] for r in board.rows}
    assert [r["top1_err"] for r in board.rows] == sorted(r["top1_err"] for r in board.rows)
    for model, run in runs.items():
        reported = context.outputs["train"][model]["metrics"]  # what the workers reported to Ray Train
        logged = run.data.metrics
        assert run.info.status == "FINISHED"
        for key in ("top1", "top1_err", "top5_err", "val_loss", "val_top1", "train_loss", "train_samples_per_sec"):
            assert logged[key] == pytest.approx(reported[key]), key
        assert logged["param_count"] > 0 and logged["gmacs"] > 0
        assert run.data.params["train.epochs"] == "2" and run.data.params["model"] == model
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_top1")) == [1, 2]
        assert run.data.tags["family"] and run.data.tags["dataset"] == "synthetic"
        model_id = model_of_run(client, run.info.run_id)  # the run's LoggedModel holds the weights
        assert "MLmodel" in {a.path for a in client.list_logged_model_artifacts(model_id)}
        assert {"artifacts/model.pt", "artifacts/model.json"} <= \
            {a.path for a in client.list_logged_model_artifacts(model_id, "artifacts")}
    assert runs["lenet5"].data.metrics["top1"] > 30  # well above chance (10%)
    assert runs["resnet20"].data.params["resources.num_workers"] == "2"
    weights, _ = download_model_files(Tracker(trained.uri), model_of_run(client, runs["lenet5"].info.run_id),
                                      trained.folder / "weights")
    assert any(k.endswith("weight") for k in torch.load(weights, weights_only=True))
    # Test-set probabilities, gathered from both workers in data-set order, agree with the test accuracy.
    probs = torch.load(client.download_artifacts(runs["resnet20"].info.run_id, "predictions/test_probs.pt",
                                                 str(trained.folder)), weights_only=True)
    labels = context.data.test.labels
    assert probs.shape == (len(labels), 10)
    accuracy = 100 * (probs.float().argmax(1) == labels).float().mean().item()
    assert accuracy == pytest.approx(runs["resnet20"].data.metrics["top1"], abs=0.5)
    parent = client.get_run(context.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(context.parent_run_id)} >= {"spec.yaml", "leaderboard.csv"}


def test_degradation_curves_log_training_and_test_error_per_epoch(trained):
    """experiments/resnet_degradation.yaml asks for the test error each epoch; the shared workflow's plain20
    does the same: both error curves, one point per epoch, the last test point the run's final test error."""
    spec = load_spec(ROOT / "experiments" / "resnet_degradation.yaml")
    assert all(spec.train_config(entry).eval_test_every_epoch for entry in spec.models)
    client = MlflowClient(trained.uri)
    run_id = trained.runs["plain20"]
    curves = {key: {m.step: m.value for m in client.get_metric_history(run_id, key)}
              for key in ("train_top1_err", "test_top1_err")}
    assert {key: sorted(points) for key, points in curves.items()} == {"train_top1_err": [1, 2],
                                                                      "test_top1_err": [1, 2]}
    assert all(0 <= value <= 100 for points in curves.values() for value in points.values())
    assert curves["test_top1_err"][2] == pytest.approx(client.get_run(run_id).data.metrics["top1_err"])
    assert not client.get_metric_history(trained.runs["lenet5"], "test_top1_err")  # only where asked


def write_learnable_shards(root: Path, split: str, shards: int, rows_per_shard: int) -> None:
    """Parquet shards of 8x8 images whose class (of 3) is their brightness, with noise: a model that trains
    tells them apart, one that does not stays near chance (33%)."""
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(len(split))
    root.mkdir(parents=True, exist_ok=True)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    for shard in range(shards):
        labels = [(shard * rows_per_shard + i) % 3 for i in range(rows_per_shard)]
        images = [Image.fromarray(np.clip(40 + 85 * label + rng.normal(0, 12, (8, 8)), 0, 255).astype(np.uint8))
                  for label in labels]
        part = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        part.to_parquet(str(root / f"{split}-{shard:05d}-of-{shards:05d}.parquet"))


def test_streamed_data_set_trains_through_the_same_loop(ray_cluster, workdir):
    write_learnable_shards(workdir / "shards", "train", 4, 60)
    write_learnable_shards(workdir / "shards", "test", 2, 30)
    tree = tiny_spec(workdir)
    tree["data"] = {"name": "huggingface", "path": str(workdir / "shards"), "streaming": True, "in_chans": 1,
                    "image_size": 8, "val_fraction": 0.2}
    tree["models"] = ["lenet5"]
    tree["stages"] = ["train"]
    # At a learning rate of 0.05 the network can settle on never predicting one of the three classes (66.67 %).
    tree["train"].update(epochs=10, lr=0.01)
    tree["resources"]["cpus_per_worker"] = 0.5  # Ray Data's decode tasks take the cluster's other CPU
    spec = parse_spec(tree)
    context = workflow.run(spec, Console(file=open(os.devnull, "w")))
    assert not context.failures and context.data is None  # nothing was loaded into memory
    client = MlflowClient(spec.tracking.uri)
    run = client.get_run(context.outputs["train"]["lenet5"]["run_id"])
    metrics = run.data.metrics
    assert 0 <= metrics["data_wait_frac"] <= 1
    assert metrics["epochs"] == 10 and metrics["val_loss"] > 0
    assert run.data.tags["dataset"] == "huggingface"
    # It learned from the stream: well above chance (33%) on the held-out test shards.
    assert metrics["top1"] > 70 and metrics["val_top1"] > 70, metrics
    # A validation point per epoch, from 48 held-out records (240 training records, every 5th).
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_top1")) == list(range(1, 11))
    # The run's LoggedModel carries the same test and validation figures, linked to their data sets.
    model = client.get_logged_model(model_of_run(client, run.info.run_id))
    linked = {m.key: m for m in model.metrics}
    for key in ("top1", "top1_err", "top5_err"):
        assert linked[key].value == pytest.approx(metrics[key]) and linked[key].dataset_name.endswith("test"), key
    assert linked["val_top1_err"].value == pytest.approx(metrics["val_top1_err"])
    assert metrics["top1_err"] == pytest.approx(100 - metrics["top1"])
