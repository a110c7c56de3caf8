"""The `tables` stage: the lecture's tables recomputed, printed and kept in MLflow (markdown and CSV)."""
from __future__ import annotations

from pipeline.workflow import RunContext, stage


@stage("tables")
def tables_stage(context: RunContext) -> None:
    """Recompute the lecture's tables; the complexity table covers the spec's models.

    One child run holds every table as `tables/KEY.md` and `tables/KEY.csv`, and all of them in `tables.md`.
    """
    from pipeline import tables

    spec, tracker = context.spec, context.tracker
    built = tables.build_tables(entries=[(entry.name, entry.kwargs) for entry in spec.models])
    run_id = tracker.start_run(context.experiment_id, "lecture-tables", parent_id=context.parent_run_id,
                               params={"models": ",".join(entry.name for entry in spec.models),
                                       "tables": ",".join(t.key for t in built)},
                               tags={"stage": "tables", "spec": spec.name})
    status = "FAILED"
    try:
        tables.show(built, "table", context.console)
        for table in built:
            tracker.log_text(run_id, tables.to_markdown(table), f"tables/{table.key}.md")
            tracker.log_text(run_id, tables.to_csv(table), f"tables/{table.key}.csv")
        tracker.log_text(run_id, "\n".join(tables.to_markdown(t) for t in built), "tables.md")
        status = "FINISHED"
    finally:
        tracker.finish(run_id, status)
    context.outputs["tables"] = {"run_id": run_id, "tables": built}
