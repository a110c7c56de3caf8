"""The local Ray cluster kept between commands: joined by the next command, never serving stale code, stopped by
a command or after idling, and never joined by another checkout."""
import json
import os
import signal
import subprocess
import sys
import time

from conftest import run_cli

# A driver as a command is one: it joins (or starts) the kept cluster and runs a task that imports a module of
# its working folder, reporting the cluster, the module's value and the worker's process and folder.
DRIVER = """
import json, os, ray
from pipeline.engine.cluster import init_ray
init_ray(announce=print)

@ray.remote
def probe():
    import probe_module
    return probe_module.VALUE, os.getpid(), os.getcwd()

value, pid, folder = ray.get(probe.remote())
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address, "value": value, "pid": pid, "folder": folder}))
"""


def _env(folder, minutes="10"):
    return {**os.environ, "PIPELINE_CLUSTER_DIR": str(folder / "kept"), "PIPELINE_CLUSTER_IDLE_MINUTES": minutes}


def _drive(folder, env) -> tuple[dict, str]:
    result = subprocess.run([sys.executable, "-c", DRIVER], cwd=folder, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stdout


def _state(folder) -> dict | None:
    path = folder / "kept" / "cluster.json"
    return json.loads(path.read_text()) if path.exists() else None


def _port(address: str) -> str:  # Ray names the node by this machine's address, the state file by 127.0.0.1
    return address.rsplit(":", 1)[1]


def _alive(pgid: int, within: float = 0) -> bool:
    """Whether the process group is alive (after waiting up to `within` s for it to end)."""
    deadline = time.time() + within
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        if time.time() >= deadline:
            return True
        time.sleep(0.2)


def test_the_next_command_joins_the_kept_cluster_and_its_workers_import_the_code_as_it_is_now(tmp_path):
    env = _env(tmp_path)
    (tmp_path / "probe_module.py").write_text("VALUE = 1\n")
    try:
        first, said = _drive(tmp_path, env)
        assert "started a local Ray cluster" in said and "pipeline cluster stop" in said
        state = _state(tmp_path)
        assert _port(state["gcs"]) == _port(first["gcs"]) and _alive(state["head_pgid"])
        (tmp_path / "probe_module.py").write_text("VALUE = 2\n")  # a code change between two commands
        second, said = _drive(tmp_path, env)
        assert "started" not in said  # joined: no second cluster
        assert second["gcs"] == first["gcs"]
        assert (first["value"], second["value"]) == (1, 2)  # the second command's workers import the new code
        assert second["pid"] != first["pid"]  # fresh worker processes per command
        assert first["folder"] == second["folder"] == str(tmp_path)  # workers start in the driver's folder
        status = run_cli("cluster", "status", cwd=tmp_path, env=env)
        assert status.returncode == 0 and status.stdout.startswith(f"up: {state['num_cpus']} CPUs")
        again = run_cli("cluster", "start", cwd=tmp_path, env=env)
        assert again.returncode == 0 and again.stdout.startswith(f"already up: {state['num_cpus']} CPUs")
    finally:
        stopped = run_cli("cluster", "stop", cwd=tmp_path, env=env)
    assert stopped.returncode == 0 and f"stopped the cluster at {state['gcs']}" in stopped.stdout
    assert _state(tmp_path) is None and not _alive(state["head_pgid"], within=10)
    assert run_cli("cluster", "status", cwd=tmp_path, env=env).stdout.startswith("no kept cluster is up")


def test_an_idle_kept_cluster_stops_by_itself(tmp_path):
    env = _env(tmp_path, minutes="0.1")  # 6 s after the driver's end, and at least 30 s after its join
    (tmp_path / "probe_module.py").write_text("VALUE = 1\n")
    _drive(tmp_path, env)
    state = _state(tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and _alive(state["head_pgid"]):
        time.sleep(1)
    assert not _alive(state["head_pgid"]) and _state(tmp_path) is None
    assert "idle for 0.1 min: stopping" in (tmp_path / "kept" / "keeper.log").read_text()


def test_a_cluster_kept_by_another_python_is_not_joined_and_none_is_kept_at_zero_minutes(tmp_path):
    env = _env(tmp_path)
    (tmp_path / "probe_module.py").write_text("VALUE = 1\n")
    try:
        first, _ = _drive(tmp_path, env)
        state_file = tmp_path / "kept" / "cluster.json"
        state = json.loads(state_file.read_text())
        state_file.write_text(json.dumps({**state, "python": "/another/checkout/.venv/bin/python"}))
        other, said = _drive(tmp_path, env)
        assert other["gcs"] != first["gcs"] and "started" not in said  # a cluster of its own, for this command
        alone, said = _drive(tmp_path, _env(tmp_path, minutes="0"))
        assert alone["gcs"] != first["gcs"] and "started" not in said
        refused = run_cli("cluster", "start", cwd=tmp_path, env=_env(tmp_path, minutes="0"))
        assert refused.returncode == 2 and "PIPELINE_CLUSTER_IDLE_MINUTES=0 keeps no cluster" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    finally:
        run_cli("cluster", "stop", cwd=tmp_path, env=env)
    assert not _alive(state["head_pgid"], within=10)


def test_ctrl_c_in_a_run_on_the_kept_cluster_leaves_its_cpus_free_and_the_cluster_up(tmp_path):
    """An interrupted command ends its own Ray job: the kept cluster stays up with every CPU free."""
    env = _env(tmp_path)
    (tmp_path / "probe_module.py").write_text("VALUE = 1\n")
    holder = ("import time, ray\nfrom pipeline.engine.cluster import init_ray\ninit_ray()\n"
              "from ray.util import placement_group\npg = placement_group([{'CPU': 1}])\nray.get(pg.ready())\n"
              "print('held', flush=True)\ntime.sleep(600)\n")
    try:
        _drive(tmp_path, env)
        process = subprocess.Popen([sys.executable, "-c", holder], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                   text=True, start_new_session=True)
        assert process.stdout.readline().strip() == "held"
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
        state = _state(tmp_path)
        check = ("import json, time, ray\nray.init(address=%r, logging_level='ERROR')\ndeadline = time.time() + 60\n"
                 "while time.time() < deadline and ray.available_resources().get('CPU', 0) < %d:\n"
                 "    time.sleep(0.5)\nprint(ray.available_resources().get('CPU', 0))\n") % (state["gcs"], state["num_cpus"])
        free = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=180)
        assert float(free.stdout.strip().splitlines()[-1]) == state["num_cpus"]
        assert _alive(state["head_pgid"])
    finally:
        run_cli("cluster", "stop", cwd=tmp_path, env=env)
