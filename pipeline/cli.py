"""The `pipeline` command."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from pipeline.errors import PipelineError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, sweep and rank image classifiers on Ray, tracked in MLflow.")
# Wide enough for the leaderboard when the output is a file or a pipe.
console = Console() if sys.stdout.isatty() else Console(width=200)

SetOption = typer.Option(None, "--set", help="Override a spec field: --set train.epochs=1 (repeatable).")
OnlyOption = typer.Option(None, "--model", help="Only the spec's models matching this name or pattern "
                                                 "(resnet*), with their recipes (repeatable).")
SkipOption = typer.Option(None, "--skip", help="Leave out the spec's models matching this name or pattern "
                                               "(repeatable).")
TrackingOption = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI "
                                                          "or sqlite:///mlflow.db here).")


def checked_tracking_uri(option: str | None) -> str:
    """The tracking URI of a command that reads or writes MLflow, checked before the command's first MLflow call:
    a dead, wrong or password-protected server is a one-line error instead of the MLflow client's traceback."""
    from pipeline.tracking import check_reachable, resolve_uri

    uri = resolve_uri(option)
    check_reachable(uri)
    return uri


@app.command()
def validate(spec: str, set_: Optional[list[str]] = SetOption, only: Optional[list[str]] = OnlyOption,
             skip: Optional[list[str]] = SkipOption) -> None:
    """Check an experiment spec without running it."""
    from pipeline.config import load_spec

    loaded = load_spec(spec, set_ or [], only or [], skip or [])
    console.print(f"[green]ok[/]: {loaded.name}: {len(loaded.models)} model(s) on {loaded.data.name}, "
                  f"stages {' -> '.join(loaded.stages)}")


RerunOption = typer.Option(None, "--rerun", help="Train these units again although they are cached: unit names or "
                                                 "patterns (train/resnet*, resnet20) or 'all' (repeatable).")


@app.command()
def run(spec: str, set_: Optional[list[str]] = SetOption, only: Optional[list[str]] = OnlyOption,
        skip: Optional[list[str]] = SkipOption, rerun: Optional[list[str]] = RerunOption,
        dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan (pipeline status) and run nothing."),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Ray's own logs."),
        address: Optional[str] = typer.Option(None, "--address", help="Submit to this Ray cluster's head through "
                                              "Ray Jobs (http://HEAD:8265) instead of running here."),
        working_dir: str = typer.Option(".", "--working-dir", help="With --address: the folder sent to the "
                                        "cluster as the job's working directory (holds the spec)."),
        detach: bool = typer.Option(False, "--detach", help="With --address: return after submitting.")) -> None:
    """Run an experiment spec as a workflow: its units run concurrently, cached ones are reused, cut-off ones
    resume (here, or on a cluster with --address)."""
    from pipeline.config import load_spec

    if dry_run:
        return status(spec, set_, only, skip, rerun)
    if address:
        from pipeline import jobs

        job_id = jobs.submit(spec, set_ or [], address, working_dir, verbose, only or [], skip or [], rerun or [])
        console.print(f"submitted job [bold]{job_id}[/] to {address}")
        if detach:
            console.print(f"follow it with: pipeline logs {job_id} --follow --address {address}")
            return
        try:
            status_ = jobs.follow(address, job_id)
        except KeyboardInterrupt:
            console.print(f"the job goes on; stop it with: pipeline stop {job_id} --address {address}")
            return
        console.print(f"job {job_id}: {status_}")
        return
    loaded = load_spec(spec, set_ or [], only or [], skip or [])
    _quiet_mlflow(verbose)
    context = run_workflow(loaded, verbose, rerun or [])
    if context.failures:
        raise PipelineError(context.failure_summary())


