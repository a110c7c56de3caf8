"""Published figures as data (models/references.yaml and a spec's `reference` section), and the verdict of each
row: reproduced, not reproduced, not comparable. No training: rows are constructed."""
import pytest

from pipeline.errors import PipelineError
from pipeline.results import reproduction
from pipeline.results.reproduction import NOT_COMPARABLE, NOT_REPRODUCED, REPRODUCED, verdict
from pipeline.spec.loading import parse_spec
from pipeline.spec.reference import ReferenceConfig, ReferenceRow, catalogue, load_tables

ROW = {"model": "resnet20", "dataset": "cifar10", "metric": "top1_err", "value": "8.75",
       "source": "a paper, Table 6", "budget": {"epochs": 160, "augmentation": "pad 4, crop, flip", "ensemble": False}}
SPEC = {"name": "refs", "data": {"name": "synthetic", "synthetic_size": 50}, "models": ["resnet20"],
        "stages": ["train"]}


def ours(mean, std=None, runs=1, **budget):
    return {"model": "resnet20", "kind": "train", "top1_err": mean, "top1_err_std": std, "runs": runs,
            "dataset": "cifar10", "epochs": 160, "augment": True, **budget}


def test_the_catalogue_loads_and_every_row_has_a_source():
    tables = catalogue()
    assert "ilsvrc-winners" in tables
    rows = [row for table in tables.values() for row in table]
    assert rows and all(row.source.strip() for row in rows)
    resnet = next(row for row in tables["ilsvrc-winners"] if row.model == "resnet152")
    assert (resnet.dataset, resnet.metric, resnet.number, resnet.budget.ensemble) == ("imagenet-1k", "top5_err", 3.57,
                                                                                      True)


@pytest.mark.parametrize("change, words", [
    ({"source": None}, "source is missing"),
    ({"model": "resnet21"}, "unknown model 'resnet21'"),
    ({"metric": "top3_err"}, "unknown metric 'top3_err'"),
    ({"dataset": "cifar11"}, "unknown data set 'cifar11'"),
    ({"value": "n/a"}, "has no number"),
    ({"budget": {"epoch": 3}}, "unknown key 'budget.epoch'"),
])
def test_a_bad_reference_row_is_refused_in_one_line(change, words):
    row = {k: v for k, v in {**ROW, **change}.items() if v is not None}
    text = "tables:\n  mine:\n    rows:\n" + "".join(f"      - {line}\n" for line in [str(row).replace("'", '"')])
    with pytest.raises(PipelineError) as error:
        load_tables(text, "refs.yaml")
    message = str(error.value)
    assert words in message and "\n" not in message and "refs.yaml table 'mine' row 1" in message


def test_a_table_gives_its_rows_a_data_set_and_the_value_keeps_its_print():
    text = ("tables:\n  t:\n    dataset: cifar10\n    rows:\n"
            "      - {model: resnet110, metric: top1_err, value: '6.43 (6.61±0.16)', source: 'a paper, Table 6'}\n")
    row = load_tables(text, "refs.yaml")["t"][0]
    assert (row.dataset, row.value, row.number, row.spread) == ("cifar10", "6.43 (6.61±0.16)", 6.43, 0.16)


def test_a_spec_names_a_table_and_its_own_rows_override_the_catalogues():
    own = {**ROW, "model": "resnet152", "dataset": "imagenet-1k", "metric": "top5_err", "value": "4.49",
           "source": "my table"}
    spec = parse_spec({**SPEC, "reference": {"table": "ilsvrc-winners", "rows": [own, ROW], "tolerance": 0.5}})
    rows = spec.reference.resolved()
    by_model = {row.model: row for row in rows}
    assert len(rows) == len(catalogue()["ilsvrc-winners"]) + 1  # resnet152's replaced, resnet20's added
    assert by_model["resnet152"].value == "4.49" and by_model["resnet152"].source == "my table"
    assert by_model["zfnet"].value == "11.7" and by_model["resnet20"].value == "8.75"
    assert spec.reference.tolerance == 0.5


@pytest.mark.parametrize("section, words", [
    ({"table": "ilsvrc-winner"}, "unknown reference table 'ilsvrc-winner'"),
    ({"rows": [{**ROW, "source": ""}]}, "reference.rows.0.source"),
    ({"rows": [{**ROW, "model": "resnet21"}]}, "unknown model 'resnet21'"),
    ({"rows": [ROW, ROW]}, "given twice"),
])
def test_a_bad_reference_section_of_a_spec_is_one_line(section, words):
    with pytest.raises(PipelineError) as error:
        parse_spec({**SPEC, "reference": section})
    assert words in str(error.value) and "\n" not in str(error.value)


