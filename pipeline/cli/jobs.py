"""Commands for Ray Jobs on a cluster: jobs, logs, stop."""
from __future__ import annotations

import typer

from pipeline.cli.app import (
    AddressOption,
    app,
    console,
)


@app.command("jobs")
def list_jobs(address: str = AddressOption) -> None:
    """The Ray Jobs on a cluster: id, status, start time, entrypoint."""
    import datetime

    from rich.table import Table

    from pipeline.engine import jobs

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
    from pipeline.engine import jobs

    if follow:
        console.print(f"job {job}: {jobs.follow(address, job)}")
    else:
        print(jobs.logs(address, job), end="")


@app.command()
def stop(job: str, address: str = AddressOption) -> None:
    """Stop a Ray Job; its finished trials stay in MLflow and a re-run resumes the sweep."""
    from pipeline.engine import jobs

    stopped = jobs.stop(address, job)
    console.print(f"job {job}: {'stopping' if stopped else 'already ended'}")
