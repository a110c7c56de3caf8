"""MLflow tracking: one parent run per invocation, a child run per model (or stage, or trial).

The driver creates and closes the runs; training workers only log metrics into a run id they are given.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from pipeline.environment import environment_set
from pipeline.errors import PipelineError

# Fail fast on a dead server instead of retrying for minutes (MLflow's default), except while a workflow's
# units run (patient_writes).
_RETRIES_CHOSEN = "MLFLOW_HTTP_REQUEST_MAX_RETRIES" in os.environ  # by the user: always theirs
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
# MLflow prints "View run ... at: URI" on each run's end, a password in the URI included; the commands say
# where their runs are themselves.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def patient_writes():
    """While a workflow's units run, for hours after the server was found up: MLflow's own retries (7, the
    wait doubling from 2 s, about 4 minutes in all), so a tracking server that restarts delays the writes
    instead of failing a unit. MLflow reads the setting at each request."""
    return environment_set({} if _RETRIES_CHOSEN else {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7"})


def resolve_uri(spec_uri: str | None = None) -> str:
    """The spec's URI, else $MLFLOW_TRACKING_URI, else a SQLite file in the working folder; a SQLite file
    given by a relative path is the one in the working folder (its artifacts go beside it)."""
    uri = spec_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if (db := sqlite_path(uri)) is not None and not db.is_absolute():
        return f"sqlite:///{db.resolve()}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def split_userinfo(uri: str) -> tuple[str, str | None, str | None]:
    """(URI without user:password@, user, password)."""
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, sep, password = userinfo.partition(":")
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), urllib.parse.unquote(user), \
        urllib.parse.unquote(password) if sep else None


# user:password@ (or a user-only token@) after a URI's scheme; the password may hold an unescaped @.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][\w+.-]*://)(?P<user>[^/\s:@]*)(?P<password>:[^/\s]*)?@")


def redact(text: str) -> str:
    """A URI, or a message with URIs in it, as it may be printed: passwords (and user-only tokens) as ***."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@" if m["password"] is not None
                         else f"{m['scheme']}***@", text)


def _api_request(uri: str) -> urllib.request.Request:
    """A cheap MLflow REST call, with the credentials the MLflow client would send (the environment's first,
    as MLflow gives them precedence, else the URI's user:password, which urllib does not take in the URL)."""
    bare, user, password = split_userinfo(uri)
    request = urllib.request.Request(f"{bare.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1")
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or user
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD") or password
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {token}")
    elif user or password:
        pair = f"{user or ''}:{password or ''}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
    return request


# The schemes of MLflow's tracking stores (a database URI may name its driver: postgresql+psycopg://).
SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")


def _check_sqlite(db: Path) -> None:
    """An existing file must be an SQLite database that reads (sqlalchemy's traceback otherwise)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as connection:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise PipelineError(f"tracking database {db} is not a readable SQLite database ({exc}): point tracking.uri "
                            "/ --tracking-uri / MLFLOW_TRACKING_URI at an MLflow store, or move the file away to "
                            "start a new one") from None


def check_reachable(uri: str) -> None:
    """Raise a one-line error when the tracking store cannot be used, before anything is written."""
    scheme, sep, _ = uri.partition("://")
    if sep and scheme.partition("+")[0].lower() not in SCHEMES:
        raise PipelineError(f"tracking URI {redact(uri)} has an unknown scheme '{scheme}': use sqlite:///PATH, "
                            "http(s)://HOST:PORT of `mlflow server` or postgresql://..., in tracking.uri / "
                            "--tracking-uri / MLFLOW_TRACKING_URI")
    if uri.startswith(("http://", "https://")):
        shown = redact(uri)
        insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true"
        try:
            with urllib.request.urlopen(_api_request(uri), timeout=5,
                                        context=ssl._create_unverified_context() if insecure else None) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise PipelineError(f"tracking server {shown} refused the request (HTTP {exc.code}): set "
                                    "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of "
                                    "that server") from None
            if exc.code >= 500:
                raise PipelineError(f"tracking server {shown} failed (HTTP {exc.code}): check the server's log "
                                    "and its database") from None
            body = b""  # any other answer to an MLflow API call (404, 405, ...): not MLflow
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PipelineError(f"tracking server {shown} is unreachable ({reason}): start it (`mlflow server` or "
                                f"`pipeline ui`) or set tracking.uri / MLFLOW_TRACKING_URI to a running one") from None
        try:
            is_mlflow = isinstance(json.loads(body), dict)
        except ValueError:
            is_mlflow = False
        if not is_mlflow:
            raise PipelineError(f"{shown} is not an MLflow tracking server (its REST API did not answer): "
                                "give the address of `mlflow server` in tracking.uri / MLFLOW_TRACKING_URI")
    elif (db := sqlite_path(uri)) is not None:
        if db.is_dir():
            raise PipelineError(f"tracking database {db} is a folder: name a file, e.g. sqlite:///{db / 'mlflow.db'}")
        if not os.access(db.parent if not db.exists() else db, os.W_OK):
            raise PipelineError(f"tracking database {db} is not writable: fix its permissions or set tracking.uri")
        if db.exists():
            _check_sqlite(db)


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
        """The URI as it may be printed (no password)."""
        return redact(self.uri)

    def experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        artifact_location = None
        if (db := sqlite_path(self.uri)) is not None:  # keep artifacts beside the embedded database
            artifact_location = (db.parent / "mlartifacts").as_uri()
        # The MLflow UI opens an experiment of this kind in its model-training view (not the GenAI one).
        return self.client.create_experiment(name, artifact_location=artifact_location,
                                             tags={"mlflow.experimentKind": "custom_model_development"})

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