def test_inside_the_spread_is_reproduced_outside_is_not():
    ref = ReferenceRow.model_validate(ROW)
    inside = verdict(ref, ours(9.05, std=0.4, runs=3))
    assert inside.verdict == REPRODUCED and "+0.30 within our spread ±0.40" in inside.reason
    outside = verdict(ref, ours(9.55, std=0.4, runs=3))
    assert outside.verdict == NOT_REPRODUCED and "+0.80 outside our spread ±0.40" in outside.reason
    assert verdict(ref, ours(9.55, std=0.4, runs=3), tolerance=1.0).verdict == REPRODUCED  # the spec's tolerance
    assert verdict(ref, ours(8.80)).verdict == NOT_REPRODUCED  # one run, no tolerance: only an exact match
    spread = ReferenceRow.model_validate({**ROW, "value": "8.75 (8.9±0.3)"})
    assert verdict(spread, ours(9.0)).verdict == REPRODUCED  # within the published spread


@pytest.mark.parametrize("budget, reason", [
    ({"epochs": 20}, "epochs differ: published 160, ours 20"),
    ({"dataset": "fashion_mnist"}, "data set differs: published on cifar10, ours on fashion_mnist"),
    ({"augment": False}, "augmentation differs"),
    ({"kind": "ensemble"}, "a single model, ours an ensemble"),
])
def test_a_different_budget_is_not_comparable_with_the_reason(budget, reason):
    compared = verdict(ReferenceRow.model_validate({**ROW, "budget": {**ROW["budget"], "train_images": 50000}}),
                       ours(8.75, **budget))
    assert compared.verdict == NOT_COMPARABLE and reason in compared.reason


def test_an_ilsvrc_entry_is_not_comparable_with_a_run_on_our_test_split():
    resnet = next(row for row in catalogue()["ilsvrc-winners"] if row.model == "resnet152")
    run = {"model": "resnet152", "kind": "train", "top5_err": 3.5, "dataset": "imagenet-1k", "epochs": 90}
    compared = verdict(resnet, run)
    assert compared.verdict == NOT_COMPARABLE and compared.reason == \
        "split differs: published on ILSVRC-2015 test, ours on imagenet-1k's test split"


def test_a_cut_training_set_and_a_missing_run_are_not_comparable():
    ref = ReferenceRow.model_validate({**ROW, "budget": {**ROW["budget"], "train_images": 50000}})
    assert "ours at most 5,000" in verdict(ref, ours(8.75, limit_train=5000)).reason
    assert verdict(ref, None).reason == "no run of this model here"


