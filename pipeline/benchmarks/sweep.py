"""`pipeline benchmark sweep`: a sweep's wall time and trials."""
from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table


def run_sweep_benchmark(model: str, samples: int, epochs: int, limit_train: int, console: Console) -> dict:
    """A fixed Fashion-MNIST search with ASHA and without early stopping, side by side: best validation
    error, compute (trial-epochs, wall time) and Tune + Train's per-trial start-up (trial start to first step)."""
    import statistics
    import tempfile

    from mlflow import MlflowClient

    from pipeline.engine import workflow
    from pipeline.spec.loading import parse_spec

    folder = tempfile.mkdtemp(prefix="sweep-benchmark-")
    rows = {}
    for scheduler in ("none", "asha"):
        spec = parse_spec({
            "name": f"sweep-benchmark-{scheduler}", "models": [model], "stages": ["sweep"],
            "data": {"name": "fashion_mnist", "limit_train": limit_train, "val_fraction": 0.05},
            "train": {"epochs": epochs, "batch_size": 128, "warmup_epochs": 0},
            "sweep": {"space": {"lr": {"type": "loguniform", "low": 1e-4, "high": 0.1},
                                "weight_decay": {"type": "uniform", "low": 0.0, "high": 0.1}},
                      "num_samples": samples, "search": "random", "scheduler": scheduler, "metric": "val_top1",
                      "max_concurrent_trials": 2},
            "tracking": {"uri": f"sqlite:///{folder}/mlflow.db", "experiment": f"sweep-benchmark-{scheduler}"},
            "storage_path": f"{folder}/checkpoints"})
        started = time.time()
        context = workflow.run(spec, console)
        wall = time.time() - started
        outcome = context.outputs["sweep"][model]["outcome"]
        client = MlflowClient(spec.tracking.uri)
        trials = client.search_runs([context.experiment_id], "tags.stage = 'trial'")
        startup = [t.data.metrics["startup_s"] for t in trials if "startup_s" in t.data.metrics]
        rows[scheduler] = {"best_val_err": 100 - outcome.best_metrics["val_top1"], "trial_epochs": outcome.trial_epochs,
                           "wall_s": wall, "startup_s": statistics.median(startup) if startup else float("nan"),
                           "stopped": sum(t.data.tags.get("end") == "stopped_early" for t in trials)}
    table = Table(title=f"{model} on Fashion-MNIST ({limit_train} training images), {samples} random configs "
                        f"of lr and weight decay, {epochs} epochs max, 2 concurrent trials of 1 worker")
    for column in ("scheduler", "best val top-1 error %", "trial-epochs", "stopped early", "wall time s",
                   "median trial start to first step s"):
        table.add_column(column, justify="right")
    for name, row in rows.items():
        table.add_row("ASHA" if name == "asha" else "none (FIFO)", f"{row['best_val_err']:.2f}", str(row["trial_epochs"]),
                      str(row["stopped"]), f"{row['wall_s']:.0f}", f"{row['startup_s']:.1f}")
    console.print(table)
    return rows
