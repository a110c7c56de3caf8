"""Ray Jobs: a whole experiment submitted to a cluster's head (`pipeline run SPEC --address http://HEAD:8265`),
and the jobs listed, followed and stopped.

The job runs `python -m pipeline run SPEC` with the same overrides in a copy of the working folder; the
spec is validated here first, so bad input fails before anything reaches the cluster.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import PipelineError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Environment a job needs to reach the same tracking server and storage as this machine.
# Environment a job needs to reach the same tracking server and storage as this machine. Credentials are
# not among them: a job's environment is readable by every Ray Jobs client of the cluster (its job info),
# so the cluster holds its own (a secret store, as infra/kuberay mounts them).
PASSED_ENV = ("MLFLOW_TRACKING_URI", "PIPELINE_STORAGE_PATH")
# Never uploaded with the working folder: the environment, local stores and checkpoints.
EXCLUDES = [".venv", ".git", "mlflow.db", "mlruns", "mlartifacts", ".pipeline", "__pycache__", "*.egg-info"]


def client(address: str):
    """A JobSubmissionClient for `address` that presents the Ray auth token, as `ray job submit` does."""
    if not address.startswith(("http://", "https://")):
        # Ray would take HOST:PORT for a GCS address and retry it for most of a minute.
        raise PipelineError(f"Ray address '{address}' has no scheme: give the dashboard address with its scheme: "
                            "http://HOST:8265")
    # JobSubmissionClient only sends a token when token auth is on in this process; the Ray CLI turns it
    # on when a token is available (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token). Same here.
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )
    from ray.job_submission import JobSubmissionClient

    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        return JobSubmissionClient(address)
    except Exception as exc:
        raise _cluster_error(address, exc) from None


def _cluster_error(address: str, exc: Exception) -> PipelineError:
    text = " ".join(str(exc).split())
    if "Authentication" in text or "401" in text or "403" in text:
        return PipelineError(f"Ray cluster at {address} refused the request (token authentication): set RAY_AUTH_TOKEN "
                             "or ~/.ray/auth_token to the cluster's token (`ray get-auth-token` on the head)")
    return PipelineError(f"Ray cluster at {address} is unreachable ({text[:200]}): start it (`ray start --head "
                         "--dashboard-host 0.0.0.0`) or pass --address http://HEAD:8265")


def _call(address: str, function, *args):
    try:
        return function(*args)
    except RuntimeError as exc:
        if "does not exist" in str(exc):
            raise PipelineError(f"no job '{args[0] if args else ''}' on {address}: `pipeline jobs` lists them") from None
        raise _cluster_error(address, exc) from None
    except Exception as exc:  # connection errors from requests/aiohttp
        raise _cluster_error(address, exc) from None


def submit(spec_path: str, overrides: list[str], address: str, working_dir: str = ".", verbose: bool = False,
           only: Sequence[str] = (), skip: Sequence[str] = (), rerun: Sequence[str] = ()) -> str:
    """Submit `pipeline run SPEC` as a Ray Job with `working_dir` as its working directory; returns the job id."""
    from pipeline.spec.loading import load_spec

    spec = load_spec(spec_path, overrides, only, skip)
    root = Path(working_dir).resolve()
    try:
        relative = Path(spec_path).resolve().relative_to(root)
    except ValueError:
        raise PipelineError(f"spec {spec_path} is outside the working folder {root} that is sent to the cluster: "
                            "move it inside or pass --working-dir") from None
    command = ["python", "-m", "pipeline", "run", relative.as_posix(), *(f"--set={o}" for o in overrides),
               *(f"--model={m}" for m in only), *(f"--skip={m}" for m in skip), *(f"--rerun={r}" for r in rerun)]
    if verbose:
        command.append("--verbose")
    env = {name: os.environ[name] for name in PASSED_ENV if os.environ.get(name)}
    from pipeline.tracking.store import redact

    uri = spec.tracking.uri or env.get("MLFLOW_TRACKING_URI", "")
    if redact(uri) != uri:
        raise PipelineError(f"the tracking URI {redact(uri)} holds a password, which a job would show to every "
                            "Ray Jobs client of the cluster: give the URI without it, and the cluster its own "
                            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (a secret, as infra/kuberay mounts)")
    jobs = client(address)  # the address first: a wrong one is the more direct error
    if not uri:
        raise PipelineError("a job submitted with --address needs a tracking store the cluster can reach: set "
                            "MLFLOW_TRACKING_URI (or tracking.uri in the spec) to your MLflow server; without one "
                            "its results would go to a SQLite file in the job's working folder on the head node, "
                            "which Ray deletes")
    job_id = f"pipeline-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    runtime_env = {"working_dir": str(root), "excludes": EXCLUDES, "env_vars": env}
    return _call(address, lambda: jobs.submit_job(entrypoint=shlex.join(command), submission_id=job_id,
                                                  runtime_env=runtime_env, metadata={"spec": spec.name}))


def follow(address: str, job_id: str, write=print) -> str:
    """Print the job's log as it grows until it ends; returns its final status (a one-line error if it failed)."""
    jobs = client(address)

    async def tail():
        async for lines in jobs.tail_job_logs(job_id):
            write(lines.rstrip("\n"))

    _call(address, lambda: asyncio.run(tail()))
    return check_ended(address, job_id)


def check_ended(address: str, job_id: str) -> str:
    info = _call(address, client(address).get_job_info, job_id)
    status = str(info.status)
    if status == "FAILED":
        raise PipelineError(f"job {job_id} failed: {_reason(info.message or '') or 'see `pipeline logs ' + job_id + '`'}")
    if status == "STOPPED":
        raise PipelineError(f"job {job_id} was stopped")
    return status


def _reason(message: str) -> str:
    """The job's own one-line error (`error: ...` from the pipeline, else the last exception line) in its log tail."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if mine := [line for line in lines if line.startswith("error:")]:
        return mine[-1].removeprefix("error:").strip()
    errors = [line for line in lines if "Error" in line.split(":")[0]]
    return (errors or lines or [""])[-1]


def list_jobs(address: str) -> list:
    jobs = _call(address, client(address).list_jobs)
    return sorted(jobs, key=lambda job: job.start_time or 0)


def logs(address: str, job_id: str) -> str:
    return _call(address, client(address).get_job_logs, job_id)


def stop(address: str, job_id: str) -> bool:
    return _call(address, client(address).stop_job, job_id)
