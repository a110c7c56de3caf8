import csv
import io
import statistics

import pytest

from pipeline.errors import PipelineError
from pipeline.results import formats, leaderboard, publish
from pipeline.tracking.logged_models import model_of_run
from pipeline.tracking.store import Tracker


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """One real MLflow store for the module (creating one costs seconds); an experiment per test."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    return uri, Tracker(uri)


@pytest.fixture
def store(db, request):
    uri, tracker = db
    name = request.node.name.removeprefix("test_")[:60]
    return uri, tracker, tracker.experiment_id(name), name


def add_run(tracker, experiment, model, top1_err, top5_err=1.0, finish=True, tags=None, **extra):
    metrics = {"top1": 100 - top1_err, "top1_err": top1_err, "top5": 100 - top5_err, "top5_err": top5_err,
               "param_count": 1.5, "gmacs": 0.01, "train_samples_per_sec": 1000.0, "epochs": 2, **extra}
    run_id = tracker.start_run(experiment, model, tags={"model": model, "stage": "train", **(tags or {})},
                               metrics=metrics)
    if finish:
        tracker.finish(run_id)
    return run_id


def test_each_model_shows_its_run_chosen_by_validation_ranked_by_test_error(store):
    uri, tracker, experiment, bench = store
    # lenet5's runs order differently on test and validation: the row is the validation pick, not the best test.
    add_run(tracker, experiment, "lenet5", 9.0, val_top1_err=14.0)
    chosen = add_run(tracker, experiment, "lenet5", 12.0, val_top1_err=11.0)
    add_run(tracker, experiment, "lenet5", 10.5, val_top1_err=13.0)
    add_run(tracker, experiment, "resnet20", 8.0, val_top1_err=9.0)
    # A retrained sweep winner is chosen by its sweep's best validation error.
    add_run(tracker, experiment, "vit", 18.0, sweep_val_top1_err=25.0, tags={"stage": "retrain"})
    sweep_pick = add_run(tracker, experiment, "vit", 20.0, sweep_val_top1_err=21.0, tags={"stage": "retrain"})
    board = leaderboard.build(uri, bench)
    assert [r["model"] for r in board.rows] == ["resnet20", "lenet5", "vit"]  # ranked by test error
    assert board.rows[1]["run_id"] == chosen and board.rows[1]["top1_err"] == 12.0
    assert board.rows[2]["run_id"] == sweep_pick and board.rows[2]["top1_err"] == 20.0
    assert not board.notes and len(board.runs) == 6
    assert "nothing is selected on it" in leaderboard.FOOTNOTE and "Each model's row" in leaderboard.FOOTNOTE


def test_validation_ties_are_broken_by_validation_loss_then_by_the_earlier_run(store):
    uri, tracker, experiment, bench = store
    first = add_run(tracker, experiment, "a", 6.0, val_top1_err=5.0, val_loss=0.3)
    add_run(tracker, experiment, "a", 5.0, val_top1_err=5.0, val_loss=0.3)
    add_run(tracker, experiment, "b", 7.0, val_top1_err=5.0, val_loss=0.4)
    lower_loss = add_run(tracker, experiment, "b", 8.0, val_top1_err=5.0, val_loss=0.2)
    board = leaderboard.build(uri, bench)
    assert [r["run_id"] for r in board.rows] == [first, lower_loss]


def test_selection_by_validation_keeps_a_candidate_per_row_not_per_model(store):
    """Two entries of one model (from scratch, fine-tuned) are two rows, so two candidates for an ensemble or the
    champion, each its best run on validation although another run of it is better on test."""
    uri, tracker, experiment, bench = store
    scratch = {"entry": "scratch-10"}
    tuned = {"entry": "finetune-10", "init": "train/pretrain"}
    add_run(tracker, experiment, "resnet20", 20.0, val_top1_err=30.0, tags=scratch)
    scratch_pick = add_run(tracker, experiment, "resnet20", 25.0, val_top1_err=22.0, tags=scratch)
    tuned_pick = add_run(tracker, experiment, "resnet20", 18.0, val_top1_err=15.0, tags=tuned)
    add_run(tracker, experiment, "resnet20", 10.0, val_top1_err=40.0, tags=tuned, diverged=1.0)
    board = leaderboard.build(uri, bench)
    ranked, notes = leaderboard.by_validation(board)
    assert [(leaderboard.row_label(r), r["run_id"]) for r in ranked] == \
        [("finetune-10", tuned_pick), ("scratch-10", scratch_pick)]
    assert not notes  # the diverged run's row has a sound candidate


def test_rows_without_validation_show_the_most_recent_run_with_a_note(store, capsys):
    uri, tracker, experiment, bench = store
    add_run(tracker, experiment, "lenet5", 9.0)  # val_fraction: 0, the best test error: not chosen
    recent = add_run(tracker, experiment, "lenet5", 11.0)
    alone = add_run(tracker, experiment, "resnet20", 8.0)
    validated = add_run(tracker, experiment, "vit", 20.0, val_top1_err=19.0)
    add_run(tracker, experiment, "vit", 15.0)  # a model with a validated run ignores its unvalidated ones
    add_run(tracker, experiment, "clip (zero-shot)", 30.0, tags={"stage": "zero_shot"})  # nothing to validate
    board = leaderboard.build(uri, bench)
    assert {r["model"]: r["run_id"] for r in board.rows if r["kind"] == "train"} == \
        {"lenet5": recent, "resnet20": alone, "vit": validated}
    assert len(board.notes) == 2
    lenet, resnet = sorted(board.notes)
    assert recent in lenet and "not chosen by validation" in lenet and "most recent of its 2 runs" in lenet
    assert alone in resnet and "not chosen by validation" in resnet and "val_fraction" in resnet
    formats.show(board, "markdown", None)
    out = capsys.readouterr().out
    assert out.count("- note: ") == 2 and "not chosen by validation" in out


def test_runs_without_metrics_give_a_note_not_a_crash(store):
    uri, tracker, experiment, bench = store
    add_run(tracker, experiment, "ok", 3.0, val_top1_err=3.5)
    crashed = tracker.start_run(experiment, "crashed", tags={"model": "broken", "stage": "train"})
    tracker.finish(crashed, "FAILED")
    board = leaderboard.build(uri, bench)
    assert [r["model"] for r in board.rows] == ["ok"]
    assert len(board.notes) == 1 and crashed in board.notes[0] and "failed" in board.notes[0]


def test_csv_follows_timm_results_columns(store):
    uri, tracker, experiment, bench = store
    add_run(tracker, experiment, "m", 7.25, top5_err=0.5)
    rows = list(csv.DictReader(io.StringIO(formats.to_csv(leaderboard.build(uri, bench)))))
    assert list(rows[0])[:6] == ["model", "top1", "top1_err", "top5", "top5_err", "param_count"]
    assert list(rows[0])[6:] == ["gmacs", "train_samples_per_sec", "family", "year", "accelerator", "epochs",
                                 "seed", "wall_time_s", "run_id"]
    assert float(rows[0]["top1"]) == 92.75 and rows[0]["epochs"] == "2"
    markdown = formats.to_markdown(leaderboard.build(uri, bench))
    assert markdown.splitlines()[2].startswith("| 1 | m | 92.75 | 7.25 |")


def test_unknown_experiment_and_empty_store_are_clear_errors(store, tmp_path):
    uri, tracker, experiment, bench = store
    with pytest.raises(PipelineError, match=f"no experiment 'nope'.*{bench}"):
        leaderboard.build(uri, "nope")
    with pytest.raises(PipelineError, match="no training runs"):
        leaderboard.build(uri, bench)
    with pytest.raises(PipelineError, match="no tracking store"):
        leaderboard.build(f"sqlite:///{tmp_path / 'missing.db'}", bench)
    assert not (tmp_path / "missing.db").exists()


def test_family_and_tag_filters(store):
    uri, tracker, experiment, bench = store
    add_run(tracker, experiment, "resnet20", 8.0, tags={"family": "ResNet", "accelerator": "cpu"})
    add_run(tracker, experiment, "plain20", 11.0, tags={"family": "ResNet", "accelerator": "NVIDIA H100"})
    add_run(tracker, experiment, "lenet5", 12.0, tags={"family": "LeNet", "accelerator": "cpu"})
    assert [r["model"] for r in leaderboard.build(uri, bench, family="ResNet").rows] == ["resnet20", "plain20"]
    assert [r["model"] for r in leaderboard.build(uri, bench, tags={"accelerator": "cpu"}).rows] == \
        ["resnet20", "lenet5"]
    both = leaderboard.build(uri, bench, family="ResNet", tags={"accelerator": "NVIDIA H100"})
    assert [r["model"] for r in both.rows] == ["plain20"] and both.rows[0]["accelerator"] == "NVIDIA H100"
    with pytest.raises(PipelineError, match="no leaderboard runs with family=ViT"):
        leaderboard.build(uri, bench, family="ViT")
    with pytest.raises(PipelineError, match="not KEY=VALUE"):
        leaderboard.parse_tag_filters(["accelerator"])


def test_kind_column_and_sweep_links_appear_only_when_needed(store):
    uri, tracker, experiment, bench = store
    add_run(tracker, experiment, "resnet20", 8.0)
    plain = leaderboard.build(uri, bench)
    assert "kind" not in plain.columns and "sweep" not in plain.columns
    add_run(tracker, experiment, "ensemble(top2)", 6.0, tags={"stage": "ensemble"})
    add_run(tracker, experiment, "lenet5", 9.0, tags={"stage": "retrain", "sweep_run_id": "abc123"})
    board = leaderboard.build(uri, bench)
    assert board.columns[:2] == ["model", "kind"] and board.columns[-1] == "sweep"
    rows = list(csv.DictReader(io.StringIO(formats.to_csv(board))))
    assert [(r["model"], r["kind"]) for r in rows] == [("ensemble(top2)", "ensemble"), ("resnet20", "train"),
                                                       ("lenet5", "retrain")]
    assert rows[2]["sweep"] == f"{leaderboard.LOCAL_UI}/#/experiments/{experiment}/runs/abc123"
    assert rows[0]["sweep"] == ""


def test_init_column_appears_when_a_row_was_fine_tuned_and_each_start_is_a_row(store):
    uri, tracker, experiment, bench = store
    add_run(tracker, experiment, "lenet5", 9.0)
    assert "init" not in leaderboard.build(uri, bench).columns
    add_run(tracker, experiment, "lenet5", 7.0, tags={"init": "models:/m-abc"})
    board = leaderboard.build(uri, bench)
    assert board.columns[:2] == ["model", "init"]
    rows = list(csv.DictReader(io.StringIO(formats.to_csv(board))))
    assert [(r["model"], r["init"]) for r in rows] == [("lenet5", "models:/m-abc"), ("lenet5", "scratch")]


def test_imagenet_experiments_show_the_ilsvrc_winners_from_the_catalogue(db):
    from pipeline.spec.reference import catalogue

    uri, tracker = db
    add_run(tracker, tracker.experiment_id("imagenet-1k"), "resnet18", 30.0, top5_err=10.5)
    board = leaderboard.build(uri, "imagenet-1k")
    winners = catalogue()["ilsvrc-winners"]
    assert [r["family"] for r in board.references][0] == "AlexNet" and board.references[-1]["family"] == "SENet"
    assert sorted(r["top5_err"] for r in board.references) == sorted(row.number for row in winners)
    markdown = formats.to_markdown(board)
    assert "| 1 | resnet18 | train |" in markdown and "| ref | AlexNet (ILSVRC entry) | reference |" in markdown
    assert "| 15.30 |" in markdown and "| 3.57 |" in markdown
    # Not for other data sets, unless asked.
    add_run(tracker, tracker.experiment_id("cifar10"), "resnet20", 8.0)
    assert leaderboard.build(uri, "cifar10").references == []
    assert len(leaderboard.build(uri, "cifar10", references=True).references) == len(winners)


def test_compare_two_experiments_side_by_side(db):
    uri, tracker = db
    a, b = tracker.experiment_id("a"), tracker.experiment_id("b")
    add_run(tracker, a, "resnet20", 8.0)
    add_run(tracker, a, "lenet5", 10.0)
    add_run(tracker, b, "resnet20", 7.25)
    add_run(tracker, b, "vit", 20.0)
    rows = formats.compare(leaderboard.build(uri, "a"), leaderboard.build(uri, "b"))
    assert [r["model"] for r in rows] == ["resnet20", "lenet5", "vit"]
    assert rows[0]["top1_err:a"] == 8.0 and rows[0]["top1_err:b"] == 7.25
    assert rows[0]["delta_top1_err"] == pytest.approx(-0.75)
    assert rows[1]["top1_err:b"] is None and rows[1]["delta_top1_err"] is None


def test_cli_compares_experiments(store):
    from conftest import run_cli

    uri, tracker, experiment, bench = store
    add_run(tracker, experiment, "resnet20", 8.0, tags={"family": "ResNet"})
    add_run(tracker, experiment, "lenet5", 10.0, tags={"family": "LeNet"})
    add_run(tracker, tracker.experiment_id(f"{bench}-other"), "resnet20", 9.5, tags={"family": "ResNet"})
    cwd = uri.removeprefix("sqlite:///").rsplit("/", 1)[0]
    result = run_cli("leaderboard", "-e", bench, "--compare", f"{bench}-other", "--family", "ResNet",
                     "-f", "markdown", "--tracking-uri", uri, cwd=cwd)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[2].startswith("| resnet20 | 8.00 | 9.50 |") and "+1.50" in lines[2]
    assert "lenet5" not in result.stdout


def test_a_diverged_run_is_marked_ranked_last_and_noted_in_every_format(store, capsys):
    from rich.console import Console

    uri, tracker, experiment, bench = store
    add_run(tracker, experiment, "resnet20", 8.0, val_top1_err=8.5)
    add_run(tracker, experiment, "vit", 20.0, val_top1_err=21.0)
    nan_run = add_run(tracker, experiment, "lenet5", 5.0, diverged=1.0)  # an error that is no result
    healthy = leaderboard.build(uri, bench, family=None, tags={"model": "vit"})
    assert "diverged" not in healthy.columns and not healthy.notes
    board = leaderboard.build(uri, bench)
    assert [(r["model"], r["diverged"]) for r in board.rows] == [("resnet20", False), ("vit", False), ("lenet5", True)]
    assert board.columns[:2] == ["model", "diverged"]
    assert len(board.notes) == 1 and nan_run in board.notes[0] and "diverged" in board.notes[0]

    formats.show(board, "csv", None)
    out, err = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["model"], r["diverged"]) for r in rows] == [("resnet20", ""), ("vit", ""), ("lenet5", "yes")]
    assert err.startswith("note: lenet5") and "diverged" in err  # on stderr: the CSV stays one table
    formats.show(board, "markdown", None)
    out = capsys.readouterr().out
    assert "| 3 | lenet5 | yes |" in out and out.rstrip().splitlines()[-1].startswith("- note: lenet5")
    table = io.StringIO()
    formats.show(board, "table", Console(file=table, width=300))
    text = table.getvalue()
    assert "diverged" in text.splitlines()[2] and "note: lenet5" in text and "yes" in text


def test_a_model_with_a_diverged_and_a_sound_run_shows_the_sound_one(store):
    uri, tracker, experiment, bench = store
    add_run(tracker, experiment, "lenet5", 3.0, diverged=1.0, val_top1_err=2.0)
    sound = add_run(tracker, experiment, "lenet5", 12.0, val_top1_err=12.5)
    board = leaderboard.build(uri, bench)
    assert [r["run_id"] for r in board.rows] == [sound] and "diverged" not in board.columns and not board.notes


# --- on runs made by the real train stage (the session's `trained` workflow) ---------------------------

def test_trained_runs_rank_by_test_error_with_their_validation_and_data_sets(trained, capsys):
    from conftest import TRAINED_MODELS

    board = leaderboard.build(trained.uri, trained.experiment)
    trained_rows = [r for r in board.rows if r["kind"] == "train"]
    assert sorted(r["model"] for r in trained_rows) == sorted(TRAINED_MODELS)
    errors = [(r["top1_err"], r["top5_err"]) for r in board.rows]
    assert errors == sorted(errors)
    assert "val_top1_err" in board.columns and all(r["val_top1_err"] is not None for r in trained_rows)
    client = trained.tracker.client
    for row in trained_rows:
        run = client.get_run(row["run_id"])
        m = run.data.metrics
        history = client.get_metric_history(row["run_id"], "val_top1")
        assert m["val_top1_err"] == pytest.approx(100 - max(history, key=lambda h: h.step).value)
        assert m["best_val_top1_err"] == pytest.approx(min(100 - h.value for h in history))
        assert m["best_epoch"] in {h.step for h in history}
        # Data sets as the run's inputs: the digest is the one of the workflow's unit keys.
        from pipeline.tracking.datasets import dataset_digest

        inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
        assert set(inputs) == {"synthetic-train", "synthetic-val", "synthetic-test"}
        assert {i.dataset.digest for i in inputs.values()} == {dataset_digest(trained.spec.data)}
        assert {t.value for i in inputs.values() for t in i.tags if t.key == "mlflow.data.context"} == \
            {"train", "validation", "test"}
        # System metrics, sampled on the worker's node and written by the driver.
        assert 0 <= m["system/node_0/cpu_utilization_percentage"] <= 100
        assert m["system/node_0/system_memory_usage_megabytes"] > 100
        profile = __import__("json").loads(inputs["synthetic-train"].dataset.profile)
        assert profile == {"num_rows": 240, "num_classes": 10, "image_shape": [1, 28, 28]}
    formats.show(board, "markdown", None)
    out = capsys.readouterr().out
    assert leaderboard.FOOTNOTE in out and "nothing is selected on it" in out


def test_the_experiment_and_the_workflow_run_carry_the_leaderboard(trained):
    client = trained.tracker.client
    board = leaderboard.build(trained.uri, trained.experiment)
    experiment = client.get_experiment(trained.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    text = experiment.tags["mlflow.note.content"]
    leader = board.rows[0]
    assert text.splitlines()[0] == f"**Leader: {leader['model']}, top-1 error {leader['top1_err']:.2f}%** (test) " \
                                   f"of {len(board.rows)} model(s) on {trained.experiment}"
    for row in board.rows:  # each row links to its run and its model
        assert board.run_url(row["run_id"]) in text
    model_id = model_of_run(client, trained.runs["lenet5"])
    assert publish.model_url(board, model_id) in text and leaderboard.FOOTNOTE in text
    workflow_run = client.get_run(trained.context.parent_run_id)
    assert workflow_run.data.tags["mlflow.note.content"] == text
    summary = workflow_run.data.metrics
    assert summary["best_top1_err"] == pytest.approx(leader["top1_err"])
    assert summary["models"] == len(board.rows) and summary["wall_time_s"] > 0


def test_publish_command_rewrites_the_description(trained):
    from conftest import run_cli

    client = trained.tracker.client
    client.set_experiment_tag(trained.experiment_id, "mlflow.note.content", "stale")
    result = run_cli("leaderboard", "-e", trained.experiment, "--publish", "--tracking-uri", trained.uri,
                     cwd=trained.folder)
    assert result.returncode == 0, result.stderr
    assert f"#/experiments/{trained.experiment_id}/models" in result.stdout
    assert client.get_experiment(trained.experiment_id).tags["mlflow.note.content"].startswith("**Leader: ")


def test_ui_links_name_the_models_view_and_the_latest_workflow_run(trained):
    lines = publish.ui_links(trained.uri, "http://127.0.0.1:5000", trained.experiment)
    base = f"http://127.0.0.1:5000/#/experiments/{trained.experiment_id}"
    assert lines == [f"{trained.experiment}: models {base}/models?workflowType=machine_learning",
                     f"{trained.experiment}: latest workflow run {base}/runs/{trained.context.parent_run_id}"
                     "?workflowType=machine_learning"]


def test_a_recipe_over_seeds_shows_its_mean_spread_and_count_never_its_best_seed(store):
    uri, tracker, experiment, bench = store

    def seeded(seed, top1_err, val, recipe="r1", model="resnet20"):
        run_id = add_run(tracker, experiment, model, top1_err, val_top1_err=val, tags={"recipe": recipe})
        tracker.log(run_id, {}, params={"seed": seed})
        return run_id

    errors = {0: 8.0, 1: 9.0, 2: 10.0}
    runs = [seeded(seed, error, val=12.0 + seed) for seed, error in errors.items()]
    seeded(0, 7.0, val=30.0, recipe="r2")  # another recipe of the model: best on test, worst on validation
    seeded(1, 9.5, val=12.5)  # seed 1 of r1 again: its most recent run counts, once
    add_run(tracker, experiment, "lenet5", 11.0, val_top1_err=13.0)  # one run: shown as it is
    board = leaderboard.build(uri, bench)
    rows = {r["model"]: r for r in board.rows}
    resnet = rows["resnet20"]
    expected = [8.0, 9.5, 10.0]
    assert resnet["runs"] == 3 and resnet["seed"] == "0,1,2"
    assert resnet["top1_err"] == pytest.approx(statistics.fmean(expected))
    assert resnet["top1_err_std"] == pytest.approx(statistics.stdev(expected))
    assert resnet["top1"] == pytest.approx(100 - statistics.fmean(expected))
    assert resnet["run_id"] not in runs[:1]  # the most recent run of the recipe links the row
    assert "runs" not in rows["lenet5"] and rows["lenet5"]["top1_err"] == 11.0
    assert board.columns[board.columns.index("top1_err") + 1:board.columns.index("top1_err") + 3] == \
        ["top1_err_std", "runs"]
    assert "top1_err_std" in formats.to_csv(board).splitlines()[0]


def test_a_narrow_terminal_shows_whole_columns_and_names_the_ones_left_out(store):
    """In an 80-column terminal the table keeps the rank, the model and the errors whole, and says which columns
    did not fit and how to see them, instead of shortening every cell to an ellipsis; a wide one shows all."""
    from rich.console import Console

    uri, tracker, experiment, bench = store
    add_run(tracker, experiment, "vit_tiny_patch4_32", 14.39, val_top1_err=14.0)
    add_run(tracker, experiment, "resnet20", 8.24, val_top1_err=8.02)
    board = leaderboard.build(uri, bench)
    narrow, wide = io.StringIO(), io.StringIO()
    formats.show(board, "table", Console(file=narrow, width=80))
    formats.show(board, "table", Console(file=wide, width=250))
    table = [line for line in narrow.getvalue().splitlines() if line.startswith(("┃", "│"))]
    assert table and all(len(line) <= 80 for line in table) and "…" not in "".join(table)
    assert "vit_tiny_patch4_32" in narrow.getvalue() and "14.39" in narrow.getvalue()
    header = table[0]
    left_out = [c for c in board.columns if f" {c} " not in header]
    assert left_out and "model" not in left_out and "top1_err" not in left_out
    words = " ".join(narrow.getvalue().split())
    assert f"{len(left_out)} column(s) left out to fit 80 characters ({', '.join(left_out)})" in words
    assert f"pipeline leaderboard -e {bench} --format markdown" in words
    assert "left out" not in wide.getvalue() and all(f" {c} " in wide.getvalue() for c in board.columns)
