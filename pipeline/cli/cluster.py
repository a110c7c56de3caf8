"""Commands for the local Ray cluster kept between commands: start, status, stop."""
from __future__ import annotations

import time

import typer

from pipeline.cli.app import app, console

cluster_app = typer.Typer(no_args_is_help=True, help="The local Ray cluster that commands keep between them "
                                                     "(stops after $PIPELINE_CLUSTER_IDLE_MINUTES idle, default 10).")
app.add_typer(cluster_app, name="cluster")


def _describe(state: dict) -> str:
    return (f"{state['num_cpus']} CPUs at {state['gcs']} (dashboard {state['dashboard']}), up "
            f"{(time.time() - state['started']) / 60:.0f} min, stops after {state['idle_minutes']:g} min idle")


@cluster_app.command("start")
def start(cpus: int = typer.Option(None, "--cpus", min=1, help="Logical CPUs (default: the machine's cores).")) -> None:
    """Start the kept cluster now, so that the next command only joins it."""
    from pipeline.engine import warm_cluster
    from pipeline.errors import PipelineError

    if warm_cluster.idle_minutes() == 0:
        raise PipelineError("PIPELINE_CLUSTER_IDLE_MINUTES=0 keeps no cluster: unset it, or give minutes")
    kept = warm_cluster.join_or_start(cpus)
    if kept is None:  # one of another CPU count, Python or project is up
        other = warm_cluster.current()
        raise PipelineError(f"another kept cluster is up{f' ({_describe(other)})' if other else ''}: "
                            "pipeline cluster stop, then start it again")
    state, started = kept
    console.print(f"{'started' if started else 'already up'}: {_describe(state)}")


@cluster_app.command("status")
def status() -> None:
    """Whether the kept cluster is up, and where."""
    from pipeline.engine import warm_cluster

    state = warm_cluster.current()
    console.print(f"up: {_describe(state)}" if state else "no kept cluster is up; the next command starts one")


@cluster_app.command("stop")
def stop() -> None:
    """Stop the kept cluster and its Ray processes (a running command on it is cut off: it resumes when run again)."""
    from pipeline.engine import warm_cluster

    state = warm_cluster.stop()
    console.print(f"stopped the cluster at {state['gcs']}" if state else "no kept cluster was up")
