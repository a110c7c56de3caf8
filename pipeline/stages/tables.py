"""The `tables` stage: the lecture's tables recomputed, printed and kept in MLflow (markdown and CSV)."""
from __future__ import annotations

from pipeline.engine.context import Job, RunContext
from pipeline.engine.registry import stage
from pipeline.engine.units import Unit


@stage("tables")
def plan(context: RunContext, planned: list[Unit]) -> list[Unit]:
    """One unit in the driver (no Ray, no data): the complexity table covers the spec's models."""
    entries = [(entry.name, entry.kwargs) for entry in context.spec.models]
    return [Unit(name="tables", stage="tables", title="lecture-tables",
                 code=("pipeline/stages/tables.py", "pipeline/results/tables.py", "models"), identity={"models": entries},
                 from_run=lambda run, context: {"run_id": run.info.run_id}, run=run_unit)]


def run_unit(job: Job) -> dict:
    """One run holds every table as `tables/KEY.md` and `tables/KEY.csv`, and all of them in `tables.md`."""
    from pipeline.results import tables

    spec, tracker = job.spec, job.tracker
    built = tables.build_tables(entries=[(entry.name, entry.kwargs) for entry in spec.models])
    tracker.log(job.run_id, {}, params={"models": ",".join(entry.name for entry in spec.models),
                                        "tables": ",".join(t.key for t in built)})
    tables.show(built, "table", job.context.display or job.context.console)
    for table in built:
        tracker.log_text(job.run_id, tables.to_markdown(table), f"tables/{table.key}.md")
        tracker.log_text(job.run_id, tables.to_csv(table), f"tables/{table.key}.csv")
    tracker.log_text(job.run_id, "\n".join(tables.to_markdown(t) for t in built), "tables.md")
    return {"run_id": job.run_id, "tables": built}
