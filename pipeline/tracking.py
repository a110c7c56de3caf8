"""MLflow tracking: one parent run per invocation, a child run per model (or stage, or trial).

The driver creates and closes the runs; training workers only log metrics into a run id they are given.
"""
from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

# Fail fast on a dead server instead of retrying for minutes (MLflow's default).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def resolve_uri(spec_uri: str | None = None) -> str:
    """The spec's URI, else $MLFLOW_TRACKING_URI, else a SQLite file in the working folder."""
    return spec_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def check_reachable(uri: str) -> None:
    """Raise a one-line error when the tracking store cannot be used, before anything is written."""
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5)
        except urllib.error.HTTPError:
            return  # the server answered (an auth-protected /health, say)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PipelineError(f"tracking server {uri} is unreachable ({reason}): start it (`mlflow server` or "
                                f"`pipeline ui`) or set tracking.uri / MLFLOW_TRACKING_URI to a running one") from None
    elif (db := sqlite_path(uri)) is not None and not os.access(db.parent if not db.exists() else db, os.W_OK):
        raise PipelineError(f"tracking database {db} is not writable: fix its permissions or set tracking.uri")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class Tracker:
    def __init__(self, uri: str, create: bool = True):
        """A client of the store at `uri`; with create=False, no client (None) when it is a SQLite file that
        does not exist yet, so that looking does not create it."""
        from mlflow import MlflowClient

        self.uri = uri
        db = sqlite_path(uri)
        self.client = MlflowClient(uri) if create or db is None or db.exists() else None

    @property
    def display_uri(self) -> str:
        """The URI without a password written into it."""
        import re

        return re.sub(r"//([^/@:]+):[^/@]*@", r"//\1:***@", self.uri)

    def experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        artifact_location = None
        if (db := sqlite_path(self.uri)) is not None:  # keep artifacts beside the embedded database
            artifact_location = (db.parent / "mlartifacts").as_uri()
        return self.client.create_experiment(name, artifact_location=artifact_location)

    def start_run(self, experiment_id: str, run_name: str, parent_id: str | None = None,
                  params: dict[str, Any] | None = None, tags: dict[str, str] | None = None,
                  metrics: dict[str, float] | None = None) -> str:
        tags = dict(tags or {})
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
        self.log(run.info.run_id, metrics or {}, params=params)
        return run.info.run_id

    def log(self, run_id: str, metrics: dict[str, float], step: int = 0,
            params: dict[str, Any] | None = None) -> None:
        """Metrics and params of one step in a single request."""
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(key, float(value), now, step) for key, value in metrics.items()],
            params=[Param(key, str(value)[:6000]) for key, value in flatten(params or {}).items()])

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(run_id, key)}

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_text(self, run_id: str, text: str, file_name: str) -> None:
        self.client.log_text(run_id, text, file_name)
