"""The streaming data path: sharded JPEGs read, decoded and transformed by Ray Data tasks, one split per
Train worker. Data semantics are checked with a loop that only iterates the data (no model), on real Ray
Train workers: on the local cluster and on a two-node cluster."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data.stream import (
    ShardedSplit,
    assign,
    decode_batch,
    describe,
    epoch_order,
    kept_counts,
    write_jpeg_shards,
)
from pipeline.errors import PipelineError

ROOT = Path(__file__).resolve().parents[1]
TRAIN_IMAGES, VAL_EVERY = 2400, 10  # 2,160 training images, 240 held out; 4 shards of 600 (3 pieces each)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """A few thousand small JPEGs in parquet shards, in ImageNet's hub layout; row i has label i % 10."""
    root = tmp_path_factory.mktemp("shards")
    write_jpeg_shards(root, "train", TRAIN_IMAGES, 4, (24, 20), 10)
    write_jpeg_shards(root, "validation", 300, 1, (24, 20), 10)
    return root


def test_an_epoch_deals_every_row_once_with_equal_shares_and_reshuffles_per_epoch():
    split = ShardedSplit("s", "folder", tuple((i * 37, (i + 1) * 37) for i in range(9)) + ((333, 350),))
    counts = kept_counts(split, (5, "train"))
    assert sum(counts) == 350 - 70 and sum(kept_counts(split, (5, "val"))) == 70
    orders = {}
    for epoch in range(3):
        order = epoch_order(len(counts), seed=7, epoch=epoch)
        assert order == epoch_order(len(counts), seed=7, epoch=epoch)  # a resumed run deals the same
        orders[epoch] = order
        for world in (1, 2, 3):
            shares = [assign(counts, order, rank, world, equal=True) for rank in range(world)]
            sizes = [sum(take for _, _, take in share) for share in shares]
            assert len(set(sizes)) == 1 and 0 <= sum(counts) - sum(sizes) < world  # fewer than world dropped
            rows = [(piece, skip + i) for share in shares for piece, skip, take in share for i in range(take)]
            assert len(rows) == len(set(rows))  # no row twice
        full = assign(counts, list(range(len(counts))), 1, 3, equal=False)  # evaluation: every row once
        assert sum(t for _, _, t in full) in (93, 94)
    assert len({tuple(o) for o in orders.values()}) == 3


def test_bad_shards_and_columns_fail_with_one_line_naming_them(tmp_path):
    write_jpeg_shards(tmp_path / "ok", "train", 20, 1, (16, 16), 2, layout="")
    (tmp_path / "ok" / "train-00001-of-00002.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(PipelineError, match=r"shard .*train-00001-of-00002.parquet is not a readable parquet"):
        describe(str(tmp_path / "ok"), "train")
    (tmp_path / "ok" / "train-00001-of-00002.parquet").unlink()
    with pytest.raises(PipelineError, match="has no label column 'fine_label'") as error:
        describe(str(tmp_path / "ok"), "train", label_column="fine_label")
    assert "\n" not in str(error.value)

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"image": [{"bytes": b"\x89PNG garbage", "path": None}] * 3, "label": [0, 1, 0]})
    pq.write_table(table, tmp_path / "bad-train-0.parquet")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad-train-0.parquet").rename(tmp_path / "bad" / "train-0.parquet")
    with pytest.raises(PipelineError, match=r"bad/train-0.parquet row 0:0: column 'image' holds bytes that are "
                                            r"not an image") as error:
        describe(str(tmp_path / "bad"), "train")
    assert "\n" not in str(error.value)
    # A bad image further on fails in the Ray Data task that decodes it, naming its shard and row.
    good = describe(str(tmp_path / "ok"), "train")
    table = pq.read_table(good.pieces[0][0])
    images = table.column("image").to_pylist()
    images[7] = {"bytes": b"\xff\xd8 truncated jpeg", "path": None}
    pq.write_table(table.set_column(0, "image", pa.array(images, type=table.schema.field("image").type)),
                   good.pieces[0][0])
    transform = {"train": False, "size": 16, "in_chans": 3, "interpolation": "bilinear", "crop_pct": 1.0}
    batch = {"piece": np.array([0]), "skip": np.array([0]), "take": np.array([20]), "epoch": np.array([0])}
    with pytest.raises(PipelineError, match=r"row 0:7: column 'image' holds bytes that are not an image"):
        decode_batch(batch, good, transform, 3, None, 0)


