"""The `leaderboard` stage: the experiment's ranking, printed and kept on the parent run."""
from __future__ import annotations

from pipeline.errors import PipelineError
from pipeline.workflow import RunContext, stage


@stage("leaderboard")
def leaderboard_stage(context: RunContext) -> None:
    """Print the experiment's leaderboard and keep it (markdown and CSV) on the parent run."""
    from pipeline import leaderboard

    try:
        board = leaderboard.build(context.tracker.uri, context.spec.experiment_name)
    except PipelineError as exc:
        context.console.print(f"[yellow]leaderboard:[/] {exc}")
        return
    leaderboard.show(board, "table", context.console)
    context.tracker.log_text(context.parent_run_id, leaderboard.to_markdown(board), "leaderboard.md")
    context.tracker.log_text(context.parent_run_id, leaderboard.to_csv(board), "leaderboard.csv")
    context.outputs["leaderboard"] = board