def run_workflow(spec, verbose: bool, rerun: list[str]):
    """`workflow.run`, with an interrupt ending the process with 130 (SIGINT) or 143 (SIGTERM).

    The exit is handled here, not by Typer (which turns any KeyboardInterrupt into 130): a sweep's Tune loop
    may still run in its unit's thread, the interpreter's exit would shut Ray down under it, and Ray's core
    worker then ends the process with code 1. The workflow has marked its runs KILLED and said how to resume,
    and a local Ray cluster ends with this process (Ray's fate sharing), so the process ends at once."""
    from pipeline import workflow

    try:
        return workflow.run(spec, console, verbose, rerun)
    except KeyboardInterrupt as exc:
        if not isinstance(exc, workflow.Interrupted):
            Console(stderr=True).print("[bold red]interrupted[/]")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + getattr(exc, "signum", signal.SIGINT))


def _quiet_mlflow(verbose: bool) -> None:
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
        logging.getLogger("alembic").setLevel(logging.WARNING)


@app.command()
def status(spec: str, set_: Optional[list[str]] = SetOption, only: Optional[list[str]] = OnlyOption,
           skip: Optional[list[str]] = SkipOption, rerun: Optional[list[str]] = RerunOption) -> None:
    """The spec's DAG of units: per unit what it needs, its key, its state (cached with its run, partial with
    its last epoch, pending, failed with the reason) and the resources it asks for."""
    from rich.table import Table

    from pipeline import workflow
    from pipeline.config import load_spec

    loaded = load_spec(spec, set_ or [], only or [], skip or [])
    _quiet_mlflow(False)
    engine = workflow.prepare(loaded, console, rerun=rerun or [])
    table = Table(title=f"{loaded.name}: experiment '{loaded.experiment_name}' in {engine.context.tracker.display_uri}")
    for column in ("unit", "needs", "key", "state", "resources"):
        table.add_column(column)
    for row in workflow.unit_table(engine):
        table.add_row(*row.values())
    console.print(table)


@app.command("rerun")
def rerun_run(run_id: str = typer.Argument(..., help="The MLflow run of a unit (a leaderboard row's run)."),
              verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Ray's own logs."),
              tracking_uri: Optional[str] = TrackingOption) -> None:
    """Train a unit again from what its run recorded (spec, key, code version), as a new run beside the old
    one, and print both results."""
    from pipeline import workflow
    from pipeline.tracking import resolve_uri

    _quiet_mlflow(verbose)
    old, spec, unit = workflow.rebuild(resolve_uri(tracking_uri), run_id, console)
    context = run_workflow(spec, verbose, [unit])
    if context.failures:
        raise PipelineError(context.failure_summary())
    new = workflow.result_of(context, unit)
    console.print(workflow.compare_line(old, new))


@app.command()
def leaderboard(experiment: str = typer.Option("fashion-mnist", "--experiment", "-e", help="MLflow experiment."),
                fmt: str = typer.Option("table", "--format", "-f", help="table, markdown or csv."),
                family: Optional[str] = typer.Option(None, "--family", help="Only this model family."),
                tag: Optional[list[str]] = typer.Option(None, "--tag", help="Only runs with tag KEY=VALUE "
                                                                            "(repeatable)."),
                compare: Optional[str] = typer.Option(None, "--compare", help="Another experiment, side by side."),
                publish: bool = typer.Option(False, "--publish", help="Also write it into the experiment's "
                                             "description in the MLflow UI."),
                tracking_uri: Optional[str] = TrackingOption) -> None:
    """The best run per model, ranked by test top-1 error (nothing is selected on it)."""
    from pipeline import leaderboard as board

    if fmt not in board.FORMATS:
        raise PipelineError(f"unknown format '{fmt}': use one of {', '.join(board.FORMATS)}")
    tags = board.parse_tag_filters(tag)
    uri = checked_tracking_uri(tracking_uri)
    built = board.build(uri, experiment, family, tags)
    if compare:
        board.show_comparison(built, board.build(uri, compare, family, tags), fmt, console)
    else:
        board.show(built, fmt, console)
    if publish:
        board.publish(uri, experiment)
        console.print(f"published to the description of experiment '{experiment}': "
                      f"{board.models_url(built)}", highlight=False)


