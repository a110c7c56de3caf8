"""Connecting to Ray: a local cluster by default, or the cluster a Ray Job runs in."""
from __future__ import annotations

import json
import logging
import os

from pipeline.engine.net import free_port, http_answers, wait_for
from pipeline.engine.processes import stop_process_groups

# Ray Train's settings for a cluster on this machine, where they differ from Ray's defaults (a user's own value
# wins). Its controller polls the workers every 2 s, so a run that has ended waits up to 2 s more before its
# workers are released: on a local cluster of a few workers a poll costs little. No node of this machine is a
# spot instance to be preempted, so the preemption watcher, an actor of its own per run, would only cost start-up.
LOCAL_TRAIN_SETTINGS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def init_ray(verbose: bool = False, num_cpus: int | None = None, announce=None) -> None:
    """Join the local cluster kept between commands (starting it if none is up; see warm_cluster), or start a
    cluster of its own where none may be kept, or join $RAY_ADDRESS (inside a Ray Job). Ray's logs stay hidden
    unless verbose; `announce(line)` tells the user when a kept cluster was started."""
    import ray

    if ray.is_initialized():
        return
    if not verbose:
        os.environ.setdefault("RAY_TRAIN_LOG_LEVEL", "WARNING")
        for name in ("ray", "ray.train", "ray.tune", "ray.data"):
            logging.getLogger(name).setLevel(logging.WARNING)
    local = not os.environ.get("RAY_ADDRESS")
    # The dashboard serves Ray's state API, which Ray Train's placement-group cleaner needs: without it a
    # Train run whose controller is killed (a sweep trial stopped by ASHA) keeps its CPUs until Ray exits.
    # The cleaner finds the API by looking for Ray on this machine, and fails for good (its monitor thread
    # dies) where there is more than one, another user's run or a killed driver's leftovers: the cluster's
    # processes inherit its address instead. Not this process: the variable overrides the address given to
    # any Ray Jobs or state client.
    logs = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.ERROR,
            "configure_logging": True}
    if not local:
        ray.init(**logs)
        return
    for name, value in LOCAL_TRAIN_SETTINGS.items():  # this process's Train runs; a local cluster's own processes
        os.environ.setdefault(name, value)
    settings = {name: os.environ[name] for name in LOCAL_TRAIN_SETTINGS}
    from pipeline.engine import warm_cluster

    if kept := warm_cluster.join_or_start(num_cpus):
        state, started = kept
        if started and announce:
            announce(f"started a local Ray cluster ({state['num_cpus']} CPUs) that the next commands join; it "
                     f"stops after {state['idle_minutes']:g} min idle, or with: pipeline cluster stop")
        # The job's workers start in this folder, as a cluster of its own would start them: relative paths
        # read the same either way.
        # The settings reach Train runs started in the job's workers (sweep trials) through its environment.
        ray.init(address=state["gcs"], runtime_env={"env_vars": {"PIPELINE_DRIVER_FOLDER": os.getcwd(), **settings},
                                                    "worker_process_setup_hook": "pipeline.engine.cluster.enter_driver_folder"},
                 **logs)
        return
    from pipeline.environment import environment_set

    port = free_port()
    with environment_set({"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}):
        # "local": a cluster of its own, never the latest `ray start` on this machine (Ray's default without an
        # address reads /tmp/ray/ray_current_cluster, which another user's or a dead cluster may have left).
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 dashboard_port=port, **logs)


def enter_driver_folder() -> None:
    """Ray's setup hook of each worker of a job on the kept cluster: the driver's working folder."""
    if folder := os.environ.get("PIPELINE_DRIVER_FOLDER"):
        os.chdir(folder)


class LocalCluster:
    """A multi-node Ray cluster on this machine: a head and more nodes as separate `ray start` processes,
    each with its own temp dir, ports and declared logical CPUs (more than the machine has, to simulate a
    bigger cluster), token auth on. Only its own processes are stopped at the end (never `ray stop`,
    which would end other clusters on the machine). For benchmarks and tests."""

    def __init__(self, nodes: list[dict], env: dict[str, str] | None = None):
        self.nodes = nodes  # per node: {"num_cpus": 2, "resources": {"node2": 1}}
        self.env = env
        self.processes: list = []
        self.temp = None
        self.gcs = self.dashboard = None

    def __enter__(self) -> "LocalCluster":
        import secrets
        import subprocess
        import sys
        from pathlib import Path

        bin_dir = Path(sys.executable).parent
        token = secrets.token_hex(32)
        self.env = {**(self.env or os.environ), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
                    "PATH": f"{bin_dir}:{os.environ['PATH']}"}  # a job's `python` is the project's
        self.env.pop("RAY_ADDRESS", None)
        gcs, dashboard = free_port(), free_port()
        self.temp = Path("/tmp") / f"rt{secrets.token_hex(3)}"  # short: Ray's socket paths have a length limit
        self.gcs, self.dashboard = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}"
        ports = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--metrics-export-port", "--runtime-env-agent-port"]
        try:
            for index, node in enumerate(self.nodes):
                command = [str(bin_dir / "ray"), "start", "--num-cpus", str(node.get("num_cpus", 1)), "--block",
                           "--disable-usage-stats", "--min-worker-port", "0", "--max-worker-port", "0",
                           "--temp-dir", f"{self.temp}n{index}"]
                for flag in ports:
                    command += [flag, str(free_port())]
                if node.get("resources"):
                    command += ["--resources", json.dumps(node["resources"])]
                if index == 0:
                    command += ["--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port",
                                str(dashboard), "--ray-client-server-port", str(free_port())]
                else:
                    command += ["--address", self.gcs]
                # Its processes' state API (see init_ray); not in self.env, which drivers and clients use.
                node_env = {**self.env, "RAY_API_SERVER_ADDRESS": self.dashboard}
                self.processes.append(subprocess.Popen(command, env=node_env, stdout=subprocess.DEVNULL,
                                                       stderr=subprocess.DEVNULL, start_new_session=True))
                if index == 0:
                    wait_for(lambda: http_answers(f"{self.dashboard}/api/version"), 300, "the Ray head's dashboard")
            wait_for(lambda: self.alive_nodes() == len(self.nodes), 300, "every Ray node")  # generous: a loaded machine
        except BaseException:
            self.__exit__()
            raise
        return self

    def alive_nodes(self) -> int:
        import subprocess
        import sys
        from pathlib import Path

        script = "import ray; ray.init(address='auto', logging_level='ERROR'); print(len([n for n in ray.nodes() if n['Alive']]))"
        result = subprocess.run([str(Path(sys.executable)), "-c", script], capture_output=True, text=True,
                                env={**self.env, "RAY_ADDRESS": self.gcs}, timeout=60)
        return int(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 and result.stdout.strip() else 0

    def __exit__(self, *exc) -> None:
        import shutil

        stop_process_groups([(process.pid, process) for process in reversed(self.processes)])  # ours only
        for index in range(len(self.nodes)):
            shutil.rmtree(f"{self.temp}n{index}", ignore_errors=True)
