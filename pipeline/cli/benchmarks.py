"""`pipeline benchmark ...`: each command runs one benchmark of `pipeline.benchmarks`."""
from __future__ import annotations

from typing import Optional

import typer

from pipeline.cli.app import SetOption, _quiet_mlflow, benchmark_app, console
from pipeline.errors import PipelineError


@benchmark_app.command("train")
def benchmark_train(model: str = "resnet20", data: str = typer.Option("fashion_mnist", help="A named data set."),
              batch_size: int = 128, steps: int = typer.Option(40, help="Training steps per epoch."),
              epochs: int = typer.Option(3, min=2, help="Epochs; the first is warm-up."),
              threads: int = typer.Option(1, min=1, help="CPU threads for both paths.")) -> None:
    """Throughput of the Ray Train path against a plain PyTorch loop, and the fixed start-up cost."""
    from pipeline.benchmarks.train import run_benchmark

    run_benchmark(model, data, batch_size, steps, epochs, threads, console)


@benchmark_app.command("zoo")
def benchmark_zoo(batch_size: int = typer.Option(64, min=1), steps: int = typer.Option(3, min=1, help="Timed steps."),
                  image_size: int = typer.Option(28, min=8), in_chans: int = typer.Option(1, min=1, max=3),
                  threads: int = typer.Option(1, min=1, help="CPU threads."),
                  model: Optional[list[str]] = typer.Option(None, "--model", help="Just this model (repeatable).")
                  ) -> None:
    """Training throughput (images/s) of every small-image architecture, one process, after a warm-up step."""
    from pipeline.benchmarks.zoo import run_zoo_benchmark

    run_zoo_benchmark(model or None, batch_size, steps, image_size, in_chans, threads, console)


@benchmark_app.command("clip")
def benchmark_clip(spec: str = typer.Option("experiments/clip_fashion_mnist.yaml", help="A spec with a clip: section."),
                   set_: Optional[list[str]] = SetOption,
                   budget_min: float = typer.Option(10.0, help="Pretraining budget in minutes."),
                   target: float = typer.Option(88.0, help="Zero-shot top-1 (%) to reach.")) -> None:
    """Zero-shot top-1 after contrastive pretraining, beside the same image tower trained supervised."""
    from pipeline.benchmarks.clip import run_benchmark

    run_benchmark(spec, set_ or [], budget_min, target, console)


@benchmark_app.command("data")
def benchmark_data(images: int = typer.Option(3000, min=200, help="Synthetic JPEGs written (and streamed)."),
                   width: int = 400, height: int = 350, image_size: int = typer.Option(224, help="Crop size."),
                   batch_size: int = 64, cores: Optional[int] = typer.Option(None, help="Default: all."),
                   folder: Optional[str] = typer.Option(None, help="Keep the shards here (reused when present)."),
                   model_images: int = typer.Option(640, help="Images per epoch of the ResNet-18 data-wait run.")
                   ) -> None:
    """Streaming ingest side by side: the old path, the Ray Data path, a plain DataLoader; and data wait."""
    from pipeline.benchmarks.data import run_data_benchmark

    run_data_benchmark(console, images, (width, height), image_size, batch_size, cores, folder, model_images)


@benchmark_app.command("tracking")
def benchmark_tracking(model: str = "lenet5", data: str = typer.Option("fashion_mnist", help="A named data set."),
                       batch_size: int = 128, steps: int = typer.Option(40, help="Training steps per epoch."),
                       epochs: int = typer.Option(4, min=2, help="Epochs; the first is warm-up."),
                       threads: int = typer.Option(1, min=1, help="CPU threads."),
                       repeats: int = typer.Option(3, min=1, help="Rounds of (off, on, on + system metrics), "
                                                   "order rotated.")) -> None:
    """Training-step time with MLflow tracking off, on, and on with system metrics, side by side."""
    from pipeline.benchmarks.tracking import run_tracking_benchmark

    run_tracking_benchmark(model, data, batch_size, steps, epochs, threads, repeats, console)


@benchmark_app.command("sweep")
def benchmark_sweep(model: str = "lenet5", samples: int = typer.Option(6, min=2, help="Configurations sampled."),
                    epochs: int = typer.Option(4, min=2, help="Epochs of a trial that is not stopped."),
                    limit_train: int = typer.Option(4000, min=100, help="Training images.")) -> None:
    """ASHA against the same search without early stopping: best validation error and compute, side by side."""
    from pipeline.benchmarks.sweep import run_sweep_benchmark

    run_sweep_benchmark(model, samples, epochs, limit_train, console)


@benchmark_app.command("workflow")
def benchmark_workflow(size: int = typer.Option(1200, help="Synthetic images per unit."),
                       epochs: int = typer.Option(2, min=1), slots: int = typer.Option(6, min=2, help="Logical CPUs "
                       "of the simulated cluster."), units: int = typer.Option(12, min=2, help="Its tiny units."),
                       part: str = typer.Option("all", help="all, modes (one at a time / concurrent / cached) or "
                                                "cluster (the simulated cluster).")) -> None:
    """Units one at a time against concurrently, the fixed cost per unit, a cached re-run, and the slot-time
    kept busy on a simulated cluster."""
    from pipeline.benchmarks.workflow import run_workflow_benchmark

    if part not in ("all", "modes", "cluster"):
        raise PipelineError(f"unknown part '{part}': use all, modes or cluster")
    _quiet_mlflow(False)
    run_workflow_benchmark(console, size, epochs, slots, units, part)


@benchmark_app.command("startup")
def benchmark_startup(model: str = "resnet18", epochs: int = typer.Option(2, min=1),
                      limit_train: int = typer.Option(10000, min=100, help="Fashion-MNIST training images."),
                      workers: int = typer.Option(2, min=1, help="Ray Train workers."),
                      threads: int = typer.Option(1, min=1, help="CPU threads per worker (and CPUs it holds); "
                                                  "the plain script has workers x threads."),
                      repeats: int = typer.Option(3, min=1, help="Alternated runs of each.")) -> None:
    """A whole short run: `pipeline run` against a plain PyTorch script of the same work, process start to
    printed test accuracy, with the pipeline's fixed cost by part."""
    from pipeline.benchmarks.startup import run_startup_benchmark

    _quiet_mlflow(False)
    run_startup_benchmark(console, model, epochs, limit_train, workers, repeats, threads)
