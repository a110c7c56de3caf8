"""Workflows on a real two-node Ray cluster and a real MLflow server: failures and bad requests are one-line
messages that lose nothing; a unit waiting for CPUs another job holds says so. Units running concurrently
on both nodes, a finished spec run again training nothing, a changed recipe retraining only its unit,
interrupts, kills and resume: tests/test_faults.py."""
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml
from conftest import run_cli
from mlflow import MlflowClient
from rich.console import Console

from pipeline.engine import scheduler, workflow
from pipeline.spec.loading import parse_spec


def write_spec(workdir: Path, name: str, models, epochs: int = 2, size: int = 400, **extra) -> Path:
    spec = {"name": name, "data": {"name": "synthetic", "synthetic_size": size, "val_fraction": 0.2},
            "models": models, "train": {"epochs": epochs, "batch_size": 32, "lr": 0.003, "warmup_epochs": 0},
            "resources": {"num_workers": 1, "cpus_per_worker": 1, "threads_per_worker": 1, "max_failures": 0},
            "tracking": {"experiment": name}, "storage_path": str(workdir / "checkpoints"),
            "stages": ["train", "leaderboard"], **extra}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def cli_env(cluster, tracking: str | None = None) -> dict:
    return {**cluster["env"], "RAY_ADDRESS": cluster["gcs"], "MLFLOW_TRACKING_URI": tracking or cluster["tracking"]}


def runs_of(client, experiment: str, query: str = ""):
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], query) if found else []


def unit_runs(client, experiment: str) -> dict[str, list]:
    units: dict[str, list] = {}
    for run in runs_of(client, experiment, "tags.unit != ''"):
        units.setdefault(run.data.tags["unit"], []).append(run)
    return units