def ids_loop(config):
    """A worker loop that iterates its data only: the ids of two training epochs, then the validation and test
    metrics of a fixed model (`pipeline.training.evaluation.evaluate`), written where the test reads them."""
    import ray.train

    from pipeline.data.augment import Augment
    from pipeline.training.evaluation import evaluate
    from pipeline.training.harness import worker_setup
    from pipeline.training.loop import make_batches

    rank, world_size, device, autocast = worker_setup(1, config.recipe.precision)
    train, val, test = make_batches(config, rank, world_size, device)
    out = {"steps": train.steps_per_epoch, "dropped": train.dropped_per_epoch,
           "node": ray.get_runtime_context().get_node_id()}
    for epoch in (0, 1):
        batches = list(train.epoch_rows(epoch))
        out[f"epoch{epoch}"] = torch.cat([b["id"] for b in batches]).tolist()
        out[f"labels{epoch}"] = torch.cat([b["label"] for b in batches]).tolist()
        out[f"batches{epoch}"] = len(batches)
        out["shape"] = list(batches[0]["image"].shape)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    augment = Augment(config.mean, config.std, False, 0, device)
    criterion = torch.nn.CrossEntropyLoss()
    out["val_ids"] = torch.cat([b["id"] for b in val.rows_in_order(64)]).tolist()
    out["val"] = evaluate(model, val.in_order(64), augment, criterion, device, autocast)
    out["test"] = evaluate(model, test.in_order(64), augment, criterion, device, autocast)
    Path(config.label).joinpath(f"rank{rank}.json").write_text(json.dumps(out))
    ray.train.report({"done": 1})


def stream_worker_config(shards: Path, out: Path, cpus_per_worker: float = 1):
    from pipeline.engine.context import RunContext
    from pipeline.spec.loading import parse_spec
    from pipeline.spec.sections import DataConfig, ModelEntry
    from pipeline.training.recipe import worker_config

    data = DataConfig(name="huggingface", path=str(shards), test_split="validation", streaming=True,
                      image_size=16, val_fraction=1 / VAL_EVERY)
    spec = parse_spec({"name": "s", "data": data.model_dump(), "models": ["lenet5"], "train": {"batch_size": 64},
                       "resources": {"num_workers": 2, "cpus_per_worker": cpus_per_worker}})
    config, _ = worker_config(RunContext(spec), ModelEntry(name="resnet20"), spec.train, spec.data, 1, str(out))
    return config


def check_epochs(ranks: list[dict], world_size: int) -> None:
    train_rows = TRAIN_IMAGES - TRAIN_IMAGES // VAL_EVERY
    for epoch in (0, 1):
        ids = [i for r in ranks for i in r[f"epoch{epoch}"]]
        assert len(ids) == len(set(ids)), "an id was seen twice in one epoch"
        assert len(ids) == train_rows - train_rows % world_size and not any(i % VAL_EVERY == 0 for i in ids)
        assert all(label == i % 10 for r in ranks for i, label in zip(r[f"epoch{epoch}"], r[f"labels{epoch}"]))
        assert len({r[f"batches{epoch}"] for r in ranks}) == 1 == len({r["steps"] for r in ranks})
    assert ranks[0]["epoch0"] != ranks[0]["epoch1"]  # reshuffled
    assert set(ranks[0]["epoch0"]) != set(ranks[0]["epoch1"])  # and dealt out anew
    assert ranks[0]["shape"] == [64, 3, 16, 16]