@app.command()
def ui(port: int = typer.Option(5000, help="Port to serve on."), host: str = "127.0.0.1",
       experiment: Optional[str] = typer.Option(None, "--experiment", "-e", help="Only this experiment's links."),
       tracking_uri: Optional[str] = TrackingOption) -> None:
    """Serve the MLflow UI for the same tracking store; print where each experiment's models and latest
    workflow run are."""
    from pipeline.leaderboard import ui_links, ui_url
    from pipeline.tracking import redact, resolve_uri, sqlite_path

    uri = resolve_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        console.print(f"The tracking store is a server: open {ui_url(uri)}", highlight=False)
        for line in ui_links(uri, ui_url(uri), experiment):
            console.print(line, highlight=False, soft_wrap=True)
        return
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
               "--port", str(port), "--workers", "1"]
    if (db := sqlite_path(uri)) is not None:
        command += ["--default-artifact-root", (db.parent / "mlartifacts").as_uri()]
    console.print(f"MLflow UI: http://{host}:{port}  (store {redact(uri)}; Ctrl-C stops it)")
    for line in ui_links(uri, f"http://{host}:{port}", experiment):
        console.print(line, highlight=False, soft_wrap=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    try:
        subprocess.run(command, env=env, check=False)
    except KeyboardInterrupt:
        pass


benchmark_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print their figures side by side.")
app.add_typer(benchmark_app, name="benchmark")


@benchmark_app.command("train")
def benchmark_train(model: str = "resnet20", data: str = typer.Option("fashion_mnist", help="A named data set."),
              batch_size: int = 128, steps: int = typer.Option(40, help="Training steps per epoch."),
              epochs: int = typer.Option(3, min=2, help="Epochs; the first is warm-up."),
              threads: int = typer.Option(1, min=1, help="CPU threads for both paths.")) -> None:
    """Throughput of the Ray Train path against a plain PyTorch loop, and the fixed start-up cost."""
    from pipeline.benchmark import run_benchmark

    run_benchmark(model, data, batch_size, steps, epochs, threads, console)


@app.command()
def models(fmt: str = typer.Option("table", "--format", "-f", help="table, markdown or csv.")) -> None:
    """Every architecture of the zoo: family, paper, year, ImageNet-scale size and cost, small variants."""
    from pipeline import tables

    if fmt not in tables.FORMATS:
        raise PipelineError(f"unknown format '{fmt}': use one of {', '.join(tables.FORMATS)}")
    tables.show([tables.models_table()], fmt, console)


@app.command("tables")
def lecture_tables(fmt: str = typer.Option("table", "--format", "-f", help="table, markdown or csv."),
                   out: Optional[str] = typer.Option(None, "--out", "-o", help="Also write each table as "
                                                     "markdown and CSV into this folder."),
                   only: Optional[list[str]] = typer.Option(None, "--only", help="Just this table (repeatable): "
                                                            "conv_examples, alexnet_layers, vgg16_memory, "
                                                            "inception_modules, stacked_convs, vit_sizes, complexity.")
                   ) -> None:
    """The lecture's tables and worked numbers, recomputed from the model definitions."""
    from pipeline import tables

    if fmt not in tables.FORMATS:
        raise PipelineError(f"unknown format '{fmt}': use one of {', '.join(tables.FORMATS)}")
    built = tables.build_tables(only)
    tables.show(built, fmt, console)
    if out:
        paths = tables.write(built, out)
        Console(stderr=True).print(f"wrote {len(paths)} files to {out}")


@benchmark_app.command("zoo")
def benchmark_zoo(batch_size: int = typer.Option(64, min=1), steps: int = typer.Option(3, min=1, help="Timed steps."),
                  image_size: int = typer.Option(28, min=8), in_chans: int = typer.Option(1, min=1, max=3),
                  threads: int = typer.Option(1, min=1, help="CPU threads."),
                  model: Optional[list[str]] = typer.Option(None, "--model", help="Just this model (repeatable).")
                  ) -> None:
    """Training throughput (images/s) of every small-image architecture, one process, after a warm-up step."""
    from pipeline.throughput import run_zoo_benchmark

    run_zoo_benchmark(model or None, batch_size, steps, image_size, in_chans, threads, console)


@benchmark_app.command("clip")
def benchmark_clip(spec: str = typer.Option("experiments/clip_fashion_mnist.yaml", help="A spec with a clip: section."),
                   set_: Optional[list[str]] = SetOption,
                   budget_min: float = typer.Option(10.0, help="Pretraining budget in minutes."),
                   target: float = typer.Option(88.0, help="Zero-shot top-1 (%) to reach.")) -> None:
    """Zero-shot top-1 after contrastive pretraining, beside the same image tower trained supervised."""
    from pipeline.clip import run_benchmark

    run_benchmark(spec, set_ or [], budget_min, target, console)


@app.command()
def report(experiment: str = typer.Option(..., "--experiment", "-e", help="MLflow experiment."),
           out: str = typer.Option("report", "--out", "-o", help="Folder for report.html, report.md and PNGs."),
           ui_url: Optional[str] = typer.Option(None, "--ui-url", help="MLflow UI address for the run links "
                                                "(default: the tracking server, or `pipeline ui`'s)."),
           tracking_uri: Optional[str] = TrackingOption) -> None:
    """A self-contained HTML page and markdown: leaderboard, charts, links to the runs."""
    from pipeline.report import write_report

    written = write_report(checked_tracking_uri(tracking_uri), experiment, out, ui_url)
    for note in written.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"report: {written.html} and {written.markdown} ({len(written.images)} charts); "
                  f"kept in MLflow run {written.run_id}")


