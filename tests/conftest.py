import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The suite's own kept Ray cluster (pipeline/engine/warm_cluster.py): the commands the tests run join it instead of
# each starting a cluster; stopped when the session ends. Never a user's kept cluster.
os.environ["PIPELINE_CLUSTER_DIR"] = tempfile.mkdtemp(prefix="pipeline-suite-cluster-")
os.environ["PIPELINE_CLUSTER_IDLE_MINUTES"] = "30"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working folder: the embedded MLflow store and checkpoints land here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """The `pipeline` command as a user runs it."""
    full_env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster with 2 CPUs, shared by the tests that train."""
    import ray

    from pipeline.engine.cluster import init_ray

    init_ray(num_cpus=2)
    yield ray
    bounded_shutdown(ray)


def bounded_shutdown(ray, timeout: float = 60) -> None:
    """`ray.shutdown()`, given at most `timeout` s: after a test that timed out inside a Ray Train run, a hung
    shutdown must not keep the session from reporting."""
    import threading

    done = threading.Thread(target=ray.shutdown, daemon=True)
    done.start()
    done.join(timeout)
    if done.is_alive():
        sys.__stderr__.write(f"ray.shutdown() did not return within {timeout:.0f} s; leaving it\n")


@pytest.fixture(autouse=True)
def ray_cluster_idle(request):
    """A test that trains on the shared local cluster leaves its CPUs free: what its runs held (Ray Train's
    placement groups, Ray Data's tasks) is released within seconds of its end. If not, the test fails, naming
    what holds them, and the cluster is started afresh so that the next tests do not wait for CPUs forever."""
    import ray

    yield
    if "ray_cluster" not in request.fixturenames or not ray.is_initialized():
        return
    from pipeline.engine.cluster import init_ray

    def free_cpus() -> float:
        return ray.available_resources().get("CPU", 0)

    total, deadline = ray.cluster_resources()["CPU"], time.time() + 60
    while time.time() < deadline and free_cpus() < total:
        time.sleep(1)
    if free_cpus() < total:
        held = f"{free_cpus():g} of {total:g} CPUs free 60 s after the test; {holders_of_cpus()}"
        bounded_shutdown(ray)
        init_ray(num_cpus=2)
        pytest.fail(f"the test left the local Ray cluster's CPUs held: {held}")


def say(config, line: str) -> None:
    """A line on the terminal at once, even from inside a test whose output pytest captures."""
    capture = config.pluginmanager.getplugin("capturemanager")
    terminal = config.pluginmanager.getplugin("terminalreporter")
    with capture.global_and_fixture_disabled():
        terminal.write_line("")
        terminal.write_line(line)


def holders_of_cpus() -> str:
    """The live actors and placement groups of the local cluster, for the line that says its CPUs were held."""
    try:
        import ray
        from ray.util.state import list_actors, list_placement_groups

        address = ray.get_runtime_context().gcs_address  # not found by looking: there may be other clusters here
        actors = [f"{a.class_name}({a.state})" for a in list_actors(address, filters=[("state", "!=", "DEAD")])]
        groups = [f"{g.name or g.placement_group_id[:8]}({g.state})" for g in list_placement_groups(address)
                  if g.state != "REMOVED"]
        return f"actors {actors}, placement groups {groups}"
    except Exception as exc:  # the state API may be what is broken
        return f"unknown ({exc})"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failure is named the moment it happens (the summary comes only at the end of a long session)."""
    report = (yield).get_result()
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        reason = (crash.message if crash else str(report.longrepr)).strip().splitlines() or [""]
        say(item.config, f"FAILED {report.nodeid} ({report.when}): {reason[0][:300]}")


def pytest_unconfigure(config):
    """Nothing keeps the test process alive once the results are out: threads that Ray, Tune or MLflow leave
    behind are named, and the process ends with pytest's exit status instead of waiting for them."""
    import threading

    left = [t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if left:
        sys.__stderr__.write(f"threads left running at exit: {', '.join(left)}\n")
        sys.__stderr__.flush()
        sys.stdout.flush()
        os._exit(EXIT_STATUS.get("session", 1))


EXIT_STATUS: dict[str, int] = {}


def pytest_sessionfinish(session, exitstatus):
    from pipeline.engine import warm_cluster

    EXIT_STATUS["session"] = int(exitstatus)
    warm_cluster.stop()  # the suite's kept cluster


def log_predictions(tracker, run_id: str, probs, labels, folder: Path) -> None:
    """Test-set probabilities and labels as the train stage keeps them (`predictions/` artifacts)."""
    import torch

    torch.save(probs.half(), folder / "test_probs.pt")
    torch.save(labels, folder / "test_labels.pt")
    tracker.log_artifact(run_id, folder / "test_probs.pt", "predictions")
    tracker.log_artifact(run_id, folder / "test_labels.pt", "predictions")


VENV_BIN = Path(sys.executable).parent


class MlflowServer:
    """A real `mlflow server` over a SQLite store and a local artifact folder, on a port of its own; `stop` and
    `start` again keep its data and its port (a tracking server restarted mid-run)."""

    def __init__(self, folder: Path, env: dict[str, str]):
        from pipeline.engine.net import free_port

        self.folder, self.env, self.port, self.process = folder, env, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> "MlflowServer":
        from pipeline.engine.net import http_answers, wait_for

        self.process = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
             "--default-artifact-root", (self.folder / "artifacts").as_uri(), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"], env={**self.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: http_answers(f"{self.uri}/health"), 120, "the MLflow server")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)


def clean_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A real two-node Ray cluster on this machine (head and a second node as separate `ray start` processes,
    token auth on; 1 CPU each, the second with resource node2) and an MLflow server, shared by the tests
    that need a cluster (Ray Jobs, the workflow's concurrent units, resume, faults)."""
    from pipeline.engine.cluster import LocalCluster

    env = clean_env()
    server = MlflowServer(tmp_path_factory.mktemp("cluster"), env).start()
    try:
        with LocalCluster([{"num_cpus": 1}, {"num_cpus": 1, "resources": {"node2": 1}}], env) as ray_cluster:
            yield {"address": ray_cluster.dashboard, "gcs": ray_cluster.gcs, "tracking": server.uri,
                   "env": ray_cluster.env, "token": ray_cluster.env["RAY_AUTH_TOKEN"]}
    finally:
        server.stop()


def pytest_terminal_summary(terminalreporter):
    """The fault-injection suite's table of cases and outcomes (tests/test_faults.py)."""
    faults = sys.modules.get("test_faults")
    if not faults or not faults.OUTCOMES:
        return
    columns = ["case", "fault", "moment", "fault at s", "exit", "left running", "completion s", "resumed", "cached",
               "test_loss", "trials kept", "passed"]
    terminalreporter.write_sep("-", "fault injection: cases and outcomes")
    terminalreporter.write_line("| " + " | ".join(columns) + " |")
    terminalreporter.write_line("|" + "---|" * len(columns))
    for case in faults.OUTCOMES:
        cells = [case.name, case.fault, case.moment] + [str(case.outcome.get(c, "")) for c in columns[3:-1]]
        cells.append("yes" if case.outcome.get("passed") else "NO")
        terminalreporter.write_line("| " + " | ".join(cells) + " |")


# The tiny workflow the end-to-end tests and the tests of ensembles, reports, the registry, the leaderboard and
# the UI share: three small networks trained by the real train stage on 300 synthetic images, resnet20 on two
# Ray Train workers (DDP, test-set probabilities gathered from both), plain20 with the degradation plot's
# per-epoch test error (experiments/resnet_degradation.yaml).
TRAINED_MODELS = ("lenet5", "resnet20", "plain20")


@pytest.fixture(scope="session")
def trained(ray_cluster, tmp_path_factory):
    """One real `train -> ensemble -> leaderboard` workflow, run once per test session."""
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from pipeline.engine import workflow
    from pipeline.spec.loading import parse_spec
    from pipeline.tracking.store import Tracker

    folder = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    spec = parse_spec({
        "name": "tiny-zoo", "data": {"name": "synthetic", "synthetic_size": 300, "val_fraction": 0.2},
        "models": ["lenet5", {"name": "resnet20", "resources": {"num_workers": 2}},
                   {"name": "plain20", "train": {"eval_test_every_epoch": True}}],
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.01, "warmup_epochs": 0},
        "resources": {"num_workers": 1}, "tracking": {"uri": uri, "experiment": "tiny-zoo"},
        "storage_path": str(folder / "checkpoints"), "stages": ["train", "ensemble", "leaderboard"],
        "ensemble": {"top_k": 2}})
    output = io.StringIO()
    context = workflow.run(spec, Console(file=output, width=200))
    assert not context.failures, context.failure_summary() + output.getvalue()[-3000:]
    tracker = Tracker(uri)
    return SimpleNamespace(uri=uri, folder=folder, spec=spec, context=context, tracker=tracker,
                           experiment="tiny-zoo", experiment_id=context.experiment_id,
                           runs={m: context.outputs["train"][m]["run_id"] for m in TRAINED_MODELS},
                           output=output.getvalue())