def test_two_train_workers_see_every_id_once_and_evaluate_as_one_worker(ray_cluster, shards, tmp_path):
    from pipeline.data.augment import Augment
    from pipeline.spec.sections import ResourcesConfig
    from pipeline.training.evaluation import evaluate
    from pipeline.training.harness import fit
    from pipeline.training.loop import make_batches

    ray_cluster.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import a test module
    config = stream_worker_config(shards, tmp_path, cpus_per_worker=0.5)
    # Half a CPU per Train worker leaves one of the local cluster's two CPUs to Ray Data's decode tasks.
    resources = ResourcesConfig(num_workers=2, cpus_per_worker=0.5, max_failures=0)
    result = fit(ids_loop, config, resources, str(tmp_path / "ckpt"), "ids")
    assert result.error is None, result.error
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    check_epochs(ranks, 2)
    assert ranks[0]["dropped"] == (TRAIN_IMAGES - TRAIN_IMAGES // VAL_EVERY) % 2
    with pytest.raises(PipelineError, match="needs CPUs to decode images beside the training workers"):
        stream_worker_config(shards, tmp_path, cpus_per_worker=1)  # 2 workers x 1 CPU leave none on 2 CPUs
    assert sorted(ranks[0]["val_ids"] + ranks[1]["val_ids"]) == list(range(0, TRAIN_IMAGES, VAL_EVERY))
    # The same evaluation on one worker (here, in the driver) gives the same numbers.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    _, val, test = make_batches(config, 0, 1, torch.device("cpu"))
    augment = Augment(config.mean, config.std, False, 0, torch.device("cpu"))
    for name, batches in (("val", val), ("test", test)):
        alone = evaluate(model, batches.in_order(64), augment, torch.nn.CrossEntropyLoss(), "cpu",
                         lambda: torch.autocast("cpu", enabled=False))
        assert alone["top1"] == ranks[0][name]["top1"] and alone["top5"] == ranks[0][name]["top5"], name
        assert alone["loss"] == pytest.approx(ranks[0][name]["loss"], rel=1e-5), name


TWO_NODE_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import ray
    import test_stream
    from test_stream import ids_loop, stream_worker_config
    ray.cloudpickle.register_pickle_by_value(test_stream)
    from pipeline.config import ResourcesConfig
    from pipeline.train import fit

    ray.init(address={gcs!r}, log_to_driver=False)
    config = stream_worker_config(Path({shards!r}), Path({out!r}))
    result = fit(ids_loop, config, ResourcesConfig(num_workers=2, max_failures=0), {out!r} + "/ckpt", "two-node")
    assert result.error is None, result.error
    from ray.util.state import list_tasks
    nodes = set()
    for _ in range(30):  # task events reach the state API within a few seconds
        tasks = list_tasks(address={dashboard!r}, filters=[("name", "=", "MapBatches(decode_batch)")], limit=10000,
                           raise_on_missing_output=False)
        nodes = {{t.node_id for t in tasks if t.node_id}}
        if len(nodes) > 1:
            break
        time.sleep(1)
    Path({out!r}, "decode_nodes.json").write_text(json.dumps(sorted(nodes)))
""")


@pytest.mark.slow
def test_on_a_two_node_cluster_decode_tasks_run_on_both_nodes(shards, tmp_path):
    """Two `ray start` nodes with more logical CPUs than the machine has, so Ray Data's decode tasks fit beside
    the two Train workers; the run's driver joins the cluster like a user's script."""
    from pipeline.engine.cluster import LocalCluster

    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    with LocalCluster([{"num_cpus": 3}, {"num_cpus": 3, "resources": {"node2": 1}}], env) as cluster:
        script = TWO_NODE_SCRIPT.format(tests=str(ROOT / "tests"), gcs=cluster.gcs, dashboard=cluster.dashboard,
                                        shards=str(shards), out=str(tmp_path))
        done = subprocess.run([sys.executable, "-c", script], env={**cluster.env, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    check_epochs(ranks, 2)
    assert len(json.loads((tmp_path / "decode_nodes.json").read_text())) == 2


def own_train_worker_pids() -> list[int]:
    """Ray Train workers of this process's Ray job (on the cluster it joined), not other jobs' or sessions'."""
    import ray
    from ray.util.state import list_actors

    job = ray.get_runtime_context().get_job_id()
    actors = list_actors(ray.get_runtime_context().gcs_address, detail=True,
                         filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return [actor.pid for actor in actors if actor.job_id == job and actor.pid]


def test_imagenet_resnet50_spec_trains_a_tiny_step_and_a_killed_run_resumes_at_its_epoch(ray_cluster, workdir):
    """experiments/imagenet_resnet50.yaml (the 90-epoch recipe) with small images, one worker and two epochs on
    a synthetic set in ImageNet's hub layout, Mixup/CutMix and an EMA switched on; the worker is killed in
    epoch 2 and the run resumes from epoch 1's checkpoint (the EMA's weights with it), logging each epoch once."""
    import signal
    import threading
    import time

    from mlflow import MlflowClient
    from rich.console import Console

    from pipeline.engine import workflow
    from pipeline.spec.loading import load_spec

    write_jpeg_shards(workdir / "imagenet", "train", 240, 2, (40, 36), 1000)
    write_jpeg_shards(workdir / "imagenet", "validation", 32, 1, (40, 36), 1000)
    spec = load_spec(ROOT / "experiments" / "imagenet_resnet50.yaml", overrides=[
        f"data.path={workdir / 'imagenet'}", "data.image_size=32", "data.val_fraction=0.1", "train.epochs=2",
        "train.global_batch_size=16", "train.batch_size=8", "train.warmup_epochs=0", "train.precision=fp32",
        "resources.num_workers=1", "resources.cpus_per_worker=1", "resources.gpus_per_worker=0",
        f"storage_path={workdir / 'checkpoints'}", f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
        "stages=[train]", "train.mixup=0.2", "train.cutmix=1.0", "train.ema_decay=0.9"])
    client = MlflowClient(spec.tracking.uri)
    killed = []

    def kill_the_worker_in_epoch_two():
        deadline = time.time() + 400
        while time.time() < deadline and not killed:
            experiment = client.get_experiment_by_name(spec.experiment_name)
            for run in client.search_runs([experiment.experiment_id], "tags.model = 'resnet50'") if experiment else []:
                if [m.step for m in client.get_metric_history(run.info.run_id, "epoch")] == [1]:
                    time.sleep(2.5)  # into epoch 2, after Ray Train registered epoch 1's checkpoint
                    if pids := own_train_worker_pids():
                        os.kill(pids[-1], signal.SIGKILL)
                        killed.append(1)
                        return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_the_worker_in_epoch_two, daemon=True)
    killer.start()
    context = workflow.run(spec, Console(file=open(os.devnull, "w")))
    killer.join(timeout=5)
    assert not context.failures, context.failure_summary()
    assert killed, "no worker was killed mid-run"
    run = client.get_run(context.outputs["train"]["resnet50"]["run_id"])
    assert run.info.status == "FINISHED" and int(run.data.tags["resumed_from_epoch"]) == 1
    # Two attempts: the first trained from epoch 1, the restarted one from epoch 2 (epoch 1 was not trained again).
    attempts = sorted(client.get_metric_history(run.info.run_id, "attempt_start_epoch"), key=lambda m: m.timestamp)
    assert [int(m.value) for m in attempts] == [1, 2]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == [1, 2]
    params = run.data.params
    # lr 0.1 per 256 images, linearly scaled to the global batch of 16 (8 per step, 2 accumulated).
    assert params["batch.global_batch"] == "16" and params["batch.grad_accum_steps"] == "2"
    assert float(params["batch.lr"]) == pytest.approx(0.1 * 16 / 256)
    assert params["batch.lr_scale_rule"] == "linear" and params["train.optimizer"] == "momentum"
    metrics = run.data.metrics
    assert 0 <= metrics["top1"] <= 100 and metrics["epochs"] == 2
    # Mixup/CutMix trained it; the EMA weights were evaluated beside the raw ones and checkpointed with them.
    assert 0 <= metrics["val_ema_top1"] <= 100 and 0 <= metrics["ema_top1_err"] <= 100
    assert len(client.get_metric_history(run.info.run_id, "val_ema_loss")) == 2


def test_global_batch_derives_the_per_worker_batch_accumulation_and_scaled_lr():
    from pipeline.spec.loading import parse_spec
    from pipeline.spec.sections import TrainConfig
    from pipeline.training.recipe import training_identity

    sgd = TrainConfig(optimizer="momentum", lr=0.1, lr_base_size=256, global_batch_size=1024, batch_size=256)
    assert sgd.batch_plan(8) == {"micro_batch": 128, "grad_accum_steps": 1, "global_batch": 1024,
                                 "lr": pytest.approx(0.4), "lr_scale_rule": "linear"}
    assert sgd.batch_plan(2)["micro_batch"] == 256 and sgd.batch_plan(2)["grad_accum_steps"] == 2
    assert sgd.batch_plan(1)["grad_accum_steps"] == 4 and sgd.batch_plan(1)["lr"] == pytest.approx(0.4)
    adam = TrainConfig(optimizer="adamw", lr=1e-3, lr_base_size=512, global_batch_size=2048)
    assert adam.batch_plan(4)["lr_scale_rule"] == "sqrt" and adam.batch_plan(4)["lr"] == pytest.approx(2e-3)
    # Without the new fields a spec means what it meant: batch_size per worker, lr as given.
    plain = TrainConfig(batch_size=64, lr=0.01)
    assert plain.batch_plan(2) == {"micro_batch": 64, "grad_accum_steps": 1, "global_batch": 128, "lr": 0.01,
                                   "lr_scale_rule": "none"}
    with pytest.raises(PipelineError, match="global_batch_size 1024 does not split evenly over 3 workers"):
        parse_spec({"name": "x", "models": ["lenet5"], "train": {"global_batch_size": 1024},
                    "resources": {"num_workers": 3}})
    tree = {"name": "x", "models": ["lenet5"], "train": {"batch_size": 32}}
    spec = parse_spec(tree)
    two = training_identity(spec, spec.models[0], spec.train, spec.data)
    spec = parse_spec({**tree, "train": {"batch_size": 16, "grad_accum_steps": 2}})
    assert training_identity(spec, spec.models[0], spec.train, spec.data)["global_batch"] == two["global_batch"] == 64


def test_an_image_folder_streams_through_the_same_decode(tmp_path):
    from PIL import Image

    for label, color in (("cat", 40), ("dog", 200)):
        (tmp_path / "train" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((20, 24, 3), color + i, dtype=np.uint8)).save(tmp_path / "train" / label / f"{i}.jpg")
    split = describe(str(tmp_path), "train")
    assert split.kind == "folder" and split.classes == ("cat", "dog") and split.num_rows == 6
    transform = {"train": False, "size": 16, "in_chans": 3, "interpolation": "bilinear", "crop_pct": 1.0}
    batch = {"piece": np.array([0]), "skip": np.array([1]), "take": np.array([4]), "epoch": np.array([0])}
    out = decode_batch(batch, split, transform, 3, None, 0)
    assert out["image"].shape == (4, 3, 16, 16) and out["id"].tolist() == [1, 2, 3, 4]
    assert out["label"].tolist() == [0, 0, 1, 1] and out["image"][0].mean() < 80 < out["image"][3].mean()


def test_predict_on_the_test_images_reproduces_the_reported_top1_of_a_streamed_model(ray_cluster, shards, workdir):
    """A model trained on a streamed set is evaluated on images resized to size / crop_pct and center-cropped;
    its logged model's predict on the test split's JPEG bytes gives the run's top-1 exactly, where squashing
    each image to the model's size (what serving did before) gives other probabilities."""
    import pyarrow.parquet as pq
    from rich.console import Console

    from pipeline.data.augment import normalize
    from pipeline.data.preprocess import eval_preprocessing
    from pipeline.engine import workflow
    from pipeline.results.serving import Classifier
    from pipeline.spec.loading import parse_spec
    from pipeline.tracking.logged_models import model_of_run
    from pipeline.tracking.model_files import download_model_files
    from pipeline.tracking.store import Tracker

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    spec = parse_spec({
        "name": "streamed-predict", "models": ["resnet20"], "stages": ["train"],
        "data": {"name": "huggingface", "path": str(shards), "test_split": "validation", "streaming": True,
                 "image_size": 16, "val_fraction": 0.1},
        "train": {"epochs": 1, "batch_size": 64, "warmup_epochs": 0, "precision": "fp32",
                  "transforms": {"crop_pct": 0.875}},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "max_failures": 0},
        "tracking": {"uri": uri}, "storage_path": str(workdir / "checkpoints")})
    context = workflow.run(spec, Console(file=open(os.devnull, "w")))
    assert not context.failures, context.failure_summary()
    run_id = context.outputs["train"]["resnet20"]["run_id"]
    tracker = Tracker(uri)
    weights, meta = download_model_files(tracker, model_of_run(tracker.client, run_id), workdir / "model")
    classifier = Classifier(weights, meta)
    assert classifier.meta["preprocessing"]["kind"] == "timm_eval" and classifier.meta["preprocessing"]["crop_pct"] < 1
    table = pq.read_table(sorted((shards / "data").glob("validation-*.parquet")))
    blobs, labels = [row["bytes"] for row in table.column("image").to_pylist()], torch.tensor(table.column("label").to_pylist())
    probabilities = torch.cat([classifier.probabilities(blobs[i:i + 64]) for i in range(0, len(blobs), 64)])
    top1 = 100 * (probabilities.argmax(1) == labels).sum().item() / len(labels)
    assert top1 == pytest.approx(tracker.client.get_run(run_id).data.metrics["top1"], abs=1e-9)
    from pipeline.data.preprocess import eval_images

    squashed = eval_images(blobs[:64], eval_preprocessing(3, 16))
    meta_ = classifier.meta
    with torch.no_grad():
        other = classifier.model(normalize(squashed, torch.tensor(meta_["mean"]), torch.tensor(meta_["std"]))).softmax(1)
    assert not torch.allclose(other, probabilities[:64], atol=1e-4)