@app.command()
def register(experiment: str = typer.Option(..., "--experiment", "-e", help="MLflow experiment."),
             name: Optional[str] = typer.Option(None, "--name", help="Registered model name (default: the "
                                                "experiment's)."),
             tracking_uri: Optional[str] = TrackingOption) -> None:
    """Register the model with the lowest validation error in the MLflow Model Registry, alias `champion`."""
    from pipeline.registry import register_champion

    done = register_champion(checked_tracking_uri(tracking_uri), experiment, name)
    console.print(f"{done['uri']} = {done['name']} version {done['version']}: {done['model']} "
                  f"(chosen by validation top-1 error {done['val_top1_err']:.2f}%; test {done['top1_err']:.2f}%; "
                  f"models:/{done['model_id']}, run {done['run_id']})")


@app.command()
def predict(images: list[str] = typer.Argument(..., help="Image files (PNG, JPEG, ...)."),
            run_id: Optional[str] = typer.Option(None, "--run", help="A training run's weights."),
            model_uri: Optional[str] = typer.Option(None, "--model-uri", help="A registered model, e.g. "
                                                    "models:/NAME@champion."),
            top: int = typer.Option(3, "--top", min=1, help="Labels per image."),
            tracking_uri: Optional[str] = TrackingOption) -> None:
    """Classify image files with a training run's model or a registered one; labels with probabilities."""
    from pipeline.registry import predict as classify

    for path, labels in zip(images, classify(checked_tracking_uri(tracking_uri), images, run_id, model_uri, top)):
        print(f"{path}: " + ", ".join(f"{label} {100 * p:.1f}%" for label, p in labels))


@benchmark_app.command("data")
def benchmark_data(images: int = typer.Option(3000, min=200, help="Synthetic JPEGs written (and streamed)."),
                   width: int = 400, height: int = 350, image_size: int = typer.Option(224, help="Crop size."),
                   batch_size: int = 64, cores: Optional[int] = typer.Option(None, help="Default: all."),
                   folder: Optional[str] = typer.Option(None, help="Keep the shards here (reused when present)."),
                   model_images: int = typer.Option(640, help="Images per epoch of the ResNet-18 data-wait run.")
                   ) -> None:
    """Streaming ingest side by side: the old path, the Ray Data path, a plain DataLoader; and data wait."""
    from pipeline.benchmark import run_data_benchmark

    run_data_benchmark(console, images, (width, height), image_size, batch_size, cores, folder, model_images)


