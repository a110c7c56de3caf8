"""An experiment's report: the leaderboard, the charts and links to the runs, as one self-contained HTML
page (images embedded) and as markdown with PNG files beside it; also kept as artifacts of a `report` run."""
from __future__ import annotations

import base64
import html
import re
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.results import formats, leaderboard, plots, reproduction, transfer

CURVE_KINDS = ("train", "retrain")  # runs with per-epoch metrics
MAX_CURVES = 8


@dataclass
class Report:
    html: Path
    markdown: Path
    images: list[Path]
    run_id: str | None
    notes: list[str]


PLAIN, RESIDUAL = re.compile(r"^plain\d+$"), re.compile(r"^resnet\d+$")


def degradation_runs(board: leaderboard.Leaderboard) -> dict[str, list[str]]:
    """model -> the run ids of its row (a recipe's seeds) for the plain nets and residual nets on the board, when
    it has both (the degradation experiment); empty otherwise."""
    rows = [r for r in board.rows if r["kind"] in CURVE_KINDS and (PLAIN.match(r["model"]) or RESIDUAL.match(r["model"]))]
    if not any(PLAIN.match(r["model"]) for r in rows) or not any(RESIDUAL.match(r["model"]) for r in rows):
        return {}
    groups = leaderboard.seed_groups(board.runs or board.rows)
    return {row["model"]: next([r["run_id"] for r in group] for group in groups
                               if any(r["run_id"] == row["run_id"] for r in group)) for row in rows}


def charts(client, board: leaderboard.Leaderboard, compared: list | None = None
           ) -> tuple[list[tuple[str, str, bytes]], list[str]]:
    """(file name, caption, PNG) of each chart the experiment's runs allow, and notes on the ones they do not."""
    out, notes = [], []
    if runs := degradation_runs(board):
        try:
            curves = {model: plots.mean_epoch_errors(client, ids) for model, ids in runs.items()}
            seeds = max(len(ids) for ids in runs.values())
            out.append(("degradation.png", "Plain against residual nets: training and test error per epoch, one line "
                        f"per depth (He et al. 2015, Fig. 1 and 6){f', mean over {seeds} seeds' if seeds > 1 else ''}",
                        plots.png_bytes(plots.degradation_chart(curves, f"{board.experiment}: plain against residual"))))
        except PipelineError as exc:
            notes.append(f"plain-against-residual figure: {exc}")
    for number, table in enumerate(transfer.tables(board.rows)):  # accuracy against labels per class
        out.append((f"transfer{number or ''}.png", f"{table.title}: from scratch, fine-tuned and as a frozen-backbone "
                    "probe", plots.png_bytes(transfer.chart(table))))
    points = [(c.reference.model, c.reference.number, c.mean, c.std, c.verdict) for c in compared or []
              if c.mean is not None]
    if points:
        out.append(("reproduction.png", "Our error against the published one, one point per model (the diagonal: "
                    "equal)", plots.png_bytes(plots.reproduction_chart(points, f"{board.experiment}: ours against "
                                                                                 "published"))))
    try:
        out.append(("complexity.png", "Top-1 accuracy against GMACs per image; bubble area by parameters",
                    plots.png_bytes(plots.complexity_chart(board.rows, f"{board.experiment}: accuracy against "
                                                                      f"complexity"))))
    except PipelineError as exc:
        notes.append(f"complexity chart: {exc}")
    curve_runs = [(r["model"], r["run_id"]) for r in board.rows if r["kind"] in CURVE_KINDS][:MAX_CURVES]
    try:
        out.append(("learning_curves.png", f"Training and test error per epoch ({len(curve_runs)} best runs)",
                    plots.png_bytes(plots.learning_curves(client, curve_runs, f"{board.experiment}: learning curves"))))
    except PipelineError as exc:
        notes.append(f"learning curves: {exc}")
    for row in board.rows:  # the best run that saved its test-set predictions
        try:
            figure = plots.run_confusion_chart(client, row["run_id"], row["model"])
        except PipelineError:
            continue
        out.append(("confusion.png", f"Confusion matrix and per-class accuracy of {row['model']} "
                                     f"(run {row['run_id']})", plots.png_bytes(figure)))
        break
    else:
        notes.append("confusion matrix: no run saved its test-set probabilities")
    return out, notes


