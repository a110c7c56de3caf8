"""What the lecture's slides state, beside the figures `pipeline tables` recomputes: a "lecture says" column
per table, each disagreement marked, and for a total that disagrees, what the slide's own rows add up to.

The figures are copied from the slides as printed (text) with the number they stand for; a slide's figure
agrees with ours when it is ours rounded as the slide rounds (within 5%, so "138M" agrees with 138,357,544).
"""
from __future__ import annotations

from dataclasses import dataclass

TOLERANCE = 0.05
DISAGREES = "≠ "  # prefix of a slide's figure that our recomputation contradicts


@dataclass(frozen=True)
class Stated:
    row: str  # the table's row label (its first column, or the layer column where `by` says so)
    text: str  # as printed on the slide
    value: float | str  # the number it stands for, or a shape
    total_of: str | None = None  # a total: of the stated rows whose label starts with this


# VGG-16, "memory" and "params" of every row, as the slide writes them (one 224x224x3 image); the slide's params
# are the weights, without biases.
_VGG_ROWS = [("INPUT", (224, 224, 3), 0), ("CONV3-64", (224, 224, 64), 1728), ("CONV3-64", (224, 224, 64), 36864),
             ("POOL2", (112, 112, 64), 0), ("CONV3-128", (112, 112, 128), 73728),
             ("CONV3-128", (112, 112, 128), 147456), ("POOL2", (56, 56, 128), 0),
             ("CONV3-256", (56, 56, 256), 294912), ("CONV3-256", (56, 56, 256), 589824),
             ("CONV3-256", (56, 56, 256), 589824), ("POOL2", (28, 28, 256), 0),
             ("CONV3-512", (28, 28, 512), 1179648), ("CONV3-512", (28, 28, 512), 2359296),
             ("CONV3-512", (28, 28, 512), 2359296), ("POOL2", (14, 14, 512), 0),
             ("CONV3-512", (14, 14, 512), 2359296), ("CONV3-512", (14, 14, 512), 2359296),
             ("CONV3-512", (14, 14, 512), 2359296), ("POOL2", (7, 7, 512), 0),
             ("FC", (1, 1, 4096), 102760448), ("FC", (1, 1, 4096), 16777216), ("FC", (1, 1, 1000), 4096000)]

# Per table: the column the slide's figures stand beside, and its rows in the table's order (a row label
# repeats where the table's does). Totals are the slides' own.
LECTURE = {
    "vgg16_memory": {
        "memory (values)": [Stated(label, "*".join(map(str, shape)), shape[0] * shape[1] * shape[2])
                            for label, shape, _ in _VGG_ROWS] + [Stated("TOTAL", "24M", 24e6, total_of="")],
        "weights": [Stated(label, f"{params:,}", params) for label, _, params in _VGG_ROWS]
        + [Stated("TOTAL", "138M", 138e6, total_of="")],
    },
    "inception_modules": {  # the slides' "ops" of the naive module and the one with 1x1 bottlenecks
        "MACs": [Stated("naive [1x1 conv, 128]", "28x28x128x1x1x256", 28 * 28 * 128 * 256),
                 Stated("naive [3x3 conv, 192]", "28x28x192x3x3x256", 28 * 28 * 192 * 9 * 256),
                 Stated("naive [5x5 conv, 96]", "28x28x96x5x5x256", 28 * 28 * 96 * 25 * 256),
                 Stated("naive filter concatenation", "854M", 854e6, total_of="naive ["),
                 Stated("with dimension reduction [1x1 conv, 64]", "28x28x64x1x1x256", 28 * 28 * 64 * 256),
                 Stated("with dimension reduction [1x1 conv, 64]", "28x28x64x1x1x256", 28 * 28 * 64 * 256),
                 Stated("with dimension reduction [1x1 conv, 128]", "28x28x128x1x1x256", 28 * 28 * 128 * 256),
                 Stated("with dimension reduction [3x3 conv, 192]", "28x28x192x3x3x64", 28 * 28 * 192 * 9 * 64),
                 Stated("with dimension reduction [5x5 conv, 96]", "28x28x96x5x5x64", 28 * 28 * 96 * 25 * 64),
                 Stated("with dimension reduction [1x1 conv, 64]", "28x28x64x1x1x256", 28 * 28 * 64 * 256),
                 Stated("with dimension reduction filter concatenation", "358M", 358e6,
                        total_of="with dimension reduction [")],
    },
    "alexnet_layers": {  # the slide's "full (simplified) AlexNet": output volumes
        "output": [Stated("INPUT", "227x227x3", "227x227x3"), Stated("CONV1", "55x55x96", "55x55x96"),
                   Stated("MAX POOL1", "27x27x96", "27x27x96"), Stated("NORM1", "27x27x96", "27x27x96"),
                   Stated("CONV2", "27x27x256", "27x27x256"), Stated("MAX POOL2", "13x13x256", "13x13x256"),
                   Stated("NORM2", "13x13x256", "13x13x256"), Stated("CONV3", "13x13x384", "13x13x384"),
                   Stated("CONV4", "13x13x384", "13x13x384"), Stated("CONV5", "13x13x256", "13x13x256"),
                   Stated("MAX POOL3", "6x6x256", "6x6x256"), Stated("FC6", "4096", "4096"),
                   Stated("FC7", "4096", "4096"), Stated("FC8", "1000", "1000")],
    },
}
# Which cells name a row: most tables by their first column; the Inception table by module and layer.
ROW_KEY = {"inception_modules": lambda row: f"{row[0]} {row[1]}"}
WHY = {
    "alexnet_layers": "the slide normalizes after each pool; the paper (and this table) before it, on the larger maps",
}


def agrees(ours, stated: Stated) -> bool:
    if isinstance(stated.value, str):
        return str(ours) == stated.value
    if not stated.value:
        return ours == 0
    return abs(ours - stated.value) <= TOLERANCE * abs(stated.value)


def annotate(table) -> None:
    """Add a "lecture says" column beside each column the slides state, mark disagreements, and say under the
    table what the slide's own rows add up to where its total disagrees."""
    columns = LECTURE.get(table.key)
    if not columns:
        return
    key = ROW_KEY.get(table.key, lambda row: str(row[0]))
    notes = []
    for column, stated_rows in reversed(list(columns.items())):
        at = table.columns.index(column)
        unused = list(stated_rows)
        cells = []
        for row in table.rows:
            stated = next((s for s in unused if s.row == key(row)), None)
            if stated is None:
                cells.append("")
                continue
            unused.remove(stated)
            cells.append(stated.text if agrees(row[at], stated) else DISAGREES + stated.text)
            if not agrees(row[at], stated) and stated.total_of is not None:
                parts = [s.value for s in stated_rows if s.total_of is None and s.row.startswith(stated.total_of)]
                notes.append(f"{column}: the slide says {stated.text} for {stated.row}, but its own rows add up to "
                             f"{_short(sum(parts))} (ours: {_short(row[at])})")
        table.columns.insert(at + 1, f"lecture says ({column.split(' (')[0]})" if len(columns) > 1 else "lecture says")
        for row, text in zip(table.rows, cells):
            row.insert(at + 1, text)
    if any(DISAGREES in str(c) for row in table.rows for c in row) and table.key in WHY:
        notes.append(WHY[table.key])
    if notes:
        table.note = " ".join(filter(None, [table.note, "Where the lecture disagrees (≠):", "; ".join(notes) + "."]))


def _short(value: float) -> str:
    return f"{value / 1e6:.1f}M" if value >= 1e6 else f"{value:,.0f}"