def test_the_comparison_table_lists_published_ours_difference_budgets_and_verdict():
    config = ReferenceConfig.model_validate({"rows": [ROW]})
    rows = reproduction.compare([ours(9.05, std=0.4, runs=3)], config)
    markdown = reproduction.to_markdown(rows)
    assert "| resnet20 | cifar10 | top1_err | 8.75 | 9.05 ± 0.40 | 3 | +0.30 | reproduced |" in markdown
    assert "160 epochs; augmentation: pad 4, crop, flip; single model" in markdown
    assert "160 epochs; augmentation; single model; cifar10" in markdown
    # Without a spec's rows: the catalogue's rows of the leaderboard's models.
    assert [c.reference.model for c in reproduction.compare([{**ours(30.0), "model": "resnet152"}], None)] == \
        ["resnet152"]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A real MLflow store: resnet20 over three seeds on CIFAR-10 (test errors 8.5, 9.0, 9.5) and the workflow run
    that kept its spec, whose reference section gives the published row."""
    import yaml

    from pipeline.tracking.store import Tracker

    folder = tmp_path_factory.mktemp("reproduction")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracker = Tracker(uri)
    experiment = tracker.experiment_id("cifar-reproduced")
    for seed, error in enumerate((8.5, 9.0, 9.5)):
        run_id = tracker.start_run(experiment, "resnet20", tags={"model": "resnet20", "stage": "train",
                                                                  "recipe": "r1", "dataset": "cifar10"},
                                   metrics={"top1": 100 - error, "top1_err": error, "top5": 99.0, "top5_err": 1.0,
                                            "val_top1_err": 10.0, "epochs": 160},
                                   params={"seed": seed, "data": {"augment": True, "limit_train": None}})
        tracker.finish(run_id)
    workflow = tracker.start_run(experiment, "workflow", tags={"stage": "workflow"})
    tracker.log_text(workflow, yaml.safe_dump({**SPEC, "reference": {"rows": [ROW]}}), "spec.yaml")
    tracker.finish(workflow)
    return uri, folder


def test_leaderboard_reference_compares_with_the_rows_of_the_spec_the_workflow_kept(tracked):
    import csv

    from conftest import run_cli

    uri, folder = tracked
    result = run_cli("leaderboard", "-e", "cifar-reproduced", "--reference", "--format", "csv", "--tracking-uri", uri,
                     cwd=folder)
    assert result.returncode == 0, result.stderr
    (row,) = list(csv.DictReader(result.stdout.splitlines()))
    assert (row["published"], row["ours"], row["n"], row["difference"], row["verdict"]) == \
        ("8.75", "9.00 ± 0.50", "3", "+0.25", "reproduced")
    assert row["source"] == "a paper, Table 6" and "160 epochs" in row["our budget"]
    # A spec file given on the command line instead: its rows, and its tolerance.
    (folder / "spec.yaml").write_text(__import__("yaml").safe_dump(
        {**SPEC, "reference": {"rows": [{**ROW, "value": "7.0"}], "tolerance": 2.5}}))
    result = run_cli("leaderboard", "-e", "cifar-reproduced", "--reference", "--spec", "spec.yaml", "--format", "csv",
                     "--tracking-uri", uri, cwd=folder)
    (row,) = list(csv.DictReader(result.stdout.splitlines()))
    assert row["verdict"] == "reproduced" and "within tolerance ±2.50" in row["reason"]
    alone = run_cli("leaderboard", "-e", "cifar-reproduced", "--spec", "spec.yaml", "--tracking-uri", uri, cwd=folder)
    lines = [line for line in alone.stderr.splitlines() if line.strip()]
    assert alone.returncode != 0 and len(lines) == 1 and "add --reference" in lines[0]


def test_the_report_shows_published_against_ours_and_its_chart(tracked):
    from pipeline.results.report import write_report

    uri, folder = tracked
    report = write_report(uri, "cifar-reproduced", folder / "report", log=False)
    markdown = report.markdown.read_text()
    assert "## Published against ours" in markdown and "| resnet20 | cifar10 | top1_err | 8.75 | 9.00 ± 0.50 |" in markdown
    assert "](reproduction.png)" in markdown and (folder / "report" / "reproduction.png").stat().st_size > 1000
    assert "Published against ours" in report.html.read_text()


def test_the_chart_puts_each_model_against_the_diagonal():
    from pipeline.results import plots

    figure = plots.reproduction_chart([("resnet20", 8.75, 9.0, 0.5, "reproduced"), ("resnet56", 6.97, 9.5, None,
                                                                                      "not reproduced")])
    axes = figure.axes[0]
    diagonal = next(line for line in axes.get_lines() if line.get_label() == "ours = published")
    assert list(diagonal.get_xdata()) == list(diagonal.get_ydata())
    assert {t.get_text() for t in axes.texts} == {"resnet20", "resnet56"}


def test_the_leaderboard_stage_of_a_spec_with_a_reference_section_prints_and_keeps_the_comparison(tracked):
    import io

    from mlflow import MlflowClient
    from rich.console import Console

    from pipeline.engine import workflow

    uri, folder = tracked
    spec = parse_spec({"name": "reproduce", "stages": ["leaderboard"], "reference": {"rows": [ROW]},
                       "tracking": {"uri": uri, "experiment": "cifar-reproduced"}})
    output = io.StringIO()
    context = workflow.run(spec, Console(file=output, width=250))
    assert context.failures == []
    assert "9.00 ± 0.50" in output.getvalue() and "reproduced" in output.getvalue()
    client = MlflowClient(uri)
    kept = {a.path for a in client.list_artifacts(context.parent_run_id)}
    assert "reproduction.md" in kept


def test_the_experiments_description_in_the_mlflow_ui_shows_the_comparison(tracked):
    from mlflow import MlflowClient

    from pipeline.results.publish import NOTE_TAG, publish_leaderboard

    uri, _ = tracked
    board = publish_leaderboard(uri, "cifar-reproduced")
    text = MlflowClient(uri).get_experiment(board.experiment_id).tags[NOTE_TAG]
    assert text.startswith("**Leader: resnet20") and "**Published against ours**" in text
    assert "| resnet20 | cifar10 | top1_err | 8.75 | 9.00 ± 0.50 | 3 | +0.25 | reproduced |" in text
