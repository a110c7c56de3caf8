"""A real two-node Ray cluster on this machine (head and a second node as separate `ray start` processes,
token auth on), a sweep submitted through Ray Jobs, results in an MLflow server reached over HTTP."""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from conftest import run_cli

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def http_ok(url: str) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=2)
        return True
    except Exception as exc:
        return getattr(exc, "code", None) == 401  # the dashboard is up, and asks for the token


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (1 CPU) + second node (1 CPU, resource node2) and an MLflow server; only these processes
    are torn down at the end (never `ray stop`, which would end other people's clusters)."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    token = secrets.token_hex(32)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}  # the job's `python` is the project's
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    gcs, dashboard, mlflow_port = free_port(), free_port(), free_port()
    temp = Path("/tmp") / f"rt{secrets.token_hex(3)}"  # short: Ray's socket paths have a length limit
    common = ["--num-cpus", "1", "--block", "--disable-usage-stats", "--min-worker-port", "0", "--max-worker-port", "0"]
    processes = []

    def start(command, extra_env=None):
        processes.append(subprocess.Popen(command, env={**env, **(extra_env or {})}, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True))

    try:
        start([str(VENV_BIN / "ray"), "start", "--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(dashboard), "--temp-dir", str(temp), "--node-manager-port", str(free_port()),
               "--object-manager-port", str(free_port()), "--ray-client-server-port", str(free_port()),
               "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
               "--runtime-env-agent-port", str(free_port()), *common])
        start([str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
               "--default-artifact-root", (tmp_path / "artifacts").as_uri(), "--host", "127.0.0.1",
               "--port", str(mlflow_port), "--workers", "1"],
              extra_env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        address = f"http://127.0.0.1:{dashboard}"
        wait_for(lambda: http_ok(f"{address}/api/version"), 120, "the head's dashboard")
        start([str(VENV_BIN / "ray"), "start", "--address", f"127.0.0.1:{gcs}", "--resources", '{"node2": 1}',
               # its own temp dir: nodes sharing one would delete each other's job working directories
               "--temp-dir", f"{temp}n2", "--node-manager-port", str(free_port()),
               "--object-manager-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
               "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()), *common])
        tracking = f"http://127.0.0.1:{mlflow_port}"
        wait_for(lambda: http_ok(f"{tracking}/health"), 120, "the MLflow server")
        yield {"address": address, "tracking": tracking, "env": env, "token": token}
    finally:
        for process in reversed(processes):  # our own process groups only
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        for folder in (temp, Path(f"{temp}n2")):
            shutil.rmtree(folder, ignore_errors=True)


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
