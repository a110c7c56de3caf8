"""The transfer experiment's table and chart: test top-1 by labels per class, for a network trained from scratch,
fine-tuned from other weights and as a frozen-backbone probe, read from the leaderboard's rows.

A table is drawn for each model and subset of classes whose rows learned from some labels per class
(`data.per_class`); its rows are the labels per class ("all": the training set the validation split leaves),
its columns how the network started (`init`) and what trained (`freeze`)."""
from __future__ import annotations

from dataclasses import dataclass, field

SCRATCH, FINETUNED, PROBE = "scratch", "fine-tuned", "probe"
ALL = "all"


def regime(row: dict) -> str:
    """scratch (random weights), probe (other weights, the classifier alone trains) or fine-tuned (other weights,
    everything trains; with `freeze: N`, all but the first N layer groups)."""
    if row.get("init", "scratch") == "scratch":
        return SCRATCH
    freeze = row.get("freeze")
    if freeze == "backbone":
        return PROBE
    return FINETUNED if freeze in (None, "", "None") else f"{FINETUNED} (freeze {freeze})"


@dataclass
class TransferTable:
    model: str
    classes: str | None  # the subset of the data set's classes, as the run's param holds it
    cells: dict[tuple[int | None, str], dict] = field(default_factory=dict)  # (per_class, regime) -> row

    @property
    def labels(self) -> list[int | None]:
        """Labels per class, ascending, then None (all)."""
        found = {per_class for per_class, _ in self.cells}
        return sorted(p for p in found if p is not None) + ([None] if None in found else [])

    @property
    def regimes(self) -> list[str]:
        found = {name for _, name in self.cells}
        order = [SCRATCH, *sorted(n for n in found if n.startswith(FINETUNED)), PROBE]
        return [name for name in order if name in found]

    @property
    def title(self) -> str:
        on = f" on classes {self.classes}" if self.classes else ""
        return f"Transfer: {self.model}{on}, test top-1 (%) by labels per class"

    def cell(self, per_class: int | None, name: str) -> str:
        row = self.cells.get((per_class, name))
        if row is None or row.get("top1") is None:
            return ""
        return f"{row['top1']:.2f}" + (f" ± {spread(row):.2f}" if spread(row) else "")


def spread(row: dict) -> float:
    """The standard deviation of a row's test error over its seeds; 0 for a single run."""
    return (row.get("top1_err_std") or 0.0) if row.get("runs", 1) > 1 else 0.0


def tables(rows: list[dict]) -> list[TransferTable]:
    """The transfer tables of a leaderboard's rows: a model on a subset of classes, where a row learned from some
    labels per class and there is more than one row to compare (a pretraining run alone is no table)."""
    found: dict[tuple[str, str | None], TransferTable] = {}
    for row in rows:
        if row.get("kind", "train") != "train":
            continue
        table = found.setdefault((row["model"], row.get("classes")), TransferTable(row["model"], row.get("classes")))
        table.cells.setdefault((row.get("per_class"), regime(row)), row)
    return [t for t in found.values() if any(per_class is not None for per_class, _ in t.cells) and len(t.cells) > 1]


def lines(table: TransferTable) -> tuple[list[str], list[list[str]]]:
    """(header, cells) of a table."""
    header = ["labels per class", *table.regimes]
    return header, [[str(p) if p is not None else ALL, *(table.cell(p, r) for r in table.regimes)]
                    for p in table.labels]


def to_markdown(found: list[TransferTable]) -> str:
    out = []
    for table in found:
        header, cells = lines(table)
        out += [f"**{table.title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                *("| " + " | ".join(line) + " |" for line in cells), ""]
    return "\n".join(out)


def show(found: list[TransferTable], console) -> None:
    from rich.table import Table

    for table in found:
        header, cells = lines(table)
        shown = Table(title=table.title)
        for i, name in enumerate(header):
            shown.add_column(name, justify="left" if i == 0 else "right")
        for line in cells:
            shown.add_row(*line)
        console.print(shown)


def chart(table: TransferTable):
    """Test top-1 against labels per class (log scale; `all` at the right end), one line per regime; where a
    point is the mean over seeds, a bar of one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [p for p in table.labels if p is not None]
    place = {p: p for p in counts}
    if None in table.labels:
        place[None] = max(counts) * 4
    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    for name in table.regimes:
        rows = [(place[p], table.cells[(p, name)]) for p in table.labels
                if (p, name) in table.cells and table.cells[(p, name)].get("top1") is not None]
        if rows:
            bars = [spread(row) for _, row in rows]
            axes.errorbar([x for x, _ in rows], [row["top1"] for _, row in rows], yerr=bars if any(bars) else None,
                          marker="o", capsize=3, label=name)
    axes.set_xscale("log")
    axes.set_xticks([place[p] for p in table.labels], [str(p) if p is not None else ALL for p in table.labels])
    axes.minorticks_off()
    axes.set_xlabel("labels per class")
    axes.set_ylabel("test top-1 (%)")
    axes.set_title(table.title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return figure
