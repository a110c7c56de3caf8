"""The `pipeline` command: its Typer app, shared options and the entry point that turns errors into one line."""
from __future__ import annotations

import logging
import os
import sys

import typer
from rich.console import Console

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
    from pipeline.tracking.store import check_reachable, resolve_uri

    uri = resolve_uri(option)
    check_reachable(uri)
    return uri


def _quiet_mlflow(verbose: bool) -> None:
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
        logging.getLogger("alembic").setLevel(logging.WARNING)


benchmark_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print their figures side by side.")
app.add_typer(benchmark_app, name="benchmark")


AddressOption = typer.Option(os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265"), "--address",
                             help="The Ray cluster's head (dashboard address; $RAY_API_SERVER_ADDRESS).")
