"""`pipeline benchmark tracking`: step time with MLflow logging off, on, and on with system metrics."""
from __future__ import annotations

import os
import time

from rich.console import Console
from rich.table import Table


def run_tracking_benchmark(model: str, data_name: str, batch_size: int, steps: int, epochs: int, threads: int,
                           repeats: int, console: Console) -> dict[str, float]:
    """Training-step time of the pipeline's path with MLflow logging off, on, and on with system metrics
    (each node's CPU, memory and GPU use sampled on the workers), interleaved `repeats` times.

    Rank 0 sends its events through the relay; this process writes one `log_batch` request per epoch (and
    one per system-metrics report); this measures what that costs the steps: per mode, the median over
    repeats of each run's median steady-state step time, with the spread (min to max, standard deviation).
    """
    import dataclasses
    import statistics

    from pipeline.engine.cluster import init_ray
    from pipeline.engine.context import RunContext
    from pipeline.spec.loading import parse_spec
    from pipeline.tracking.store import Tracker
    from pipeline.tracking.writer import RunWriter
    from pipeline.training.harness import fit, read_state
    from pipeline.training.loop import train_loop_per_worker
    from pipeline.training.recipe import worker_config

    spec = parse_spec({
        "name": "benchmark", "models": [model], "stages": ["train"],
        "data": {"name": data_name, "limit_train": batch_size * steps, "val_fraction": 0.0},
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": 1e-3, "warmup_epochs": 0},
        "resources": {"num_workers": 1, "cpus_per_worker": threads, "threads_per_worker": threads,
                      "max_failures": 0},
        "storage_path": ".pipeline/benchmark"})
    init_ray()
    config, _ = worker_config(RunContext(spec), spec.models[0], spec.train, spec.data, threads, model)
    tracker = Tracker(f"sqlite:///{os.path.abspath('.pipeline/benchmark/mlflow.db')}")
    os.makedirs(".pipeline/benchmark", exist_ok=True)
    experiment = tracker.experiment_id("benchmark-tracking")
    modes = ("off", "on", "system")
    console.print(f"{model}, {data_name}: {steps} steps of batch {batch_size} per epoch, {epochs} epochs, "
                  f"{threads} CPU thread(s), {repeats} x (tracking off, on, on + system metrics), order rotated")
    step_ms: dict[str, list[float]] = {mode: [] for mode in modes}
    for repeat in range(repeats):
        for mode in modes[repeat % 3:] + modes[:repeat % 3]:  # rotate to cancel order effects
            run_id = tracker.start_run(experiment, f"{model}-{mode}", tags={"stage": "benchmark"}) \
                if mode != "off" else None
            result = fit(train_loop_per_worker, dataclasses.replace(config, system_metrics=mode == "system"), spec.resources,
                         os.path.abspath(spec.storage_path), f"benchmark-tracking-{int(time.time())}-{repeat}-{mode}",
                         on_event=RunWriter(tracker, run_id) if run_id else None)
            if result.error:
                raise result.error
            if run_id:
                tracker.finish(run_id)
            history = read_state(result.checkpoint)["history"]
            rates = [h["samples_per_sec"] for h in history[1:]]  # the first epoch is warm-up
            step_ms[mode].append(1000 * batch_size / statistics.median(rates))
    medians = {mode: statistics.median(values) for mode, values in step_ms.items()}
    table = Table(title="Training-step time: MLflow tracking off, on, on + system metrics (steady-state epochs)")
    for column, justify in (("tracking", "left"), ("median ms/step", "right"), ("min-max", "right"),
                            ("stdev", "right"), ("per repeat", "left")):
        table.add_column(column, justify=justify)
    labels = {"off": "off", "on": "on (per-epoch log_batch)", "system": "on + system metrics"}
    for mode, values in step_ms.items():
        table.add_row(labels[mode], f"{medians[mode]:.2f}", f"{min(values):.2f}-{max(values):.2f}",
                      f"{statistics.stdev(values):.2f}" if len(values) > 1 else "-",
                      ", ".join(f"{v:.2f}" for v in values))
    console.print(table)
    ratio = medians["off"] / medians["on"]
    system_cost = medians["system"] / medians["on"] - 1
    noise = (max(step_ms["on"]) - min(step_ms["on"])) / medians["on"]
    console.print(f"ratio (step time off / on): [bold]{ratio:.3f}[/] (target >= 0.98)")
    console.print(f"system metrics: [bold]{100 * system_cost:+.1f}%[/] step time against tracking on; the spread "
                  f"of tracking on alone across repeats is {100 * noise:.1f}%"
                  + (" (the cost is within it)" if abs(system_cost) <= noise else ""))
    from pipeline.tracking.system_metrics import SAMPLE_EVERY_S, sample_cost_us

    costs = sample_cost_us()
    per_sample = statistics.median(costs)
    console.print(f"one sample of the node's monitors: {per_sample:.0f} us of CPU (median of {len(costs)} rounds, "
                  f"{min(costs):.0f}-{max(costs):.0f} us), {100 * per_sample / (SAMPLE_EVERY_S * 1e6):.4f}% of a core "
                  f"at one sample per {SAMPLE_EVERY_S:g} s")
    return {"off_ms": medians["off"], "on_ms": medians["on"], "system_ms": medians["system"], "ratio": ratio,
            "system_cost": system_cost, "noise": noise, "per_repeat": step_ms, "sample_us": per_sample}
