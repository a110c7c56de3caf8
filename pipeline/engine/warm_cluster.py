"""A local Ray cluster kept between commands: the first command that needs Ray starts it, the next ones join it
(a connection of about a second instead of a cluster's start), and it stops by itself once no driver has used it
for a while, or with `pipeline cluster stop`.

Why by hand: Ray's `ray start` keeps a cluster but never stops an idle one, and `address="auto"` would join any
cluster on the machine (another checkout's, another user's). This one is found through its own state file and
joined only by the same Python and project that started it. Each command is its own Ray job, and Ray starts
fresh worker processes per job, so a changed file of the project is what the next command's workers import."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from pipeline.engine.net import free_port, http_answers, wait_for
from pipeline.engine.processes import stop_process_groups
from pipeline.errors import PipelineError

ROOT = Path(__file__).resolve().parents[2]  # the project whose code the cluster's workers import
DEFAULT_IDLE_MINUTES = 10.0
JOIN_GRACE_S = 30.0  # from a command's join to its driver's registration as a Ray job: imports, connection


def state_dir() -> Path:
    """Where the kept cluster's state file, lock and log are."""
    return Path(os.environ.get("PIPELINE_CLUSTER_DIR") or Path.home() / ".cache" / "vision-pipeline").expanduser()


def idle_minutes() -> float:
    """How long a kept cluster waits for the next command ($PIPELINE_CLUSTER_IDLE_MINUTES; 0: keep none, each
    command starts and stops a cluster of its own)."""
    value = os.environ.get("PIPELINE_CLUSTER_IDLE_MINUTES", str(DEFAULT_IDLE_MINUTES))
    try:
        minutes = float(value)
    except ValueError:
        raise PipelineError(f"PIPELINE_CLUSTER_IDLE_MINUTES={value!r} is not a number: give minutes, or 0 to keep "
                            "no cluster between commands") from None
    if minutes < 0:
        raise PipelineError(f"PIPELINE_CLUSTER_IDLE_MINUTES={value!r}: give 0 or more minutes")
    return minutes


def _state_file() -> Path:
    return state_dir() / "cluster.json"


