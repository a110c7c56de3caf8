"""Commands that run a spec: validate, run, status, rerun."""
from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from pipeline.cli.app import (
    OnlyOption,
    SetOption,
    SkipOption,
    TrackingOption,
    _quiet_mlflow,
    app,
    console,
)
from pipeline.errors import PipelineError


SeedsOption = typer.Option(None, "--seeds", min=1, help="Train each model with seeds 0..N-1 (the same as --set "
                                                        "'seeds=[0, 1, ...]').")


def with_seeds(set_: Optional[list[str]], seeds: Optional[int]) -> list[str]:
    return [*(set_ or []), *([f"seeds={list(range(seeds))}"] if seeds is not None else [])]


@app.command()
def validate(spec: str, set_: Optional[list[str]] = SetOption, only: Optional[list[str]] = OnlyOption,
             skip: Optional[list[str]] = SkipOption, seeds: Optional[int] = SeedsOption) -> None:
    """Check an experiment spec without running it."""
    from pipeline.spec.loading import load_spec

    loaded = load_spec(spec, with_seeds(set_, seeds), only or [], skip or [])
    if any(entry.kwargs for entry in loaded.models):  # checked against the models themselves: imports timm
        from pipeline.training.model_checks import check_model_kwargs

        for entry in loaded.models:
            check_model_kwargs(entry.name, entry.kwargs)
    about = f" ({escape(loaded.description.strip().splitlines()[0])})" if loaded.description.strip() else ""
    console.print(f"[green]ok[/]: {loaded.name}{about}: {len(loaded.models)} model(s) on {loaded.data.name}, "
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
        detach: bool = typer.Option(False, "--detach", help="With --address: return after submitting."),
        seeds: Optional[int] = SeedsOption) -> None:
    """Run an experiment spec as a workflow: its units run concurrently, cached ones are reused, cut-off ones
    resume (here, or on a cluster with --address)."""
    from pipeline.spec.loading import load_spec

    set_ = with_seeds(set_, seeds)
    if dry_run:
        return status(spec, set_, only, skip, rerun, seeds=None)
    if address:
        from pipeline.engine import jobs

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
    """`workflow.run`, with an interrupt ending the process with 130 (SIGINT) or 143 (SIGTERM), here rather
    than by Typer (which turns any KeyboardInterrupt into 130): see `pipeline.engine.signals`."""
    from pipeline.engine import signals, workflow

    try:
        return workflow.run(spec, console, verbose, rerun)
    except KeyboardInterrupt as exc:
        if not isinstance(exc, signals.Interrupted):  # before the workflow's own handler was in place
            Console(stderr=True).print("[bold red]interrupted[/]")
        signals.exit_interrupted(exc)


@app.command()
def status(spec: str, set_: Optional[list[str]] = SetOption, only: Optional[list[str]] = OnlyOption,
           skip: Optional[list[str]] = SkipOption, rerun: Optional[list[str]] = RerunOption,
           seeds: Optional[int] = SeedsOption) -> None:
    """The spec's DAG of units: per unit what it needs, its key, its state (cached with its run, partial with
    its last epoch, pending, failed with the reason) and the resources it asks for."""
    from rich.table import Table

    from pipeline.engine import workflow
    from pipeline.spec.loading import load_spec

    loaded = load_spec(spec, with_seeds(set_, seeds), only or [], skip or [])
    _quiet_mlflow(False)
    engine = workflow.prepare(loaded, console, rerun=rerun or [])
    workflow.resolve_through_cache(engine)
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
    from pipeline.engine import rerun
    from pipeline.tracking.store import resolve_uri

    _quiet_mlflow(verbose)
    old, spec, unit = rerun.rebuild(resolve_uri(tracking_uri), run_id, console)
    context = run_workflow(spec, verbose, [unit])
    if context.failures:
        raise PipelineError(context.failure_summary())
    new = rerun.result_of(context, unit)
    console.print(rerun.compare_line(old, new))
