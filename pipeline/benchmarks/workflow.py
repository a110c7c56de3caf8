"""`pipeline benchmark workflow`: units run concurrently against one at a time, and the cost of each mode."""
from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

WORKFLOW_MODELS = ["lenet5", "resnet20", "plain20", "se_resnet20", "squeezenet1_1_cifar", "squeezenet1_0_cifar"]


def _workflow_spec(name: str, folder: str, models: list, workers: int, bound: int | None, size: int,
                   epochs: int) -> dict:
    return {"name": name, "data": {"name": "synthetic", "synthetic_size": size, "val_fraction": 0.2},
            "models": models, "train": {"epochs": epochs, "batch_size": 64, "lr": 0.003, "warmup_epochs": 0},
            "resources": {"num_workers": workers, "cpus_per_worker": 1, "threads_per_worker": 1, "max_failures": 0},
            "max_concurrent_units": bound, "stages": ["train"],
            "tracking": {"uri": f"sqlite:///{folder}/mlflow.db", "experiment": name},
            "storage_path": f"{folder}/checkpoints"}


class ProcessMemory:
    """Peak count and resident memory of Ray Train's per-run helper actors, sampled from /proc."""

    NAMES = (b"PlacementGroupCleaner", b"TrainController")

    def __init__(self):
        import threading

        self.peak: dict[str, tuple[int, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self):

        while not self._stop.wait(0.5):
            found: dict[str, list[float]] = {}
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    cmdline = (proc / "cmdline").read_bytes()
                    name = next((n.decode() for n in self.NAMES if n in cmdline), None)
                    if name:
                        rss = int((proc / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
                        found.setdefault(name, []).append(rss)
                except OSError:
                    continue
            for name, sizes in found.items():
                count, total = self.peak.get(name, (0, 0.0))
                self.peak[name] = (max(count, len(sizes)), max(total, sum(sizes)))


def _unit_times(uri: str, experiment: str) -> list[dict[str, float]]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], "tags.unit != '' and attributes.status = 'FINISHED'")
    return [{"start": r.info.start_time / 1000, "end": r.info.end_time / 1000, **r.data.metrics} for r in runs]


def run_workflow_benchmark(console: Console, size: int = 1200, epochs: int = 2, slots: int = 6,
                           tiny_units: int = 12, parts: str = "all") -> None:
    """The modes side by side (`parts` all or modes), then the simulated cluster (all or cluster)."""
    import tempfile

    folder = tempfile.mkdtemp(prefix="pipeline-benchmark-workflow-")
    if parts in ("all", "modes"):
        run_modes_benchmark(console, size, epochs, folder)
    if parts in ("all", "cluster"):
        run_slots_benchmark(console, slots, tiny_units, folder)


def run_modes_benchmark(console: Console, size: int, epochs: int, folder: str):
    """One 6-model spec run one unit at a time (2 workers each) and concurrently (1 worker each, as many
    at once as fit), its cached re-run, and the fixed cost per unit with its parts."""
    import io
    import statistics
    import subprocess
    import sys

    import ray
    import yaml

    from pipeline.engine import workflow
    from pipeline.engine.cluster import init_ray
    from pipeline.spec.loading import parse_spec
    from pipeline.tracking.writer import STARTUP_PARTS

    quiet = Console(file=io.StringIO())
    modes = {"one at a time, 2 workers each": _workflow_spec("bench-sequential", folder, WORKFLOW_MODELS, 2, 1,
                                                              size, epochs),
             "concurrent, 1 worker each": _workflow_spec("bench-concurrent", folder, WORKFLOW_MODELS, 1, None,
                                                         size, epochs)}
    console.print(f"{len(WORKFLOW_MODELS)} models ({', '.join(WORKFLOW_MODELS)}), synthetic {size} images, "
                  f"{epochs} epochs; local Ray with 2 CPUs; store in {folder}")
    init_ray(num_cpus=2)
    rows = {}
    with ProcessMemory() as memory:
        for mode, tree in modes.items():
            started = time.time()
            context = workflow.run(parse_spec(tree), quiet)
            if context.failures:
                raise RuntimeError(f"{mode}: units failed: {context.failures}")
            units = _unit_times(tree["tracking"]["uri"], tree["name"])
            rows[mode] = {"wall_s": time.time() - started, "units": units}
    ray.shutdown()
    spec_path = os.path.join(folder, "concurrent.yaml")
    with open(spec_path, "w") as handle:
        yaml.safe_dump(modes["concurrent, 1 worker each"], handle)
    started = time.time()
    cached = subprocess.run([sys.executable, "-m", "pipeline", "run", spec_path], capture_output=True, text=True,
                            cwd=folder)
    cached_s = time.time() - started
    if cached.returncode != 0 or "reused 6 cached unit(s)" not in cached.stdout:
        raise RuntimeError(f"the cached re-run did not reuse every unit: {cached.stdout[-2000:]}{cached.stderr[-2000:]}")

    table = Table(title="One spec, two ways (wall time of the whole workflow; per unit: Ray Train start to first step)")
    for column in ("mode", "wall s", "unit start-up s (median)", *(k.removeprefix("startup_").removesuffix("_s")
                                                                  for k, _, _ in STARTUP_PARTS)):
        table.add_column(column, justify="right")
    for mode, row in rows.items():
        medians = {key: statistics.median(u.get(key, float("nan")) for u in row["units"])
                   for key in ("startup_s", *(k for k, _, _ in STARTUP_PARTS))}
        table.add_row(mode, f"{row['wall_s']:.0f}", f"{medians['startup_s']:.1f}",
                      *(f"{medians[k]:.1f}" for k, _, _ in STARTUP_PARTS))
    console.print(table)
    sequential, concurrent = (rows[m]["wall_s"] for m in modes)
    console.print(f"concurrent / one at a time: [bold]{concurrent / sequential:.2f}[/] of the wall time; "
                  f"cached re-run of the same spec (the whole `pipeline run` command): [bold]{cached_s:.1f} s[/]")
    for name, (count, rss) in memory.peak.items():
        console.print(f"Ray Train's {name} actors: at most {count} at once, {rss:,.0f} MB resident together")
    return rows, cached_s


def run_slots_benchmark(console: Console, slots: int, tiny_units: int, folder: str) -> float:
    """Tiny units on a simulated cluster of two nodes that declare `slots` logical CPUs between them, run by
    `pipeline run` as a user runs it against a cluster (RAY_ADDRESS and the cluster's token)."""
    import subprocess
    import sys

    import yaml

    from pipeline.engine.cluster import LocalCluster

    tiny = _workflow_spec("bench-slots", folder, [{"name": "lenet5", "train": {"seed": i}} for i in range(tiny_units)],
                          1, None, 200, 1)
    tiny["tracking"]["uri"] = f"sqlite:///{folder}/slots.db"
    spec_path = os.path.join(folder, "slots.yaml")
    with open(spec_path, "w") as handle:
        yaml.safe_dump(tiny, handle)
    with LocalCluster([{"num_cpus": slots // 2}, {"num_cpus": slots - slots // 2}]) as cluster:
        started = time.time()
        result = subprocess.run([sys.executable, "-m", "pipeline", "run", spec_path], capture_output=True, text=True,
                                cwd=folder, env={**cluster.env, "RAY_ADDRESS": cluster.gcs})
        wall = time.time() - started
    if result.returncode != 0:
        raise RuntimeError(f"simulated cluster: {result.stdout[-2000:]}{result.stderr[-2000:]}")
    units = _unit_times(tiny["tracking"]["uri"], tiny["name"])
    first, last = min(u["start"] for u in units), max(u["end"] for u in units)
    busy = sum(u["end"] - u["start"] for u in units) / (slots * (last - first))
    ideal = sum(u["end"] - u["start"] for u in units) / slots
    console.print(f"simulated cluster, {slots} slots on 2 nodes, {tiny_units} tiny units: slot-time kept busy "
                  f"[bold]{busy:.2f}[/] (goal >= 0.9) between the first unit's start and the last one's end; "
                  f"wall {last - first:.0f} s against the ideal {ideal:.0f} s (ratio {(last - first) / ideal:.2f}); "
                  f"the whole command {wall:.0f} s")
    return busy