@benchmark_app.command("tracking")
def benchmark_tracking(model: str = "lenet5", data: str = typer.Option("fashion_mnist", help="A named data set."),
                       batch_size: int = 128, steps: int = typer.Option(40, help="Training steps per epoch."),
                       epochs: int = typer.Option(4, min=2, help="Epochs; the first is warm-up."),
                       threads: int = typer.Option(1, min=1, help="CPU threads."),
                       repeats: int = typer.Option(3, min=1, help="Rounds of (off, on, on + system metrics), "
                                                   "order rotated.")) -> None:
    """Training-step time with MLflow tracking off, on, and on with system metrics, side by side."""
    from pipeline.benchmark import run_tracking_benchmark

    run_tracking_benchmark(model, data, batch_size, steps, epochs, threads, repeats, console)


@benchmark_app.command("sweep")
def benchmark_sweep(model: str = "lenet5", samples: int = typer.Option(6, min=2, help="Configurations sampled."),
                    epochs: int = typer.Option(4, min=2, help="Epochs of a trial that is not stopped."),
                    limit_train: int = typer.Option(4000, min=100, help="Training images.")) -> None:
    """ASHA against the same search without early stopping: best validation error and compute, side by side."""
    from pipeline.benchmark import run_sweep_benchmark

    run_sweep_benchmark(model, samples, epochs, limit_train, console)


@benchmark_app.command("workflow")
def benchmark_workflow(size: int = typer.Option(1200, help="Synthetic images per unit."),
                       epochs: int = typer.Option(2, min=1), slots: int = typer.Option(6, min=2, help="Logical CPUs "
                       "of the simulated cluster."), units: int = typer.Option(12, min=2, help="Its tiny units."),
                       part: str = typer.Option("all", help="all, modes (one at a time / concurrent / cached) or "
                                                "cluster (the simulated cluster).")) -> None:
    """Units one at a time against concurrently, the fixed cost per unit, a cached re-run, and the slot-time
    kept busy on a simulated cluster."""
    from pipeline.benchmark import run_workflow_benchmark

    if part not in ("all", "modes", "cluster"):
        raise PipelineError(f"unknown part '{part}': use all, modes or cluster")
    _quiet_mlflow(False)
    run_workflow_benchmark(console, size, epochs, slots, units, part)


AddressOption = typer.Option(os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265"), "--address",
                             help="The Ray cluster's head (dashboard address; $RAY_API_SERVER_ADDRESS).")


@app.command("jobs")
def list_jobs(address: str = AddressOption) -> None:
    """The Ray Jobs on a cluster: id, status, start time, entrypoint."""
    import datetime

    from rich.table import Table

    from pipeline import jobs

    table = Table(title=f"Ray Jobs on {address}")
    for column in ("job", "status", "started", "entrypoint"):
        table.add_column(column)
    for job in jobs.list_jobs(address):
        started = datetime.datetime.fromtimestamp(job.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S") \
            if job.start_time else ""
        table.add_row(job.submission_id or job.job_id or "", str(job.status), started, job.entrypoint)
    console.print(table)


@app.command()
def logs(job: str, follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the job ends."),
         address: str = AddressOption) -> None:
    """A Ray Job's output (its driver's log)."""
    from pipeline import jobs

    if follow:
        console.print(f"job {job}: {jobs.follow(address, job)}")
    else:
        print(jobs.logs(address, job), end="")


@app.command()
def stop(job: str, address: str = AddressOption) -> None:
    """Stop a Ray Job; its finished trials stay in MLflow and a re-run resumes the sweep."""
    from pipeline import jobs

    stopped = jobs.stop(address, job)
    console.print(f"job {job}: {'stopping' if stopped else 'already ended'}")


def main() -> None:
    try:
        app()
    except PipelineError as exc:
        from pipeline.tracking import redact

        # Rich markup off for the message: a URI's [brackets] or a value like [1 must print as they are.
        Console(stderr=True).print(f"[bold red]error:[/] {escape(redact(str(exc)))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