def _html_table(board: leaderboard.Leaderboard) -> str:
    columns = board.columns
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["#", *columns])
    body = []
    for rank, row in formats._ranked(board):
        cells = []
        for column in columns:
            text = formats._cell(column, formats._value(board, row, column))
            if text and column == "run_id":
                text = f'<a href="{html.escape(board.run_url(text))}">{html.escape(text[:12])}</a>'
            elif text and column == "sweep":
                text = f'<a href="{html.escape(text)}">sweep</a>'
            else:
                text = html.escape(text)
            cells.append(f"<td>{text}</td>")
        style = ' class="ref"' if rank == "ref" else ""
        body.append(f"<tr{style}><td>{rank}</td>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:nth-child(2),th:nth-child(2){text-align:left}tr.ref{color:#777;font-style:italic}
figure{margin:1.5em 0}img{max-width:100%}.note{color:#a60}"""


def _html_reproduction(compared: list) -> str:
    if not compared:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in reproduction.COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(text)}</td>" for text in line) + "</tr>"
                   for line in reproduction.cells(compared))
    return (f"<h2>Published against ours</h2><p>{html.escape(reproduction.VERDICTS)}</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _html_transfer(board: leaderboard.Leaderboard) -> str:
    out = ""
    for table in transfer.tables(board.rows):
        header, cells = transfer.lines(table)
        head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>" for line in cells)
        out += f"<h2>{html.escape(table.title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return out


def render_html(board, images, notes, when: str, compared: list | None = None) -> str:
    figures = "".join(
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>" for _, caption, png in images)
    note_items = "".join(f'<li class="note">{html.escape(n)}</li>' for n in notes)
    experiment_url = f"{board.ui_url}/#/experiments/{board.experiment_id}/runs"
    reference = ("<p>Grey rows: the ILSVRC entries of these families (top-5 error on the challenge's test set, "
                 "entries rather than single models), from models/references.yaml.</p>" if board.references else "")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(board.experiment)}</title>"
            f"<style>{STYLE}</style></head><body><h1>Leaderboard: {html.escape(board.experiment)}</h1>"
            f"<p>Best run per model, ranked by test top-1 error. Generated {html.escape(when)}. "
            f'All runs in the MLflow UI: <a href="{html.escape(experiment_url)}">{html.escape(experiment_url)}</a></p>'
            f"{_html_table(board)}{reference}{_html_transfer(board)}{_html_reproduction(compared or [])}"
            f"{'<ul>' + note_items + '</ul>' if note_items else ''}{figures}</body></html>\n")


def render_markdown(board, images, notes, when: str, compared: list | None = None) -> str:
    lines = [f"# Leaderboard: {board.experiment}", "",
             f"Best run per model, ranked by test top-1 error. Generated {when}. All runs in the MLflow UI: "
             f"{board.ui_url}/#/experiments/{board.experiment_id}/runs", "", formats.to_markdown(board, links=True)]
    if tables := transfer.to_markdown(transfer.tables(board.rows)):
        lines += ["## Labels per class", "", tables]
    if compared:
        lines += ["## Published against ours", "", reproduction.VERDICTS, "", reproduction.to_markdown(compared)]
    lines += [f"- note: {n}" for n in notes]
    for name, caption, _ in images:
        lines += ["", f"![{caption}]({name})", "", f"*{caption}*"]
    return "\n".join(lines) + "\n"


def write_report(tracking_uri: str, experiment: str, out_dir: str | Path, ui_url: str | None = None,
                 log: bool = True) -> Report:
    from mlflow import MlflowClient

    from pipeline.tracking.store import Tracker

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PipelineError(f"report folder {out} is a file: pass --out a folder (new or existing) for report.html, "
                            "report.md and the charts")
    board = leaderboard.build(tracking_uri, experiment)
    if ui_url:
        board.ui_url = ui_url.rstrip("/")
    client = MlflowClient(tracking_uri)
    compared = reproduction.compare(board.rows, reproduction.spec_reference(client, board.experiment_id))
    images, notes = charts(client, board, compared)
    notes = board.notes + notes
    when = time.strftime("%Y-%m-%d %H:%M")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent that is a file, no permission
        raise PipelineError(f"cannot make report folder {out} ({exc.strerror}): pass --out a folder you can "
                            "write") from None
    paths = []
    for name, _, png in images:
        (out / name).write_bytes(png)
        paths.append(out / name)
    page, markdown = out / "report.html", out / "report.md"
    page.write_text(render_html(board, images, notes, when, compared))
    markdown.write_text(render_markdown(board, images, notes, when, compared))
    run_id = None
    if log:  # the report's files, also as artifacts of a run of its own (kept off the leaderboard)
        tracker = Tracker(tracking_uri)
        run_id = tracker.start_run(board.experiment_id, f"report-{time.strftime('%Y%m%d-%H%M%S')}",
                                   tags={"stage": "report"})
        for path in [page, markdown, *paths]:
            tracker.log_artifact(run_id, path, "report")
        tracker.finish(run_id)
    return Report(page, markdown, paths, run_id, notes)
