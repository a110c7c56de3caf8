"""Sweeps on a real local Ray cluster and a real MLflow store: trials as child runs, ASHA, failures,
the retrain stage, and bad input. Interrupted and killed sweeps resume: tests/test_faults.py."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from mlflow import MlflowClient
from rich.console import Console

from pipeline.engine import workflow
from pipeline.errors import PipelineError
from pipeline.results import leaderboard
from pipeline.spec.loading import parse_spec


def sweep_spec(workdir: Path, **sweep) -> dict:
    return {"name": "tinysweep", "data": {"name": "synthetic", "synthetic_size": 240, "val_fraction": 0.25},
            "models": ["lenet5"],
            "train": {"epochs": 2, "batch_size": 32, "lr": 0.005, "warmup_epochs": 0},
            "sweep": {"space": {"lr": {"type": "loguniform", "low": 0.001, "high": 0.02},
                                # fusedadam needs CUDA: that trial fails on a CPU cluster
                                "optimizer": {"type": "grid", "values": ["adamw", "sgd", "fusedadam"]}},
                      "num_samples": 1, "search": "random", "scheduler": "asha", "max_concurrent_trials": 2,
                      "retrain_epochs": 1,
                      # half a CPU per worker: a trial stopped by ASHA may hold its CPU a while (see README)
                      "resources": {"num_workers": 1, "cpus_per_worker": 0.5, "threads_per_worker": 1,
                                    "max_failures": 0}, **sweep},
            "stages": ["sweep", "retrain"],
            "tracking": {"uri": f"sqlite:///{workdir / 'mlflow.db'}"}, "storage_path": str(workdir / "checkpoints")}


def runs_by_stage(client, experiment_id, stage):
    return client.search_runs([experiment_id], f"tags.stage = '{stage}'")


def test_sweep_trials_are_child_runs_best_config_recorded_failed_trial_does_not_end_it(ray_cluster, workdir):
    spec = parse_spec(sweep_spec(workdir))
    context = workflow.run(spec, Console(file=open(os.devnull, "w")))
    client = MlflowClient(spec.tracking.uri)
    [sweep] = runs_by_stage(client, context.experiment_id, "sweep")
    trials = runs_by_stage(client, context.experiment_id, "trial")
    assert sweep.data.tags["mlflow.parentRunId"] == context.parent_run_id
    assert len(trials) == 3 and all(t.data.tags["mlflow.parentRunId"] == sweep.info.run_id for t in trials)
    by_optimizer = {t.data.params["train.optimizer"]: t for t in trials}
    failed = by_optimizer["fusedadam"]
    assert failed.info.status == "FAILED" and failed.data.tags["end"] == "failed"
    assert "CUDA" in failed.data.tags["error"]
    for name in ("adamw", "sgd"):
        run = by_optimizer[name]
        assert run.info.status == "FINISHED" and run.data.tags["end"] in ("completed", "stopped_early")
        epochs = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
        assert epochs == list(range(1, len(epochs) + 1)) and epochs  # per-epoch metrics, each once
        assert run.data.params["sampled.lr"] == run.data.params["train.lr"]
        assert "top1" not in run.data.metrics  # trials never see the test set
        assert run.data.metrics["startup_s"] > 0
    # The best config is the finished trial with the lowest final val_loss, recorded on the sweep run.
    finished = [t for t in trials if t.info.status == "FINISHED"]
    best = min(finished, key=lambda t: t.data.metrics["val_loss"])
    assert sweep.info.status == "FINISHED"
    assert sweep.data.params["best.optimizer"] == best.data.params["train.optimizer"]
    assert float(sweep.data.params["best.lr"]) == pytest.approx(float(best.data.params["train.lr"]))
    assert sweep.data.tags["best_trial_id"] == best.data.tags["trial_id"]
    assert sweep.data.metrics["best_val_loss"] == pytest.approx(best.data.metrics["val_loss"])
    # The retrain run: best config, train + validation, test metrics, on the leaderboard, linked to its sweep.
    [retrain] = runs_by_stage(client, context.experiment_id, "retrain")
    assert retrain.data.tags["sweep_run_id"] == sweep.info.run_id
    assert retrain.data.params["train.optimizer"] == best.data.params["train.optimizer"]
    assert retrain.data.params["data.val_fraction"] == "0.0" and retrain.data.params["train.epochs"] == "1"
    assert "top1_err" in retrain.data.metrics
    board = leaderboard.build(spec.tracking.uri, spec.experiment_name)
    assert [row["run_id"] for row in board.rows] == [retrain.info.run_id]
    assert context.failures == []  # a failed trial does not fail the sweep


def test_a_train_run_whose_controller_is_killed_frees_its_cpus_while_another_ray_runs_here(ray_cluster, tmp_path):
    """A sweep trial that ASHA stops is killed with its Train controller; Ray Train's placement-group cleaner
    then frees the trial's CPUs. It looks for its cluster's state API on this machine, and with a second Ray
    instance here (another user's run, a killed driver's leftovers) it gave up for good: the CPUs stayed held
    until Ray exited, and a retrain needing them waited forever."""
    import ray

    other = subprocess.Popen([sys.executable, "-c", "import ray, sys; ray.init(num_cpus=1, include_dashboard=True, "
                              "logging_level='ERROR'); print('up', flush=True); sys.stdin.read(); ray.shutdown()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "up"
        started = tmp_path / "started"

        @ray.remote(num_cpus=0)
        class Trial:  # a Tune trial as Ray Tune runs one: an actor that waits on its Train run
            def fit(self, marker: str) -> None:
                from ray.train import RunConfig, ScalingConfig
                from ray.train.torch import TorchTrainer

                def loop():
                    Path(marker).touch()
                    time.sleep(600)

                TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                             run_config=RunConfig(name="held", storage_path=str(tmp_path))).fit()

        total = ray.cluster_resources()["CPU"]
        trial = Trial.remote()
        trial.fit.remote(str(started))
        deadline = time.time() + 180
        while not started.exists() and time.time() < deadline:
            time.sleep(0.5)
        assert started.exists() and ray.available_resources().get("CPU", 0) <= total - 1
        ray.kill(trial)
        deadline = time.time() + 60
        while ray.available_resources().get("CPU", 0) < total and time.time() < deadline:
            time.sleep(1)
        assert ray.available_resources().get("CPU", 0) == total
    finally:
        other.stdin.close()
        other.wait(timeout=60)


@pytest.mark.parametrize("sweep, message", [
    ({"space": {"lr": {"type": "normal", "low": 0.1, "high": 1}}}, "unknown search-space type 'normal'"),
    ({"space": {"learning_rate": {"type": "uniform", "low": 0.1, "high": 1}}},
     "'learning_rate' is not a field of the train section"),
    ({"space": {"lr": {"type": "uniform", "low": 1, "high": 0.1}}}, "needs low < high"),
    ({"space": {"batch_size": {"type": "choice", "values": [64, 0]}}}, "greater than or equal to 1"),
    ({"space": {"lr": {"type": "uniform", "low": 0.1, "high": 1}}, "search": "grid"}, "needs discrete values"),
    ({"space": {"lr": {"type": "grid", "values": [0.1]}}, "search": "optuna"}, "cannot enumerate a grid"),
    ({"space": {"lr": {"type": "uniform", "low": 0.1, "high": 1}}, "metric": "top1"}, "sweep.metric"),
])
def test_bad_sweep_input_is_a_one_line_error(workdir, sweep, message):
    tree = sweep_spec(workdir)
    tree["sweep"] = sweep
    with pytest.raises(PipelineError, match=message.replace("(", r"\(")):
        parse_spec(tree)


def test_unknown_search_type_on_the_command_line(workdir):
    tree = sweep_spec(workdir)
    tree["sweep"]["space"]["lr"]["type"] = "logunifrom"
    (workdir / "bad.yaml").write_text(yaml.safe_dump(tree))
    result = run_cli("run", "bad.yaml", cwd=workdir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "unknown search-space type 'logunifrom' (did you mean loguniform" in result.stderr
    assert not (workdir / "mlflow.db").exists()  # nothing was started


def test_sweep_stage_needs_a_sweep_section(workdir):
    tree = sweep_spec(workdir)
    del tree["sweep"]
    with pytest.raises(PipelineError, match="stage 'sweep' needs a sweep: section"):
        parse_spec(tree)
    tree = sweep_spec(workdir)
    tree["stages"] = ["retrain"]
    with pytest.raises(PipelineError, match="no stage produces one: add stage 'sweep'"):
        parse_spec(tree)
    tree["stages"] = ["retrain", "sweep"]  # the stages form a DAG: their order in the list does not matter
    assert parse_spec(tree).stages == ["retrain", "sweep"]


def test_asha_stops_a_bad_trial_early_and_optuna_samples_the_space(ray_cluster, workdir):
    """One trial at a time: a good learning rate first, then one too small to learn; ASHA stops the second at
    its first rung, epochs before its end. Then Optuna samples a range, each trial its own value."""
    tree = sweep_spec(workdir, space={"lr": {"type": "grid", "values": [0.01, 1.0e-7]}}, search="grid",
                      scheduler="asha", grace_period=1, reduction_factor=2, metric="val_top1", max_concurrent_trials=1)
    tree.update(name="asha", stages=["sweep"], train={**tree["train"], "epochs": 6, "optimizer": "adamw"},
                data={**tree["data"], "synthetic_size": 1200})
    context = workflow.run(parse_spec(tree), Console(file=open(os.devnull, "w")))
    client = MlflowClient(tree["tracking"]["uri"])
    trials = {float(t.data.params["train.lr"]): t for t in runs_by_stage(client, context.experiment_id, "trial")}
    assert trials[0.01].data.tags["end"] == "completed" and trials[0.01].data.metrics["epochs_trained"] == 6
    assert trials[1e-7].data.tags["end"] == "stopped_early" and trials[1e-7].data.metrics["epochs_trained"] < 6

    tree = sweep_spec(workdir, space={"lr": {"type": "loguniform", "low": 0.001, "high": 0.02}}, search="optuna",
                      scheduler="none", num_samples=2, max_concurrent_trials=1)
    tree.update(name="optuna", stages=["sweep"], train={**tree["train"], "epochs": 1},
                tracking={**tree["tracking"], "experiment": "optuna"})
    context = workflow.run(parse_spec(tree), Console(file=open(os.devnull, "w")))
    trials = runs_by_stage(client, context.experiment_id, "trial")
    sampled = [float(t.data.params["sampled.lr"]) for t in trials]
    assert len(trials) == 2 and all(t.data.tags["end"] == "completed" for t in trials)
    assert len(set(sampled)) == 2 and all(0.001 <= lr < 0.02 for lr in sampled)
    assert context.failures == []
