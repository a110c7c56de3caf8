"""A team tracking server for real: Debian's PostgreSQL, `mlflow server --app-name basic-auth` with an
artifact store (infra/mlflow/run-local.sh), and the pipeline logging to it with credentials from the environment."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "infra" / "mlflow" / "run-local.sh"
PASSWORD = "team-Admin-pw1"

pytestmark = pytest.mark.skipif(not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")),
                                reason="PostgreSQL is not installed (scripts/setup.sh installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(auth.encode()).decode())
    try:
        return urllib.request.urlopen(request, timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def team_server():
    # PostgreSQL runs as user postgres when the tests run as root: its folder must be reachable.
    home = Path(tempfile.mkdtemp(prefix="team-server-"))
    home.chmod(0o755)
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MLFLOW_SERVER_HOME": str(home / "server"), "PGPORT": str(free_port()), "MLFLOW_HOST": "127.0.0.1",
           "MLFLOW_PORT": str(port), "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD, "MLFLOW_WORKERS": "1",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(home / "server.log", "w")
    server = subprocess.Popen([str(SCRIPT)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, (home / "server.log").read_text()[-3000:]
            try:
                if status(f"{url}/health") == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "MLflow server did not come up: " + (home / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        yield url, home
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=60)
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def test_anonymous_requests_are_refused(team_server):
    url, _ = team_server
    api = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert status(api) == 401
    assert status(api, "admin:wrong") == 401
    assert status(api, f"admin:{PASSWORD}") == 200


@pytest.mark.slow
def test_pipeline_logs_to_the_team_server_with_credentials_from_the_environment(team_server, ray_cluster,
                                                                                 workdir, monkeypatch):
    from mlflow import MlflowClient

    from pipeline.engine import workflow
    from pipeline.results import leaderboard
    from pipeline.spec.loading import parse_spec

    url, home = team_server
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    spec = parse_spec({
        "name": "team", "data": {"name": "synthetic", "synthetic_size": 300},
        "models": ["lenet5"], "train": {"epochs": 2, "batch_size": 64, "warmup_epochs": 0},
        "resources": {"num_workers": 1}, "tracking": {"uri": url, "experiment": "team-board"},
        "storage_path": str(workdir / "checkpoints")})
    context = workflow.run(spec, Console(file=open(os.devnull, "w")))
    assert not context.failures
    run_id = context.outputs["train"]["lenet5"]["run_id"]
    client = MlflowClient(url)
    # Per-epoch metrics reached the server through the driver, the run's only MLflow writer, with the credentials.
    assert sorted(m.step for m in client.get_metric_history(run_id, "train_loss")) == [1, 2]
    run = client.get_run(run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    from pipeline.tracking.logged_models import model_of_run

    model_id = model_of_run(client, run_id)  # the run's LoggedModel, its files through the server
    assert {"artifacts/model.pt", "artifacts/model.json"} <= \
        {a.path for a in client.list_logged_model_artifacts(model_id, "artifacts")}
    assert list((home / "server" / "artifacts").rglob("model.pt"))  # stored by the server's artifact store
    board = leaderboard.build(url, "team-board")
    assert [r["model"] for r in board.rows] == ["lenet5"] and board.ui_url == url
    # The same request without credentials is refused.
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    assert status(f"{url}/api/2.0/mlflow/runs/get?run_id={run_id}") == 401
