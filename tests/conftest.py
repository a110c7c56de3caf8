import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
    from pipeline.cluster import init_ray
    import ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def log_predictions(tracker, run_id: str, probs, labels, folder: Path) -> None:
    """Test-set probabilities and labels as the train stage keeps them (`predictions/` artifacts)."""
    import torch

    torch.save(probs.half(), folder / "test_probs.pt")
    torch.save(labels, folder / "test_labels.pt")
    tracker.log_artifact(run_id, folder / "test_probs.pt", "predictions")
    tracker.log_artifact(run_id, folder / "test_labels.pt", "predictions")
