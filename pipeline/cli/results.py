"""Commands that read results: leaderboard, ui, models, tables, report, register, predict."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Optional

import typer
from rich.console import Console

from pipeline.cli.app import (
    TrackingOption,
    app,
    checked_tracking_uri,
    console,
)
from pipeline.errors import PipelineError


@app.command()
def leaderboard(experiment: str = typer.Option("fashion-mnist", "--experiment", "-e", help="MLflow experiment."),
                fmt: str = typer.Option("table", "--format", "-f", help="table, markdown or csv."),
                family: Optional[str] = typer.Option(None, "--family", help="Only this model family."),
                tag: Optional[list[str]] = typer.Option(None, "--tag", help="Only runs with tag KEY=VALUE "
                                                                            "(repeatable)."),
                compare: Optional[str] = typer.Option(None, "--compare", help="Another experiment, side by side."),
                publish: bool = typer.Option(False, "--publish", help="Also write it into the experiment's "
                                             "description in the MLflow UI."),
                reference: bool = typer.Option(False, "--reference", help="Published figures beside ours, with "
                                               "a verdict per row (the spec's reference section, else the catalogue)."),
                spec: Optional[str] = typer.Option(None, "--spec", help="With --reference: the spec whose reference "
                                                   "section to use (default: the one the latest workflow run kept)."),
                tracking_uri: Optional[str] = TrackingOption) -> None:
    """Each model's run chosen by validation error, ranked by test top-1 error (nothing is selected on it)."""
    from pipeline.results import formats, leaderboard
    from pipeline.results.publish import models_url, publish_leaderboard

    if fmt not in leaderboard.FORMATS:
        raise PipelineError(f"unknown format '{fmt}': use one of {', '.join(leaderboard.FORMATS)}")
    if spec and not reference:
        raise PipelineError("--spec names the spec whose reference rows --reference compares against: add --reference")
    if reference and compare:
        raise PipelineError("--reference and --compare are two different tables: give one")
    tags = leaderboard.parse_tag_filters(tag)
    uri = checked_tracking_uri(tracking_uri)
    built = leaderboard.build(uri, experiment, family, tags)
    if reference:
        from mlflow import MlflowClient

        from pipeline.results import reproduction

        config = reproduction.load_config(spec) if spec else \
            reproduction.spec_reference(MlflowClient(uri), built.experiment_id)
        reproduction.show(reproduction.compare(built.rows, config), fmt, console,
                          f"Reproduction: {experiment} (published against ours, mean ± std over seeds)")
    elif compare:
        formats.show_comparison(built, leaderboard.build(uri, compare, family, tags), fmt, console)
    else:
        formats.show(built, fmt, console)
    if publish:
        publish_leaderboard(uri, experiment)
        console.print(f"published to the description of experiment '{experiment}': "
                      f"{models_url(built)}", highlight=False)


@app.command()
def ui(port: int = typer.Option(5000, help="Port to serve on."), host: str = "127.0.0.1",
       experiment: Optional[str] = typer.Option(None, "--experiment", "-e", help="Only this experiment's links."),
       tracking_uri: Optional[str] = TrackingOption) -> None:
    """Serve the MLflow UI for the same tracking store; print where each experiment's models and latest
    workflow run are."""
    from pipeline.engine import signals
    from pipeline.engine.net import port_taken
    from pipeline.engine.processes import stop_process_groups
    from pipeline.results.leaderboard import ui_url
    from pipeline.results.publish import ui_links
    from pipeline.tracking.store import redact, sqlite_path

    uri = checked_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        console.print(f"The tracking store is a server: open {ui_url(uri)}", highlight=False)
        for line in ui_links(uri, ui_url(uri), experiment):
            console.print(line, highlight=False, soft_wrap=True)
        return
    if port_taken(host, port):
        raise PipelineError(f"port {port} on {host} is already in use (another `pipeline ui`?): pass --port with "
                            "a free one")
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
               "--port", str(port), "--workers", "1"]
    if (db := sqlite_path(uri)) is not None:
        command += ["--default-artifact-root", (db.parent / "mlartifacts").as_uri()]
    console.print(f"MLflow UI: http://{host}:{port}  (store {redact(uri)}; Ctrl-C stops it)")
    for line in ui_links(uri, f"http://{host}:{port}", experiment):
        console.print(line, highlight=False, soft_wrap=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # The server runs in its own session so that Ctrl-C reaches only this command, which then stops it with
    # SIGTERM: uvicorn shuts down cleanly on SIGTERM but prints a CancelledError traceback on SIGINT. SIGTERM or
    # a hangup to this command stops the server the same way, so no server outlives its terminal.
    server = None
    try:
        with signals.raising_interrupted((*signals.SIGNALS, signal.SIGHUP)):
            server = subprocess.Popen(command, env=env, start_new_session=True)
            server.wait()
    except KeyboardInterrupt:
        if server is not None:
            stop_process_groups([(server.pid, server)], grace=15)
        console.print("Stopped the MLflow UI; the runs are unchanged. `pipeline ui` serves it again.")
        return
    if server.returncode != 0:
        raise PipelineError(f"the MLflow UI stopped with exit code {server.returncode}: see its output above")


@app.command()
def models(fmt: str = typer.Option("table", "--format", "-f", help="table, markdown or csv.")) -> None:
    """Every architecture of the zoo: family, paper, year, ImageNet-scale size and cost, small variants."""
    from pipeline.results import tables

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
    from pipeline.results import tables

    if fmt not in tables.FORMATS:
        raise PipelineError(f"unknown format '{fmt}': use one of {', '.join(tables.FORMATS)}")
    built = tables.build_tables(only)
    tables.show(built, fmt, console)
    if out:
        paths = tables.write(built, out)
        Console(stderr=True).print(f"wrote {len(paths)} files to {out}")


@app.command()
def report(experiment: str = typer.Option(..., "--experiment", "-e", help="MLflow experiment."),
           out: str = typer.Option("report", "--out", "-o", help="Folder for report.html, report.md and PNGs."),
           ui_url: Optional[str] = typer.Option(None, "--ui-url", help="MLflow UI address for the run links "
                                                "(default: the tracking server, or `pipeline ui`'s)."),
           tracking_uri: Optional[str] = TrackingOption) -> None:
    """A self-contained HTML page and markdown: leaderboard, charts, links to the runs."""
    from pipeline.results.report import write_report

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
    from pipeline.results.champion import register_champion

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
    from pipeline.results.champion import predict as classify

    for path, labels in zip(images, classify(checked_tracking_uri(tracking_uri), images, run_id, model_uri, top)):
        print(f"{path}: " + ", ".join(f"{label} {100 * p:.1f}%" for label, p in labels))