def ok(result):
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def test_a_failing_unit_does_not_stop_the_others_and_bad_requests_are_one_line_errors(cluster, workdir):
    client = MlflowClient(cluster["tracking"])
    env = cli_env(cluster)
    # fusedadam needs CUDA: that unit fails on this CPU cluster, the other trains to the end.
    spec = write_spec(workdir, "wf-failure", ["lenet5", {"name": "resnet20", "train": {"optimizer": "fusedadam"}}],
                      epochs=1)
    result = run_cli("run", spec.name, cwd=workdir, env=env, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    assert "train/resnet20 failed:" in result.stdout and "CUDA" in result.stdout
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: train/resnet20 failed:") and "CUDA" in result.stderr
    units = unit_runs(client, "wf-failure")
    assert units["train/lenet5"][0].info.status == "FINISHED"
    assert units["train/resnet20"][0].info.status == "FAILED" and "CUDA" in units["train/resnet20"][0].data.tags["error"]

    # A unit asking for more than any node has, on this cluster the driver joined (an autoscaler could grow
    # it): a warning, a bounded wait, then a one-line failure naming what is missing; no unit run is made.
    before = len(runs_of(client, "wf-failure", "tags.unit != ''"))
    big = run_cli("run", spec.name, "--set", "models.resnet20.resources.cpus_per_worker=8",
                  "--set", "resources.max_wait_s=3", cwd=workdir, env=env)
    assert big.returncode == 2 and "Traceback" not in big.stderr + big.stdout
    assert "warning: unit train/resnet20: one worker asks for 8 CPU but the largest node has 1 CPU" in big.stdout
    assert "train/resnet20 failed: waited 3 s" in big.stdout, big.stdout
    assert len(runs_of(client, "wf-failure", "tags.unit != ''")) == before
    # On a local cluster, whose size is known, the same request is refused before anything runs.
    local = run_cli("run", spec.name, "--set", "models.resnet20.resources.num_workers=4", cwd=workdir,
                    env={**env, "RAY_ADDRESS": ""})
    assert local.returncode == 2 and "unit train/resnet20: 4 workers ask for 4 CPU" in local.stderr, local.stderr
    assert len(local.stderr.strip().splitlines()) == 1

    # A stage that needs what no stage of the spec produces: refused offline by validate.
    lonely = write_spec(workdir, "wf-lonely", ["lenet5"], stages=["retrain"],
                        sweep={"space": {"lr": {"type": "choice", "values": [0.01]}}})
    refused = run_cli("validate", lonely.name, cwd=workdir, env=env)
    assert refused.returncode == 2 and "no stage produces" in refused.stderr


def test_a_unit_whose_workers_wait_for_cpus_held_outside_the_workflow_says_so(ray_cluster, workdir, monkeypatch):
    """Another job holds one of the cluster's two CPUs: the unit's two workers wait, and after the wait a line
    says what they wait for (it was a silent wait); once the other job ends, the unit trains."""
    from ray.util import placement_group, placement_group_table, remove_placement_group

    monkeypatch.setattr(scheduler, "STARVED_S", 3.0)
    spec = yaml.safe_load(write_spec(workdir, "wf-starved", ["lenet5"], epochs=1, size=200).read_text())
    spec["resources"]["num_workers"] = 2
    spec["tracking"] = {"uri": f"sqlite:///{workdir / 'mlflow.db'}"}
    other_job = placement_group([{"CPU": 1}])
    ray_cluster.get(other_job.ready(), timeout=60)
    out = io.StringIO()

    def end_the_other_job_once_named():
        deadline = time.time() + 240
        while "still wait" not in out.getvalue() and time.time() < deadline:
            time.sleep(0.5)
        remove_placement_group(other_job)

    threading.Thread(target=end_the_other_job_once_named, daemon=True).start()
    try:
        context = workflow.run(parse_spec(spec), Console(file=out, width=400))
    finally:
        if placement_group_table(other_job)["state"] != "REMOVED":
            remove_placement_group(other_job)
    named = [line for line in out.getvalue().splitlines() if "still wait" in line]
    assert named == ["train/lenet5: its workers still wait for 2 CPU after 3 s; the cluster has 1 CPU free, the "
                     "rest held outside this workflow (`ray status` shows by what)"]
    assert context.failures == [] and "test: top-1" in out.getvalue()


def test_two_drivers_on_one_spec_train_each_unit_once_and_reuse_each_others_results(cluster, workdir):
    """A second terminal starts the same spec a few seconds after the first: each unit is claimed by one
    driver at the moment it starts, trained once, and the other driver reuses the result."""
    client = MlflowClient(cluster["tracking"])
    models = [{"name": "lenet5", "train": {"lr": lr}} for lr in (0.001, 0.002, 0.003, 0.004)]
    spec = write_spec(workdir, "wf-two-drivers", models, epochs=1, size=200)
    env = {**os.environ, **cli_env(cluster)}
    drivers = []
    for _ in range(2):
        drivers.append(subprocess.Popen([sys.executable, "-m", "pipeline", "run", spec.name], cwd=workdir, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        time.sleep(4)
    outputs = [driver.communicate(timeout=900)[0] for driver in drivers]
    for driver, output in zip(drivers, outputs):
        assert driver.returncode == 0, output[-4000:]

    units = unit_runs(client, "wf-two-drivers")
    assert sorted(units) == ["train/lenet5", "train/lenet5#1", "train/lenet5#2", "train/lenet5#3"]
    assert all(len(runs) == 1 and runs[0].info.status == "FINISHED" for runs in units.values()), \
        {name: [r.info.status for r in runs] for name, runs in units.items()}
    workflows = {run.info.run_id: run for run in runs_of(client, "wf-two-drivers", "tags.stage = 'workflow'")}
    assert len(workflows) == 2
    trained_by = {run_id: {name for name, runs in units.items() if runs[0].data.tags["mlflow.parentRunId"] == run_id}
                  for run_id in workflows}
    reused_by = {run_id: set(filter(None, run.data.tags.get("reused_units", "").split(",")))
                 for run_id, run in workflows.items()}
    first, second = workflows
    assert trained_by[first] | trained_by[second] == set(units)  # every unit trained, by one driver
    assert reused_by[first] == trained_by[second] and reused_by[second] == trained_by[first]


def test_max_concurrent_units_bounds_how_many_units_train_at_once(ray_cluster, workdir):
    """Three one-worker units on a two-CPU cluster: with max_concurrent_units 1 they train one after another
    (without the bound two would run together, as the fault suite's reference run shows)."""
    spec = yaml.safe_load(write_spec(workdir, "wf-bound", [{"name": "lenet5", "train": {"lr": lr}}
                                                           for lr in (0.001, 0.002, 0.003)], epochs=1, size=200,
                                     max_concurrent_units=1).read_text())
    spec["tracking"] = {"uri": f"sqlite:///{workdir / 'mlflow.db'}", "experiment": "wf-bound"}
    context = workflow.run(parse_spec(spec), Console(file=io.StringIO(), width=200))
    assert context.failures == []
    units = unit_runs(MlflowClient(spec["tracking"]["uri"]), "wf-bound")
    spans = sorted((runs[0].info.start_time, runs[0].info.end_time) for runs in units.values())
    assert len(spans) == 3
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), spans


def test_the_spec_description_is_shown_on_the_first_line_and_kept_on_the_workflow_run(workdir):
    spec = parse_spec({"name": "described", "description": "Tiny [check] of descriptions.\nMore detail.",
                       "stages": ["leaderboard"], "tracking": {"uri": f"sqlite:///{workdir / 'mlflow.db'}"}})
    output = io.StringIO()
    context = workflow.run(spec, Console(file=output, width=200))
    assert output.getvalue().splitlines()[0].startswith("described (Tiny [check] of descriptions.): 1 unit(s)")
    tags = MlflowClient(spec.tracking.uri).get_run(context.parent_run_id).data.tags
    assert tags["description"] == spec.description
    (workdir / "described.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_defaults=True)))
    validated = run_cli("validate", "described.yaml", cwd=workdir)
    assert validated.stdout.startswith("ok: described (Tiny [check] of descriptions.): 0 model(s)"), validated.stdout


def test_torch_compile_and_channels_last_train_on_cpu_and_keep_a_plain_state_dict(ray_cluster, workdir):
    """`train.compile` and `train.channels_last` on a tiny model, one epoch: the run trains through the compiled
    model, and its LoggedModel's weights load into the plain network (no `_orig_mod.` keys)."""
    import torch

    from models._factory import build_model
    from pipeline.tracking.model_files import download_model_files
    from pipeline.tracking.store import Tracker

    spec = yaml.safe_load(write_spec(workdir, "wf-compile", ["lenet5"], epochs=1, size=100).read_text())
    spec["train"].update(compile=True, channels_last=True)
    spec["tracking"] = {"uri": f"sqlite:///{workdir / 'mlflow.db'}", "experiment": "wf-compile"}
    context = workflow.run(parse_spec(spec), Console(file=io.StringIO(), width=200))
    assert context.failures == []
    output = context.outputs["train"]["lenet5"]
    run = MlflowClient(spec["tracking"]["uri"]).get_run(output["run_id"])
    assert run.data.params["train.compile"] == "True" and run.data.params["train.channels_last"] == "True"
    assert 0 <= run.data.metrics["top1"] <= 100 and run.data.metrics["train_loss"] == run.data.metrics["train_loss"]
    weights, _ = download_model_files(Tracker(spec["tracking"]["uri"]), output["model_id"], workdir / "model")
    state = torch.load(weights, weights_only=True)
    assert not any(key.startswith("_orig_mod") for key in state)
    build_model("lenet5", 10, 1).load_state_dict(state)  # strict: every key of the plain network
