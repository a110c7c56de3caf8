"""System metrics: MLflow's own monitors sampled without a run (as on a training worker), their reports as
the relay's events, and the spec switch that turns them off."""
import time

from pipeline.spec.loading import parse_spec
from pipeline.tracking.store import Tracker
from pipeline.tracking.system_metrics import Sampler
from pipeline.tracking.writer import RunWriter


def test_a_sampler_reports_node_metrics_that_the_run_writer_logs(tmp_path):
    events = []
    sampler = Sampler(lambda kind, **payload: events.append({"kind": kind, **payload}), node=1,
                      sample_every_s=0.05, report_every_s=0.2).start()
    deadline = time.time() + 60  # the sampler's first sample creates MLflow's monitors: slow on a loaded machine
    while len(events) < 2 and time.time() < deadline:
        time.sleep(0.05)
    sampler.stop()
    assert len(events) >= 2 and all(e["kind"] == "system" and e["node"] == 1 for e in events)
    metrics = events[-1]["metrics"]
    assert 0 <= metrics["system/node_1/cpu_utilization_percentage"] <= 100
    assert 0 < metrics["system/node_1/system_memory_usage_percentage"] < 100
    assert metrics["system/node_1/system_memory_usage_megabytes"] > 10
    steps = [e["step"] for e in events]
    assert steps == sorted(steps)
    # The driver's writer logs each report at its step (seconds since the sampler started).
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracker.start_run(tracker.experiment_id("sys"), "run")
    writer = RunWriter(tracker, run_id)
    for event in events:
        writer(event)
    history = tracker.client.get_metric_history(run_id, "system/node_1/cpu_utilization_percentage")
    assert sorted(h.step for h in history) == sorted(steps)


def test_the_spec_switch():
    on = parse_spec({"name": "s", "models": ["lenet5"]})
    off = parse_spec({"name": "s", "models": ["lenet5"], "tracking": {"system_metrics": False}})
    assert on.tracking.system_metrics is True and off.tracking.system_metrics is False


def system_keys(client, run_id: str) -> set[str]:
    return {key for key in client.get_run(run_id).data.metrics if key.startswith("system/")}


def test_system_metrics_off_logs_none_on_a_real_run_and_on_logs_them(ray_cluster, trained, workdir):
    """A tiny real training run with `tracking.system_metrics: false` logs no `system/*` metric in any of its
    runs; the shared workflow's runs (the default, on) each log the node's CPU and memory use. A run shorter
    than a sampling interval still logs one reading when on (the sampler reports on stop), so the tiny run
    would show them if the switch were ignored."""
    import os

    from rich.console import Console

    from pipeline.engine import workflow

    spec = parse_spec({"name": "quiet", "data": {"name": "synthetic", "synthetic_size": 200, "val_fraction": 0.2},
                       "models": ["lenet5"], "stages": ["train"],
                       "train": {"epochs": 1, "batch_size": 32, "warmup_epochs": 0},
                       "tracking": {"uri": f"sqlite:///{workdir / 'mlflow.db'}", "system_metrics": False},
                       "storage_path": str(workdir / "checkpoints")})
    context = workflow.run(spec, Console(file=open(os.devnull, "w")))
    assert not context.failures, context.failure_summary()
    client = Tracker(spec.tracking.uri).client
    runs = client.search_runs([context.experiment_id])
    assert {r.data.tags.get("stage") for r in runs} == {"train", "workflow"}
    assert all(not system_keys(client, r.info.run_id) for r in runs)
    assert "top1" in client.get_run(context.outputs["train"]["lenet5"]["run_id"]).data.metrics  # it did train
    on = trained.tracker.client
    for model, run_id in trained.runs.items():
        assert {"system/node_0/cpu_utilization_percentage", "system/node_0/system_memory_usage_megabytes"} <= \
            system_keys(on, run_id), model
