"""The `leaderboard` stage: the experiment's ranking, printed and kept on the workflow run."""
from __future__ import annotations

from pipeline.engine.context import Job, RunContext
from pipeline.engine.registry import EVERY_STAGE, stage
from pipeline.engine.units import Unit
from pipeline.errors import PipelineError


@stage("leaderboard", after=EVERY_STAGE)
def plan(context: RunContext, planned: list[Unit]) -> list[Unit]:
    """One unit in the driver after every other unit, rebuilt on every run (never cached)."""
    return [Unit(name="leaderboard", stage="leaderboard", identity={}, cacheable=False,
                 after=[u.name for u in planned], run=run_unit)]


def run_unit(job: Job) -> dict:
    """Print the experiment's leaderboard and keep it (markdown and CSV) on the workflow run and its own."""
    from pipeline.results import formats, leaderboard, transfer

    context = job.context
    try:
        board = leaderboard.build(context.tracker.uri, context.spec.experiment_name)
    except PipelineError as exc:
        context.print(f"[yellow]leaderboard:[/] {exc}")
        return {"run_id": job.run_id}
    formats.show(board, "table", context.display or context.console)
    compared = []
    if context.spec.reference is not None:  # the table this spec reproduces: published beside ours, a verdict each
        from pipeline.results import reproduction

        compared = reproduction.compare(board.rows, context.spec.reference)
        reproduction.show(compared, "table", context.display or context.console,
                          f"Reproduction: {board.experiment} (published against ours, mean ± std over seeds)")
    tables = transfer.to_markdown(transfer.tables(board.rows))  # by labels per class (printed with the table)
    for run_id in (context.parent_run_id, job.run_id):
        context.tracker.log_text(run_id, formats.to_markdown(board), "leaderboard.md")
        if tables:
            context.tracker.log_text(run_id, tables, "transfer.md")
        context.tracker.log_text(run_id, formats.to_csv(board), "leaderboard.csv")
        if compared:
            context.tracker.log_text(run_id, reproduction.to_markdown(compared), "reproduction.md")
    return {"run_id": job.run_id, "board": board}
