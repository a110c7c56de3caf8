"""The leaderboard as a terminal table, markdown or CSV; two experiments side by side."""
from __future__ import annotations

import csv
import io
import sys

from pipeline.errors import PipelineError
from pipeline.results import transfer
from pipeline.results.leaderboard import FOOTNOTE, FORMATS, Leaderboard


def _cell(key: str, value) -> str:
    if value is None:
        return ""
    if key in ("top1", "top1_err", "top1_err_std", "top5", "top5_err", "val_top1_err"):
        return f"{value:.2f}"
    if key == "param_count":
        return f"{value:.3f}"
    if key == "gmacs":
        return f"{value:.4f}"
    if key in ("train_samples_per_sec", "wall_time_s"):
        return f"{value:.1f}"
    return str(value)


def _ranked(board: Leaderboard) -> list[tuple[str, dict]]:
    """(rank, row): our runs ranked, then the reference rows marked `ref`."""
    return [(str(rank), row) for rank, row in enumerate(board.rows, 1)] + [("ref", r) for r in board.references]


def _value(board: Leaderboard, row: dict, column: str):
    if column == "diverged":
        return "yes" if row.get("diverged") else None
    if column == "sweep":
        return board.run_url(row["sweep_run_id"]) if row.get("sweep_run_id") else None
    return row.get(column)


def to_csv(board: Leaderboard) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = board.columns
    writer.writerow(columns)
    for _, row in _ranked(board):
        writer.writerow(["" if (v := _value(board, row, c)) is None else v for c in columns])
    return out.getvalue()


def to_markdown(board: Leaderboard, links: bool = False) -> str:
    """A markdown table; with `links`, run ids (and sweeps) link to the MLflow UI."""
    columns = board.columns
    lines = ["| " + " | ".join(["rank", *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    for rank, row in _ranked(board):
        cells = []
        for column in columns:
            text = _cell(column, _value(board, row, column))
            if links and text and column == "run_id":
                text = f"[{text[:12]}]({board.run_url(text)})"
            elif links and text and column == "sweep":
                text = f"[sweep]({text})"
            cells.append(text)
        lines.append("| " + " | ".join([rank, *cells]) + " |")
    return "\n".join(lines) + "\n"


def to_rich_table(board: Leaderboard, width: int | None = None):
    """The terminal table, and the columns left out of it: within `width` characters, the columns from the
    right that do not fit are left out whole (rich would otherwise shorten every cell to an ellipsis)."""
    from rich.table import Table

    table = Table(title=f"Leaderboard: {board.experiment} (each model's run by validation, ranked by test top-1 error)")
    ranked = [(rank, [_cell(c, _value(board, row, c)) for c in board.columns]) for rank, row in _ranked(board)]
    shown = _fitting(["#", *board.columns], [[rank, *cells] for rank, cells in ranked], width) - 1
    table.add_column("#", justify="right")
    for column in board.columns[:shown]:
        table.add_column(column, justify="left" if column in ("model", "entry", "classes", "init", "kind", "diverged", "family",
                                                              "accelerator", "run_id", "sweep", "wise_ft") else "right")
    for rank, cells in ranked:
        table.add_row(rank, *cells[:shown], style="dim" if rank == "ref" else None)
    return table, board.columns[shown:]


def _fitting(headers: list[str], rows: list[list[str]], width: int | None) -> int:
    """How many columns, from the left, fit in `width` characters with rich's borders and padding (3 per
    column and 1); at least the first two (the rank and the model)."""
    if width is None:
        return len(headers)
    used = 1
    for count, header in enumerate(headers):
        used += 3 + max([len(header), *(len(row[count]) for row in rows)])
        if used > width and count >= 2:
            return count
    return len(headers)


def show(board: Leaderboard, fmt: str, console) -> None:
    if fmt not in FORMATS:
        raise PipelineError(f"unknown format '{fmt}': use one of {', '.join(FORMATS)}")
    if fmt == "table":
        table, left_out = to_rich_table(board, console.width)
        console.print(table)
        if left_out:
            console.print(f"{len(left_out)} column(s) left out to fit {console.width} characters "
                          f"({', '.join(left_out)}): widen the terminal, or `pipeline leaderboard -e {board.experiment} "
                          "--format markdown` shows them all")
        console.print(FOOTNOTE)
        if board.references:
            console.print("ref: the ILSVRC entries of these families (top-5 error on the challenge's test set, "
                          "entries rather than single models), from models/references.yaml; --reference compares")
        for note in board.notes:
            console.print(f"[yellow]note:[/] {note}")
        transfer.show(transfer.tables(board.rows), console)  # accuracy by labels per class, where rows have them
    elif fmt == "markdown":
        notes = "".join(f"- note: {note}\n" for note in board.notes)  # a markdown list below the table
        tables = transfer.to_markdown(transfer.tables(board.rows))
        print(to_markdown(board) + "\n" + FOOTNOTE + "\n" + ("\n" + notes if notes else "")
              + ("\n" + tables if tables else ""), end="")
    else:  # the notes go to stderr, so that the CSV stays one table
        print(to_csv(board), end="")
        for note in board.notes:
            print(f"note: {note}", file=sys.stderr)


COMPARED = ("top1_err", "top5_err", "param_count", "gmacs")


def compare(left: Leaderboard, right: Leaderboard) -> list[dict]:
    """One row per model of either leaderboard: its best metrics in both and the change (right - left),
    ordered by the left experiment's ranking, then the right's."""
    by_model = {}
    for side, board in (("a", left), ("b", right)):
        for row in board.rows:
            by_model.setdefault(row["model"], {"model": row["model"]})[side] = row
    order: dict[str, int] = {}
    for row in left.rows + right.rows:
        order.setdefault(row["model"], len(order))
    merged = []
    for model in sorted(by_model, key=lambda m: order[m]):
        entry = by_model[model]
        a, b = entry.get("a") or {}, entry.get("b") or {}
        line = {"model": model}
        for key in COMPARED:
            line[f"{key}:a"], line[f"{key}:b"] = a.get(key), b.get(key)
        line["delta_top1_err"] = (b["top1_err"] - a["top1_err"]) if a and b else None
        merged.append(line)
    return merged


def show_comparison(left: Leaderboard, right: Leaderboard, fmt: str, console) -> None:
    if fmt not in FORMATS:
        raise PipelineError(f"unknown format '{fmt}': use one of {', '.join(FORMATS)}")
    rows = compare(left, right)
    keys = ["model", *(f"{k}:{s}" for k in COMPARED for s in "ab"), "delta_top1_err"]
    names = {"a": left.experiment, "b": right.experiment}
    header = [k if ":" not in k else f"{k.split(':')[0]} ({names[k.split(':')[1]]})" for k in keys]
    header[-1] = "delta top1_err"
    cells = [[_cell(k.split(":")[0], row[k]) if k != "delta_top1_err" or row[k] is None
              else f"{row[k]:+.2f}" for k in keys] for row in rows]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(["" if row[k] is None else row[k] for k in keys] for row in rows)
        print(out.getvalue(), end="")
    elif fmt == "markdown":
        print("\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                         *("| " + " | ".join(line) + " |" for line in cells)]))
    else:
        from rich.table import Table

        table = Table(title=f"{left.experiment} vs {right.experiment} (each model's run by validation; "
                            f"delta = {right.experiment} - {left.experiment})")
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i == 0 else "right")
        for line in cells:
            table.add_row(*line)
        console.print(table)
        for note in left.notes + right.notes:
            console.print(f"[yellow]note:[/] {note}")
