"""Charts and the HTML/markdown report from runs in a real MLflow store, laid out as the train stage logs them."""
import base64
import io
import json
import re

import pytest
import torch
from conftest import log_predictions, run_cli
from PIL import Image

from pipeline.results import leaderboard, plots
from pipeline.results.report import write_report
from pipeline.tracking.store import Tracker

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


def test_confusion_matrix_and_per_class_accuracy():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    predicted = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 2, 2])  # cat 2/3, dog 2/2, ship 4/5
    probs = torch.nn.functional.one_hot(predicted, 3).float() * 0.8 + 0.2 / 3
    counts = plots.confusion_matrix(probs, labels, 3)
    assert counts.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 4]]
    figure = plots.confusion_chart(probs, labels, CLASSES, "resnet56")
    bars = [patch.get_width() for patch in figure.axes[1].patches]
    assert bars == pytest.approx([200 / 3, 100.0, 80.0])
    assert "top-1 80.00%" in figure.axes[0].get_title()


def test_a_trained_runs_predictions_and_class_names(trained):
    """What the train stage saved: test-set probabilities in data-set order, labels, and the model's classes."""
    run_id = trained.runs["resnet20"]
    probs, labels, classes = plots.run_predictions(trained.tracker.client, run_id)
    test = trained.context.data.test
    assert classes == test.classes and torch.equal(labels, test.labels)
    top1 = 100 * (probs.float().argmax(1) == labels).float().mean().item()
    assert top1 == pytest.approx(trained.tracker.client.get_run(run_id).data.metrics["top1"], abs=1e-3)


def test_learning_curves_draw_plain_against_residual(store):
    uri, tracker, runs, *_ = store
    chosen = [(m, runs[m]) for m in ("plain20", "plain56", "resnet20", "resnet56")]
    figure = plots.learning_curves(tracker.client, chosen)
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert set(lines) == {f"{m} ({split})" for m in dict(chosen) for split in ("train", "test")}
    assert list(lines["plain56 (test)"].get_ydata()) == pytest.approx([62, 48, 38])
    assert list(lines["resnet56 (train)"].get_ydata()) == pytest.approx([40, 20, 8])
    assert lines["plain56 (train)"].get_linestyle() == "--" and lines["plain56 (test)"].get_linestyle() == "-"


def test_the_degradation_figure_puts_plain_and_residual_nets_side_by_side_one_line_per_depth(store):
    from pipeline.results.report import charts, degradation_runs

    uri, tracker, runs, *_ = store
    board = leaderboard.build(uri, "cifar-plain-vs-res")
    assert degradation_runs(board) == {m: [runs[m]] for m in runs}
    curves = {m: plots.mean_epoch_errors(tracker.client, [runs[m]]) for m in runs}
    figure = plots.degradation_chart(curves)
    plain, residual = figure.axes[:2]
    assert plain.get_title() == "plain nets" and residual.get_title() == "residual nets"
    lines = {line.get_label(): line for line in plain.get_lines()}
    assert set(lines) == {f"plain{d} ({split})" for d in (20, 56) for split in ("train", "test")}
    assert list(lines["plain56 (train)"].get_ydata()) == pytest.approx([60, 45, 35])
    assert list(lines["plain56 (test)"].get_ydata()) == pytest.approx([62, 48, 38])
    assert lines["plain56 (train)"].get_linestyle() == "--" and lines["plain56 (test)"].get_linewidth() > \
        lines["plain56 (train)"].get_linewidth()
    res = {line.get_label(): line for line in residual.get_lines()}
    assert list(res["resnet56 (test)"].get_ydata()) == pytest.approx([42, 25, 12])
    assert res["resnet56 (test)"].get_color() == lines["plain56 (test)"].get_color()  # a color per depth
    assert "degradation.png" in [name for name, *_ in charts(tracker.client, board)[0]]


def test_the_degradation_figure_averages_a_recipes_seeds(store, tmp_path):
    uri, tracker, runs, *_ = store
    other = log_training_run(tracker, tracker.experiment_id("plain-seeds"), "plain20", [54, 39, 24],
                             [56, 40, 26], 0.041, 0.27, tmp_path)
    curves = plots.mean_epoch_errors(tracker.client, [runs["plain20"], other])
    assert [e for _, e in curves["train"]] == pytest.approx([52, 37, 22])
    assert [e for _, e in curves["test"]] == pytest.approx([54, 38, 24]) and "val" not in curves
    validated = tracker.start_run(tracker.experiment_id("plain-seeds"), "resnet20", tags={"model": "resnet20"})
    for epoch, (train, val) in enumerate(((50, 52), (30, 33)), 1):  # no per-epoch test error: the validation one
        tracker.log(validated, {"train_top1": 100 - train, "val_top1": 100 - val}, step=epoch)
    assert plots.mean_epoch_errors(tracker.client, [validated]) == {"train": [(1, 50), (2, 30)],
                                                                    "val": [(1, 52), (2, 33)]}


def test_complexity_chart_bubbles_scale_with_parameters(store):
    uri, tracker, runs, *_ = store
    board = leaderboard.build(uri, "cifar-plain-vs-res")
    figure = plots.complexity_chart(board.rows)
    sizes = {text.get_text().split("\n")[0]: collection.get_sizes()[0]
             for text, collection in zip(figure.axes[0].texts, figure.axes[0].collections)}
    assert sizes["resnet56"] > sizes["resnet20"] and sizes["resnet56"] == sizes["plain56"]
    assert figure.axes[0].get_xscale() == "log"


def test_report_of_trained_runs_is_self_contained_html_and_markdown_and_kept_in_mlflow(trained):
    out = trained.folder / "report"
    report = write_report(trained.uri, trained.experiment, out)
    page = report.html.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4 and not re.search(r'src="(?!data:)', page)  # nothing fetched from elsewhere
    for encoded in images:
        assert Image.open(io.BytesIO(base64.b64decode(encoded))).size[0] > 300
    board = leaderboard.build(trained.uri, trained.experiment)
    for row in board.rows:
        assert f'href="http://127.0.0.1:5000/#/experiments/{trained.experiment_id}/runs/{row["run_id"]}"' in page
        assert f">{row['model']}<" in page
    positions = [page.index(f">{row['model']}<") for row in board.rows]
    assert positions == sorted(positions)  # in the leaderboard's order
    markdown = report.markdown.read_text()
    for name in ("degradation.png", "complexity.png", "learning_curves.png", "confusion.png"):
        assert f"]({name})" in markdown and (out / name).stat().st_size > 1000
    logged = {a.path for a in trained.tracker.client.list_artifacts(report.run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/confusion.png"} <= logged
    # The report run stays off the leaderboard.
    assert len(leaderboard.build(trained.uri, trained.experiment).rows) == len(board.rows)


def test_report_command(trained):
    out = trained.folder / "cli-report"
    result = run_cli("report", "-e", trained.experiment, "--out", str(out), "--ui-url", "https://mlflow.example.org",
                     "--tracking-uri", trained.uri, cwd=trained.folder)
    assert result.returncode == 0, result.stderr
    assert "report.html" in result.stdout
    assert "https://mlflow.example.org/#/experiments/" in (out / "report.html").read_text()
    missing = run_cli("report", "-e", "nope", "--tracking-uri", trained.uri, cwd=trained.folder)
    assert missing.returncode == 2 and "no experiment 'nope'" in missing.stderr
