"""CPU, memory and (where there are GPUs) GPU use of each node of a training run.

MLflow's own monitors (`mlflow.system_metrics.metrics`: psutil for CPU and memory, NVML through
`nvidia-ml-py` for GPUs) are sampled on the workers, one per node (local rank 0), without an MLflow run:
the workers hold no tracking credentials. Every `report_every_s` the samples' means go through the rank-0
event relay (`pipeline.training.relay`) as a `system` event, and the driver logs them into the training run as
`system/node_<rank>/<metric>` at step = seconds since training started, beside the run's other metrics
(the MLflow UI's System metrics tab lists keys under `system/`). `tracking.system_metrics: false` turns it off.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

SAMPLE_EVERY_S = 2.0
REPORT_EVERY_S = 10.0


def monitors() -> list:
    """CPU and memory always; GPUs when NVML finds some (MLflow's GPU monitor raises otherwise)."""
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor

    found = [CPUMonitor()]
    try:
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        found.append(GPUMonitor())
    except Exception:  # nvidia-ml-py not installed, or no GPU on this node
        pass
    return found


class Sampler:
    """A daemon thread that samples the node's monitors and sends their means to `send` as
    {"kind": "system", "node": rank, "step": seconds, "metrics": {...}}."""

    def __init__(self, send: Callable[..., None], node: int, sample_every_s: float = SAMPLE_EVERY_S,
                 report_every_s: float = REPORT_EVERY_S):
        self.send, self.node = send, node
        self.sample_every_s, self.report_every_s = sample_every_s, report_every_s
        self.monitors: list = []  # made in the thread: importing MLflow does not hold up training
        self.started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="system-metrics")

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        self.monitors = monitors()
        for monitor in self.monitors:  # psutil's first cpu_percent() is a baseline, not a reading
            monitor.collect_metrics()
            monitor.clear_metrics()
        last_report = time.time()
        while not self._stop.wait(self.sample_every_s):
            for monitor in self.monitors:
                monitor.collect_metrics()
            if time.time() - last_report >= self.report_every_s:
                self._report()
                last_report = time.time()

    def _report(self) -> None:
        metrics = {}
        for monitor in self.monitors:
            if any(monitor.metrics.values()):
                metrics.update(monitor.aggregate_metrics())
            monitor.clear_metrics()
        if metrics:
            self.send("system", node=self.node, step=int(time.time() - self.started),
                      metrics={f"system/node_{self.node}/{key}": value for key, value in metrics.items()})

    def stop(self) -> None:
        """The last samples, reported (a run shorter than a sampling interval gets one reading)."""
        self._stop.set()
        self._thread.join(timeout=30)
        for monitor in self.monitors:
            monitor.collect_metrics()
        self._report()


def start_for_worker(send: Callable[..., None] | None, enabled: bool) -> Sampler | None:
    """A sampler on this node's first worker (local rank 0), or None (off, not that worker, or no relay)."""
    if not enabled or send is None:
        return None
    import ray.train

    context = ray.train.get_context()
    if context.get_local_rank() != 0:
        return None
    return Sampler(send, context.get_node_rank()).start()


def sample_cost_us(samples: int = 2000, rounds: int = 5) -> list[float]:
    """CPU microseconds one sample of this node's monitors takes, per round of `samples` (process CPU time,
    so that other load on the machine does not count)."""
    found = monitors()
    costs = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(samples):
            for monitor in found:
                monitor.collect_metrics()
        for monitor in found:
            monitor.aggregate_metrics()
            monitor.clear_metrics()
        costs.append((time.process_time() - started) / samples * 1e6)
    return costs
