"""The lecture's charts from tracked runs, as matplotlib figures saved to PNG.

- complexity: top-1 accuracy against GMACs, bubble area by parameter count ("Comparing complexity");
- learning curves: train and test (else validation) error per epoch for any set of runs
  (fed plain and residual nets, the lecture's plain-versus-residual chart);
- confusion: a run's confusion matrix and per-class accuracy, from its saved test-set probabilities;
- reproduction: our error against the published one, one point per model, with the diagonal;
- degradation: the ResNet paper's figure, training and test error per epoch of plain and residual nets side
  by side, one line per depth (averaged over a recipe's seeds).
"""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pipeline.errors import PipelineError  # noqa: E402


def png_bytes(figure) -> bytes:
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return out.getvalue()


def complexity_chart(rows: list[dict], title: str = "Accuracy against complexity"):
    """Top-1 accuracy (%) against GMACs per image (log scale), bubble area proportional to parameters."""
    points = [r for r in rows if r.get("gmacs") and r.get("top1") is not None and r.get("param_count")]
    if not points:
        raise PipelineError("no run has top1, gmacs and param_count: nothing to draw")
    largest = max(r["param_count"] for r in points)
    figure, axes = plt.subplots(figsize=(8, 5.5))
    colors = plt.cm.tab10.colors
    for i, row in enumerate(points):
        axes.scatter(row["gmacs"], row["top1"], s=60 + 1500 * row["param_count"] / largest, alpha=0.5,
                     color=colors[i % len(colors)], edgecolors="black", linewidths=0.5)
        axes.annotate(f"{row['model']}\n{row['param_count']:.2f} M", (row["gmacs"], row["top1"]),
                      textcoords="offset points", xytext=(0, 0), ha="center", va="center", fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel("GMACs per image (log scale)")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_title(f"{title}\n(bubble area: parameters)")
    axes.grid(True, which="both", alpha=0.3)
    axes.margins(0.15)
    return figure


def epoch_errors(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch train and test (else validation) error (%) of a run, from its metric history."""
    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key) if m.step > 0)

    curves = {"train": [(s, 100 - v) for s, v in history("train_top1")]}
    if test := history("test_top1_err"):
        curves["test"] = test
    elif val := history("val_top1"):
        curves["val"] = [(s, 100 - v) for s, v in val]
    return curves


def learning_curves(client, runs: list[tuple[str, str]], title: str = "Learning curves"):
    """Train error (dashed) and test or validation error (solid) per epoch; `runs` are (label, run id)."""
    figure, axes = plt.subplots(figsize=(8, 5))
    colors = plt.cm.tab10.colors
    drawn = 0
    for i, (label, run_id) in enumerate(runs):
        color = colors[i % len(colors)]
        for split, points in epoch_errors(client, run_id).items():
            if not points:
                continue
            steps, errors = zip(*points)
            axes.plot(steps, errors, "--" if split == "train" else "-", color=color, marker="o", markersize=3,
                      label=f"{label} ({split})")
            drawn += 1
    if not drawn:
        raise PipelineError("none of the runs has per-epoch metrics: nothing to draw")
    axes.set_xlabel("epoch")
    axes.set_ylabel("error (%)")
    axes.set_title(f"{title}\n(dashed: training error, solid: test or validation error)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def mean_epoch_errors(client, run_ids: list[str]) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch train and test (else validation) error averaged over runs (a recipe's seeds), at the epochs
    every run has."""
    per_run = [epoch_errors(client, run_id) for run_id in run_ids]
    curves = {}
    for split in ("train", "test", "val"):
        if not per_run or not all(split in run for run in per_run):
            continue
        by_step = [dict(run[split]) for run in per_run]
        steps = sorted(set.intersection(*(set(points) for points in by_step)))
        curves[split] = [(s, sum(points[s] for points in by_step) / len(by_step)) for s in steps]
    if "test" in curves:
        curves.pop("val", None)
    return curves


def degradation_chart(curves: dict[str, dict[str, list[tuple[int, float]]]], title: str = "Plain against residual"):
    """`curves`: model -> {train, test or val: [(epoch, error %)]}. Plain nets (plainN) on the left, residual nets
    on the right, a color per depth shared by both panels; thin dashed: training error, bold: test error."""
    import re

    def depth(model: str) -> int:
        found = re.search(r"(\d+)", model)
        return int(found.group(1)) if found else 0

    plain = sorted((m for m in curves if m.startswith("plain")), key=depth)
    residual = sorted((m for m in curves if not m.startswith("plain")), key=depth)
    if not plain or not residual:
        raise PipelineError("the plain-against-residual figure needs plain (plainN) and residual runs with per-epoch "
                            "metrics")
    depths = sorted({depth(m) for m in curves})
    colors = {d: plt.cm.tab10.colors[i % 10] for i, d in enumerate(depths)}
    figure, panels = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for axes, models, name in ((panels[0], plain, "plain"), (panels[1], residual, "residual")):
        for model in models:
            for split, points in curves[model].items():
                if not points:
                    continue
                steps, errors = zip(*points)
                axes.plot(steps, errors, "--" if split == "train" else "-", linewidth=1 if split == "train" else 2.2,
                          color=colors[depth(model)], label=f"{model} ({split})")
        axes.set_title(f"{name} nets")
        axes.set_xlabel("epoch")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    panels[0].set_ylabel("error (%)")
    figure.suptitle(f"{title}\n(dashed: training error, bold: test error; a color per depth)")
    figure.tight_layout(rect=(0, 0, 1, 0.9))  # the two-line title above the panels' own titles
    return figure


def reproduction_chart(points: list[tuple[str, float, float, float | None, str]], title: str = "Ours against published"):
    """`points`: (model, published, ours, our std or None, verdict); the diagonal is where ours equals published."""
    if not points:
        raise PipelineError("no model has both a published figure and a run: nothing to draw")
    markers = {"reproduced": ("o", "tab:green"), "not reproduced": ("X", "tab:red"), "not comparable": ("s", "tab:gray")}
    figure, axes = plt.subplots(figsize=(6.5, 6))
    for model, published, ours, std, verdict in points:
        marker, color = markers.get(verdict, ("o", "tab:blue"))
        axes.errorbar(published, ours, yerr=std, fmt=marker, color=color, markersize=7, capsize=3)
        axes.annotate(model, (published, ours), textcoords="offset points", xytext=(5, 5), fontsize=8)
    values = [v for p in points for v in (p[1], p[2])]
    low, high = min(values), max(values)
    pad = max(0.5, 0.1 * (high - low))
    axes.plot([low - pad, high + pad], [low - pad, high + pad], "k--", linewidth=1, label="ours = published")
    for verdict, (marker, color) in markers.items():
        axes.scatter([], [], marker=marker, color=color, label=verdict)
    axes.set_xlabel("published error (%)")
    axes.set_ylabel("our error (%), mean ± std over seeds")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def confusion_matrix(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts (true class, predicted class)."""
    predicted = probs.float().argmax(1)
    return torch.bincount(labels * num_classes + predicted, minlength=num_classes ** 2).view(num_classes, num_classes)


def confusion_chart(probs: torch.Tensor, labels: torch.Tensor, classes: list[str], title: str = "Confusion"):
    """Row-normalized confusion matrix and per-class accuracy side by side."""
    counts = confusion_matrix(probs, labels, len(classes)).float()
    per_class = 100 * counts.diag() / counts.sum(1).clamp(min=1)
    normalized = counts / counts.sum(1, keepdim=True).clamp(min=1)
    size = max(5.0, 0.45 * len(classes) + 2)
    figure, (left, right) = plt.subplots(1, 2, figsize=(2 * size + 1, size), gridspec_kw={"width_ratios": [1.2, 1]})
    image = left.imshow(normalized.numpy(), cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(classes))
    left.set_xticks(ticks, classes, rotation=90, fontsize=7)
    left.set_yticks(ticks, classes, fontsize=7)
    left.set_xlabel("predicted")
    left.set_ylabel("true")
    if len(classes) <= 20:
        for t in ticks:
            for p in ticks:
                if counts[t, p] > 0:
                    left.text(p, t, int(counts[t, p]), ha="center", va="center", fontsize=6,
                              color="white" if normalized[t, p] > 0.5 else "black")
    figure.colorbar(image, ax=left, fraction=0.046)
    right.barh(list(ticks), per_class.numpy(), color="tab:blue")
    right.set_yticks(ticks, classes, fontsize=7)
    right.invert_yaxis()
    right.set_xlim(0, 100)
    right.set_xlabel("accuracy (%)")
    right.set_title("per-class accuracy")
    overall = 100 * counts.diag().sum() / counts.sum()
    left.set_title(f"{title}: top-1 {overall:.2f}%")
    return figure


def run_predictions(client, run_id: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A run's saved test-set probabilities, labels and class names."""

    paths = {a.path for a in client.list_artifacts(run_id, "predictions")}
    if not {"predictions/test_probs.pt", "predictions/test_labels.pt"} <= paths:
        raise PipelineError(f"run {run_id} has no saved test-set probabilities and labels (predictions/): "
                            "train it with this version, on an in-memory data set")
    with tempfile.TemporaryDirectory() as directory:
        probs = torch.load(client.download_artifacts(run_id, "predictions/test_probs.pt", directory), weights_only=True)
        labels = torch.load(client.download_artifacts(run_id, "predictions/test_labels.pt", directory),
                            weights_only=True)
        classes = run_classes(client, run_id, directory) or [str(i) for i in range(probs.shape[1])]
    return probs, labels, classes


def run_classes(client, run_id: str, directory: str) -> list[str] | None:
    """The class names of a run's model: its LoggedModel's model.json (an ensemble's: its first member's)."""
    import json

    import mlflow.artifacts

    from pipeline.tracking.logged_models import model_of_run

    model_id = model_of_run(client, run_id)
    if model_id is None:
        return None
    location = client.get_logged_model(model_id).artifact_location.rstrip("/")

    def read(name: str) -> dict:
        return json.loads(Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location}/artifacts/{name}", dst_path=directory,
            tracking_uri=client.tracking_uri)).read_text())

    meta = read("model.json")
    return (read("member_0.json") if meta.get("kind") == "ensemble" else meta).get("classes")


def run_confusion_chart(client, run_id: str, title: str | None = None):
    probs, labels, classes = run_predictions(client, run_id)
    return confusion_chart(probs, labels, classes, title or client.get_run(run_id).data.tags.get("model", run_id))
