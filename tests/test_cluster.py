"""A real two-node Ray cluster on this machine (head and a second node as separate `ray start` processes,
token auth on), a sweep submitted through Ray Jobs, results in an MLflow server reached over HTTP."""
import yaml
from conftest import run_cli
from mlflow import MlflowClient

from pipeline.engine.net import free_port


def test_sweep_submitted_through_ray_jobs_runs_on_both_nodes_and_tracks_to_mlflow_server(cluster, workdir):
    spec = {"name": "clustersweep", "data": {"name": "synthetic", "synthetic_size": 200, "val_fraction": 0.25},
            "models": ["lenet5"], "train": {"epochs": 1, "batch_size": 32, "warmup_epochs": 0},
            "sweep": {"space": {"lr": {"type": "grid", "values": [0.002, 0.01]}}, "num_samples": 1,
                      "scheduler": "none", "max_concurrent_trials": 2,
                      "resources": {"num_workers": 1, "cpus_per_worker": 1, "max_failures": 0}},
            "stages": ["sweep"], "storage_path": str(workdir / "checkpoints")}
    (workdir / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {**cluster["env"], "MLFLOW_TRACKING_URI": cluster["tracking"]}
    result = run_cli("run", "spec.yaml", "--address", cluster["address"], cwd=workdir, env=env, timeout=420)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SUCCEEDED" in result.stdout

    client = MlflowClient(cluster["tracking"])  # over HTTP, where the job logged
    experiment = client.get_experiment_by_name("synthetic")
    trials = client.search_runs([experiment.experiment_id], "tags.stage = 'trial'")
    assert len(trials) == 2 and all(t.data.tags["end"] == "completed" for t in trials)
    assert len({t.data.tags["ray_node_id"] for t in trials}) == 2  # one trial on each node
    [sweep] = client.search_runs([experiment.experiment_id], "tags.stage = 'sweep'")
    assert sweep.info.status == "FINISHED" and "best.lr" in sweep.data.params

    listed = run_cli("jobs", "--address", cluster["address"], cwd=workdir, env=env)
    assert listed.returncode == 0 and "pipeline-clustersweep" in listed.stdout and "SUCCEEDED" in listed.stdout

    # Token auth is on: a client with another token is refused with a one-line error.
    wrong = run_cli("jobs", "--address", cluster["address"], cwd=workdir, env={**env, "RAY_AUTH_TOKEN": "0" * 64})
    assert wrong.returncode == 2 and "token" in wrong.stderr and "Traceback" not in wrong.stderr


def test_failing_job_and_unreachable_cluster_are_one_line_errors(cluster, workdir):
    spec = {"name": "failing", "data": {"name": "huggingface", "path": str(workdir / "missing")},
            "models": ["lenet5"], "stages": ["train"]}
    (workdir / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {**cluster["env"], "MLFLOW_TRACKING_URI": cluster["tracking"]}
    failed = run_cli("run", "spec.yaml", "--address", cluster["address"], cwd=workdir, env=env, timeout=300)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith("error: job pipeline-failing-")
    assert "failed" in failed.stderr

    unreachable = run_cli("run", "spec.yaml", "--address", f"http://127.0.0.1:{free_port()}", cwd=workdir, env=env)
    assert unreachable.returncode == 2 and "is unreachable" in unreachable.stderr
    assert len(unreachable.stderr.strip().splitlines()) == 1


def test_a_job_without_a_tracking_store_is_refused_before_it_is_submitted(cluster, workdir):
    """Without a tracking URI a job would write its results into a SQLite file in its working folder on the
    head node, which Ray deletes: refused in one line naming the variable, and no job is submitted."""
    spec = {"name": "untracked", "data": {"name": "synthetic", "synthetic_size": 100}, "models": ["lenet5"],
            "train": {"epochs": 1}, "stages": ["train"]}
    (workdir / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {**cluster["env"], "MLFLOW_TRACKING_URI": ""}
    before = run_cli("jobs", "--address", cluster["address"], cwd=workdir, env=env).stdout.count("pipeline-")
    refused = run_cli("run", "spec.yaml", "--address", cluster["address"], cwd=workdir, env=env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "set MLFLOW_TRACKING_URI" in refused.stderr
    assert run_cli("jobs", "--address", cluster["address"], cwd=workdir, env=env).stdout.count("pipeline-") == before
