"""Charts and the HTML/markdown report from runs in a real MLflow store, laid out as the train stage logs them."""
import base64
import io
import json
import re

import pytest
import torch
from PIL import Image

from conftest import log_predictions, run_cli
from pipeline import leaderboard, plots
from pipeline.report import write_report
from pipeline.tracking import Tracker

CLASSES = ["cat", "dog", "ship"]


def log_training_run(tracker, experiment, model, train_err, test_err, gmacs, params, tmp_path, labels=None,
                     probs=None):
    """Per-epoch history, final test metrics, model.json and saved predictions, as the train stage logs them."""
    run_id = tracker.start_run(experiment, model, tags={"model": model, "stage": "train", "family": "ResNet"},
                               metrics={"param_count": params, "gmacs": gmacs})
    for epoch, (tr, te) in enumerate(zip(train_err, test_err), 1):
        tracker.log(run_id, {"epoch": epoch, "train_top1": 100 - tr, "val_top1": 100 - te - 1,
                             "test_top1_err": te}, step=epoch)
    tracker.log(run_id, {"top1": 100 - test_err[-1], "top1_err": test_err[-1], "top5": 100.0, "top5_err": 0.0,
                         "epochs": len(train_err)})
    (tmp_path / "model.json").write_text(json.dumps({"classes": CLASSES}))
    tracker.log_artifact(run_id, tmp_path / "model.json", "model")
    if probs is not None:
        log_predictions(tracker, run_id, probs, labels, tmp_path)
    tracker.finish(run_id)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    experiment = tracker.experiment_id("cifar-plain-vs-res")
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    predicted = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 2, 2])  # cat 2/3, dog 2/2, ship 4/5
    probs = torch.nn.functional.one_hot(predicted, 3).float() * 0.8 + 0.2 / 3
    runs = {
        "resnet56": log_training_run(tracker, experiment, "resnet56", [40, 20, 8], [42, 25, 12], 0.125, 0.85,
                                     tmp_path, labels, probs),
        "resnet20": log_training_run(tracker, experiment, "resnet20", [45, 25, 12], [46, 28, 14], 0.041, 0.27, tmp_path),
        "plain56": log_training_run(tracker, experiment, "plain56", [60, 45, 35], [62, 48, 38], 0.125, 0.85, tmp_path),
        "plain20": log_training_run(tracker, experiment, "plain20", [50, 35, 20], [52, 36, 22], 0.041, 0.27, tmp_path),
    }
    return uri, tracker, runs, labels, predicted, tmp_path


def test_confusion_matrix_and_per_class_accuracy(store):
    uri, tracker, runs, labels, predicted, _ = store
    probs, saved_labels, classes = plots.run_predictions(tracker.client, runs["resnet56"])
    assert classes == CLASSES and torch.equal(saved_labels, labels)
    counts = plots.confusion_matrix(probs, saved_labels, 3)
    assert counts.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 4]]
    figure = plots.confusion_chart(probs, saved_labels, classes, "resnet56")
    bars = [patch.get_width() for patch in figure.axes[1].patches]
    assert bars == pytest.approx([200 / 3, 100.0, 80.0])
    assert "top-1 80.00%" in figure.axes[0].get_title()


def test_learning_curves_draw_plain_against_residual(store):
    uri, tracker, runs, *_ = store
    chosen = [(m, runs[m]) for m in ("plain20", "plain56", "resnet20", "resnet56")]
    figure = plots.learning_curves(tracker.client, chosen)
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert set(lines) == {f"{m} ({split})" for m in dict(chosen) for split in ("train", "test")}
    assert list(lines["plain56 (test)"].get_ydata()) == pytest.approx([62, 48, 38])
    assert list(lines["resnet56 (train)"].get_ydata()) == pytest.approx([40, 20, 8])
    assert lines["plain56 (train)"].get_linestyle() == "--" and lines["plain56 (test)"].get_linestyle() == "-"


def test_complexity_chart_bubbles_scale_with_parameters(store):
    uri, tracker, runs, *_ = store
    board = leaderboard.build(uri, "cifar-plain-vs-res")
    figure = plots.complexity_chart(board.rows)
    sizes = {text.get_text().split("\n")[0]: collection.get_sizes()[0]
             for text, collection in zip(figure.axes[0].texts, figure.axes[0].collections)}
    assert sizes["resnet56"] > sizes["resnet20"] and sizes["resnet56"] == sizes["plain56"]
    assert figure.axes[0].get_xscale() == "log"


def test_report_is_self_contained_html_and_markdown_and_kept_in_mlflow(store):
    uri, tracker, runs, labels, predicted, tmp_path = store
    report = write_report(uri, "cifar-plain-vs-res", tmp_path / "out")
    page = report.html.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3 and not re.search(r'src="(?!data:)', page)  # nothing fetched from elsewhere
    for encoded in images:
        assert Image.open(io.BytesIO(base64.b64decode(encoded))).size[0] > 300
    experiment_id = tracker.experiment_id("cifar-plain-vs-res")
    for model, run_id in runs.items():
        assert f'href="http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}"' in page
        assert f">{model}<" in page
    assert page.index(">resnet56<") < page.index(">resnet20<") < page.index(">plain20<") < page.index(">plain56<")
    markdown = report.markdown.read_text()
    for name in ("complexity.png", "learning_curves.png", "confusion.png"):
        assert f"]({name})" in markdown and (tmp_path / "out" / name).stat().st_size > 1000
    assert f"(http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{runs['plain56']})" in markdown
    logged = {a.path for a in tracker.client.list_artifacts(report.run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/confusion.png"} <= logged
    # The report run stays off the leaderboard.
    assert len(leaderboard.build(uri, "cifar-plain-vs-res").rows) == 4


def test_report_command(store):
    uri, tracker, runs, labels, predicted, tmp_path = store
    result = run_cli("report", "-e", "cifar-plain-vs-res", "--out", str(tmp_path / "cli"), "--ui-url",
                     "https://mlflow.example.org", "--tracking-uri", uri, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "report.html" in result.stdout
    assert "https://mlflow.example.org/#/experiments/" in (tmp_path / "cli" / "report.html").read_text()
    missing = run_cli("report", "-e", "nope", "--tracking-uri", uri, cwd=tmp_path)
    assert missing.returncode == 2 and "no experiment 'nope'" in missing.stderr