@contextmanager
def _locked():
    """One command at a time finds or starts the cluster: two terminals at once share one."""
    state_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(state_dir() / "cluster.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _read() -> dict | None:
    try:
        return json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None


def _alive(state: dict) -> bool:
    try:
        os.killpg(state["head_pgid"], 0)
    except (ProcessLookupError, PermissionError, KeyError):
        return False
    try:
        urllib.request.urlopen(f"{state['dashboard']}/api/version", timeout=5)
        return True
    except Exception:
        return False


def _ours(state: dict) -> bool:
    """Joined only by the Python and project that started it: another checkout's workers would import its code."""
    import ray

    return state.get("python") == sys.executable and state.get("project") == str(ROOT) \
        and state.get("ray") == ray.__version__


def current() -> dict | None:
    """The kept cluster's state (gcs, dashboard, num_cpus, idle_minutes, started) if one is up, else None."""
    state = _read()
    return state if state and _alive(state) else None


def join_or_start(num_cpus: int | None) -> tuple[dict, bool] | None:
    """The kept cluster to join: (state, started now); None where none may be kept (idle 0) or the kept one does
    not fit (another Python or project, another CPU count than asked for)."""
    minutes = idle_minutes()
    if minutes == 0:
        return None
    with _locked():
        state = _read()
        if state is not None and not _alive(state):  # its head died or hangs: end what is left of it
            _discard(state)
            state = None
        if state is not None and not (_ours(state) and num_cpus in (None, state["num_cpus"])):
            return None
        started = state is None
        if started:
            state = _start(num_cpus, minutes)
        (state_dir() / "joined").touch()  # a joining driver has JOIN_GRACE_S to show up as a job
        return state, started


def _start(num_cpus: int | None, minutes: float) -> dict:
    """The keeper process, detached from this command's session (Ctrl-C here does not reach it), starts the
    head and writes the state file; this waits for the file."""
    _state_file().unlink(missing_ok=True)
    cpus = num_cpus or os.cpu_count() or 1
    log = open(state_dir() / "keeper.log", "ab")
    subprocess.Popen([sys.executable, "-m", "pipeline.engine.warm_cluster", str(cpus), str(minutes)],
                     cwd=state_dir(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.time() + 180  # generous: a loaded machine
    while time.time() < deadline:
        if (state := _read()) is not None:
            return state
        time.sleep(0.1)
    raise PipelineError(f"the local Ray cluster did not start within 180 s; see {state_dir() / 'keeper.log'}, "
                        "or set PIPELINE_CLUSTER_IDLE_MINUTES=0 to start one per command")


def stop() -> dict | None:
    """Stop the kept cluster (its keeper and its Ray processes); the state it had, or None if none was up."""
    state = _read()
    if state is None:
        return None
    _discard(state)
    return state


def _discard(state: dict) -> None:
    try:
        os.kill(state["keeper_pid"], signal.SIGTERM)  # the keeper stops the head and removes the state file
        deadline = time.time() + 30
        while time.time() < deadline and _read() is not None:  # (a keeper that is our child stays a zombie)
            os.kill(state["keeper_pid"], 0)
            time.sleep(0.2)
    except ProcessLookupError:
        pass
    if _read() is not None:  # the keeper is gone without cleaning up: do it here
        _stop_head(state)
        _state_file().unlink(missing_ok=True)


def _stop_head(state: dict, head: subprocess.Popen | None = None) -> None:
    """The head's process group stopped (`ray start` ends its Ray processes), and its temp folder removed."""
    import shutil

    stop_process_groups([(state["head_pgid"], head)])
    shutil.rmtree(state.get("temp", ""), ignore_errors=True)


def _drivers(dashboard: str) -> tuple[bool, float]:
    """Whether a driver or job is running on the cluster, and when the last one ended (s since the epoch)."""
    with urllib.request.urlopen(f"{dashboard}/api/jobs/", timeout=10) as answer:
        jobs = json.loads(answer.read())
    running = any(job.get("status") in ("RUNNING", "PENDING") for job in jobs)
    ended = max((job.get("end_time") or 0 for job in jobs), default=0) / 1000
    return running, ended


def _idle(dashboard: str, minutes: float) -> bool:
    """No driver for `minutes` since the last one ended or joined; decided under the lock, so that a command
    joining meanwhile is seen."""
    try:
        running, ended = _drivers(dashboard)
    except Exception:  # the dashboard busy for a moment: ask again later
        return False
    if running:
        return False
    with _locked():
        joined = (state_dir() / "joined").stat().st_mtime if (state_dir() / "joined").exists() else 0
        if time.time() - ended <= minutes * 60 or time.time() - joined <= max(minutes * 60, JOIN_GRACE_S):
            return False
        print(f"idle for {minutes:g} min: stopping", flush=True)
        _state_file().unlink(missing_ok=True)  # no command joins from here on
        return True


def _keep(cpus: int, minutes: float) -> None:
    """The keeper: start the head, write the state file, stop everything after `minutes` without a driver."""
    import secrets

    gcs, dashboard = free_port(), free_port()
    temp = Path("/tmp") / f"rk{secrets.token_hex(3)}"  # short: Ray's socket paths have a length limit
    address, dashboard_url = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}"
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--disable-usage-stats",
               "--num-cpus", str(cpus), "--port", str(gcs), "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(dashboard), "--temp-dir", str(temp)]
    # No token authentication, as in the cluster `ray.init()` starts for one command: a driver reads its auth mode
    # when it imports ray, before it knows which cluster it joins. The cluster's processes find its state API by
    # this address (see init_ray), not by looking on the machine.
    env = {**os.environ, "RAY_API_SERVER_ADDRESS": dashboard_url, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    state = {"gcs": address, "dashboard": dashboard_url, "num_cpus": cpus, "idle_minutes": minutes,
             "head_pgid": head.pid, "keeper_pid": os.getpid(), "temp": str(temp), "started": time.time(),
             "python": sys.executable, "project": str(ROOT)}
    stopping = False

    def on_term(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        wait_for(lambda: http_answers(f"{dashboard_url}/api/version") or head.poll() is not None, 170,
                 "the Ray head's dashboard")
        if head.poll() is not None:
            raise PipelineError(f"ray start exited with {head.returncode}")
        import ray

        state["ray"] = ray.__version__
        written = _state_file().with_suffix(".tmp")
        written.unlink(missing_ok=True)
        with os.fdopen(os.open(written, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            json.dump(state, out)
        written.replace(_state_file())  # whole or absent: a reader never sees half of it
        while not stopping and head.poll() is None and not _idle(dashboard_url, minutes):
            time.sleep(2)
    finally:
        _stop_head(state, head)
        if (_read() or {}).get("keeper_pid") == os.getpid():
            _state_file().unlink(missing_ok=True)


if __name__ == "__main__":
    _keep(int(sys.argv[1]), float(sys.argv[2]))
