"""The transfer experiment's data and entries: `data.classes` and `data.per_class` (which images, which labels, on
which data paths), a model entry's `id` and own `data:`, their unit keys, params and leaderboard rows, and a unit
fine-tuned from a unit that pretrained on other classes. Real data, Ray and MLflow: nothing is mocked."""
import io

import pytest
import torch
import yaml
from rich.console import Console

from pipeline.data import _load_split, load_splits
from pipeline.engine import registry
from pipeline.engine.context import RunContext
from pipeline.errors import PipelineError
from pipeline.spec.loading import parse_spec
from pipeline.spec.sections import DataConfig

FASHION = {"name": "fashion_mnist", "val_fraction": 0.1, "augment": False}


def originals(config) -> dict[bytes, int]:
    """Each image of a split of the data set, by its bytes, with its label as the data set gives it."""
    split = _load_split(config, "train")
    return {image.numpy().tobytes(): int(label) for image, label in zip(split.images, split.labels)}


def test_classes_and_per_class_select_exactly_the_right_images():
    """classes [7, 5, 9]: every split holds those classes only, relabelled 0, 1, 2 in that order with their names;
    per_class 20 draws 20 training images of each from what the validation split leaves (seeded: 10 per class are
    among the 20), and leaves validation and test as they were."""
    subset = DataConfig(**FASHION, classes=[7, 5, 9])
    few = DataConfig(**FASHION, classes=[7, 5, 9], per_class=20)
    fewer = DataConfig(**FASHION, classes=[7, 5, 9], per_class=10)
    whole, drawn, smaller = load_splits(subset), load_splits(few), load_splits(fewer)
    assert drawn.classes == ["Sneaker", "Sandal", "Ankle boot"] == whole.classes
    assert drawn.train.labels.bincount().tolist() == [20, 20, 20]
    assert smaller.train.labels.bincount().tolist() == [10, 10, 10]
    assert len(whole.test) == 3000 and whole.test.labels.bincount().tolist() == [1000, 1000, 1000]
    assert torch.equal(drawn.val.images, whole.val.images) and torch.equal(drawn.test.labels, whole.test.labels)
    assert len(whole.val) + len(whole.train) == 18000  # validation is carved from the three classes' 18,000

    source = originals(subset)
    relabel = {7: 0, 5: 1, 9: 2}
    rest = {image.numpy().tobytes() for image in whole.train.images}  # what the validation split leaves
    for image, label in zip(drawn.train.images, drawn.train.labels):
        key = image.numpy().tobytes()
        assert relabel[source[key]] == int(label) and key in rest
    held = {image.numpy().tobytes() for image in drawn.val.images}
    assert not held & {image.numpy().tobytes() for image in drawn.train.images}  # never a validation image
    kept = {image.numpy().tobytes() for image in drawn.train.images}
    assert {image.numpy().tobytes() for image in smaller.train.images} <= kept
    assert not torch.equal(load_splits(DataConfig(**{**FASHION, "seed": 1}, classes=[7, 5, 9], per_class=20)
                                       ).train.images, drawn.train.images)  # another seed draws others


def test_the_synthetic_and_huggingface_in_memory_paths_select_too(tmp_path):
    """The same options on the other in-memory loaders: the synthetic generator and a `datasets` image folder."""
    from PIL import Image

    synthetic = load_splits(DataConfig(name="synthetic", synthetic_size=300, classes=[3, 1], per_class=5))
    assert synthetic.classes == ["class3", "class1"] and synthetic.train.labels.bincount().tolist() == [5, 5]
    assert set(synthetic.test.labels.tolist()) == {0, 1}
    for split, count in (("train", 6), ("test", 2)):
        for name, shade in (("ants", 30), ("bees", 120), ("cats", 220)):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("L", (8, 8), shade + i).save(tmp_path / split / name / f"{i}.png")
    folder = load_splits(DataConfig(name="huggingface", path=str(tmp_path), image_size=8, in_chans=1,
                                    val_fraction=0.0, classes=[2, 0], per_class=4))
    assert folder.classes == ["cats", "ants"] and folder.train.labels.bincount().tolist() == [4, 4]
    assert folder.train.images[folder.train.labels == 0].float().mean() > 200  # the cats are the light ones
    with pytest.raises(PipelineError, match="has classes 0..2, not 5"):
        load_splits(DataConfig(name="huggingface", path=str(tmp_path), image_size=8, in_chans=1, classes=[5, 0]))


@pytest.mark.parametrize("data, words", [
    ({"classes": [1, 1]}, "data.classes: [1, 1] repeats a class"),
    ({"classes": [3, 10]}, "'fashion_mnist' has classes 0..9, not 10"),
    ({"classes": [4]}, "data.classes"),
    ({"per_class": 0}, "data.per_class"),
    ({"per_class": "10"}, "data.per_class: Input should be a valid integer"),
    ({"per_class": 5, "limit_train": 100}, "per_class and limit_train both cap the training set"),
    ({"name": "huggingface", "path": "/nonexistent", "streaming": True, "per_class": 5},
     "data.per_class applies to in-memory data sets; 'huggingface' streams"),
])
def test_a_bad_subset_option_is_one_line(data, words):
    with pytest.raises(PipelineError) as error:
        parse_spec({"name": "bad", "models": ["lenet5"], "data": data})
    assert words in str(error.value) and "\n" not in str(error.value)


def test_a_streamed_set_refuses_the_options_in_an_entry_too():
    with pytest.raises(PipelineError) as error:
        parse_spec({"name": "bad", "data": {"name": "imagenet-1k", "path": "/data/in1k"},
                    "models": [{"name": "resnet18", "data": {"classes": [0, 1]}}]})
    assert "data.classes applies to in-memory data sets; 'imagenet-1k' streams" in str(error.value)


@pytest.mark.parametrize("models, words", [
    ([{"name": "lenet5", "id": "a"}, {"name": "resnet20", "id": "a"}], "two entries are named 'a'"),
    (["lenet5", {"name": "resnet20", "id": "lenet5"}], "two entries are named 'lenet5'"),
    ([{"name": "lenet5", "id": "a/b"}], "id 'a/b': use letters, digits and - _ ."),
    ([{"name": "lenet5", "data": {"per_clas": 3}}], "models[lenet5].data: unknown key 'per_clas'"),
])
def test_a_bad_entry_is_one_line(models, words):
    with pytest.raises(PipelineError) as error:
        parse_spec({"name": "bad", "models": models})
    assert words in str(error.value) and "\n" not in str(error.value)


def test_entries_with_their_own_data_are_refused_where_one_data_set_is_assumed():
    sweep = {"space": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}, "num_samples": 2}
    with pytest.raises(PipelineError, match=r"models\[lenet5\].data applies to the train stage"):
        parse_spec({"name": "b", "models": [{"name": "lenet5", "data": {"per_class": 5}}], "stages": ["sweep"],
                    "sweep": sweep})
    with pytest.raises(PipelineError, match="the ensemble stage averages"):
        parse_spec({"name": "b", "models": [{"name": "lenet5", "data": {"per_class": 5}}, "resnet20"],
                    "stages": ["train", "ensemble"]})


def keys(tree) -> dict[str, str]:
    return {u.name: u.resolve_key({}) for u in registry.plan(RunContext(parse_spec(tree))) if u.stage == "train"}


def test_an_entrys_data_and_id_are_part_of_its_unit_key():
    """Units are named by id; the same model on other labels per class, other classes or under another id is
    another unit; options left unset keep the key a spec without them had."""
    base = {"name": "k", "data": {"name": "synthetic", "synthetic_size": 100}, "resources": {"num_workers": 1},
            "stages": ["train"]}
    plain = keys({**base, "models": ["lenet5"]})
    both = keys({**base, "models": [{"name": "lenet5", "id": "ten", "data": {"per_class": 3}},
                                    {"name": "lenet5", "id": "five", "data": {"per_class": 5}}]})
    assert set(both) == {"train/ten", "train/five"} and both["train/ten"] != both["train/five"]
    renamed = keys({**base, "models": [{"name": "lenet5", "id": "three", "data": {"per_class": 3}}]})
    assert renamed["train/three"] != both["train/ten"]
    subset = keys({**base, "models": [{"name": "lenet5", "data": {"classes": [0, 1]}}]})
    assert len({plain["train/lenet5"], subset["train/lenet5"], both["train/ten"]}) == 3
    spelled = keys({**base, "data": {**base["data"], "classes": None, "per_class": None}, "models": ["lenet5"]})
    assert spelled == plain
    assert keys({**base, "models": [{"name": "lenet5", "data": {"per_class": 5}, "id": "five"}]})["train/five"] \
        == both["train/five"]  # the same entry in another spec: the same unit


def run_workflow(tree):
    from pipeline.engine import workflow

    output = io.StringIO()
    context = workflow.run(parse_spec(tree), Console(file=output, width=200))
    assert not context.failures, context.failure_summary() + output.getvalue()[-3000:]
    return context, output.getvalue()


def test_the_transfer_experiment_in_small(ray_cluster, workdir):
    """A LeNet-5 pretrains on classes 0-4; on classes 5-9 with 6 labels per class the same network trains from
    scratch, fine-tuned from the pretraining unit and as a probe over its frozen backbone (per-entry data:). Each is
    its own unit and leaderboard row with the data options as params; the fine-tuned starts from the source's
    backbone with a new classifier for the new classes; the leaderboard prints accuracy by labels per class; the
    same spec again is cached, and changing one entry's labels per class trains that entry alone."""
    from pipeline.results import leaderboard, transfer
    from pipeline.tracking.store import Tracker
    from test_transfer import model_files

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    few = {"data": {"per_class": 6}}
    tree = {"name": "transfer-data", "data": {"name": "synthetic", "synthetic_size": 400, "val_fraction": 0.2,
                                              "classes": [5, 6, 7, 8, 9]},
            "models": [{"id": "pretrain", "name": "lenet5", "data": {"classes": [0, 1, 2, 3, 4]}},
                       {"id": "scratch-6", "name": "lenet5", **few},
                       {"id": "finetuned-6", "name": "lenet5", "init": "unit:train/pretrain", **few},
                       {"id": "probe-6", "name": "lenet5", "init": "unit:train/pretrain", "freeze": "backbone", **few}],
            "train": {"epochs": 1, "batch_size": 32, "lr": 0.01, "warmup_epochs": 0},
            "resources": {"num_workers": 1}, "tracking": {"uri": uri, "experiment": "transfer-data"},
            "storage_path": str(workdir / "checkpoints"), "stages": ["train", "leaderboard"]}
    context, printed = run_workflow(tree)
    outputs, tracker = context.outputs["train"], Tracker(uri)
    assert set(outputs) == {"pretrain", "scratch-6", "finetuned-6", "probe-6"}
    runs = {name: tracker.client.get_run(out["run_id"]) for name, out in outputs.items()}
    assert runs["probe-6"].data.params["data.per_class"] == "6" and runs["probe-6"].data.params["entry"] == "probe-6"
    assert runs["probe-6"].data.params["data.classes"] == "[5, 6, 7, 8, 9]"
    assert runs["pretrain"].data.params["data.classes"] == "[0, 1, 2, 3, 4]"
    assert {r.data.tags["entry"] for r in runs.values()} == set(outputs)
    source = outputs["pretrain"]["model_id"]
    assert runs["finetuned-6"].data.tags["init"] == f"models:/{source}" == runs["probe-6"].data.tags["init"]

    before, source_meta = model_files(tracker, source, workdir / "source")
    probe, meta = model_files(tracker, outputs["probe-6"]["model_id"], workdir / "probe")
    assert source_meta["classes"] == [f"class{i}" for i in range(5)] and meta["classes"] == [f"class{i}" for i in
                                                                                              range(5, 10)]
    assert all(torch.equal(before[k], probe[k]) for k in before if not k.startswith("fc."))  # the source's backbone
    assert probe["fc.weight"].shape == (5, 84) and not torch.equal(before["fc.weight"], probe["fc.weight"])
    sizes = {d.dataset.name: yaml.safe_load(d.dataset.profile)["num_rows"] for d in runs["probe-6"].inputs.dataset_inputs}
    assert sizes["synthetic-train"] == 30  # 6 per class, 5 classes

    board = leaderboard.build(uri, "transfer-data")
    assert len(board.rows) == 4 and {"entry", "classes", "per_class", "init"} <= set(board.columns)
    [table] = transfer.tables(board.rows)
    assert table.labels == [6] and table.regimes == ["scratch", "fine-tuned", "probe"]
    assert "Transfer: lenet5 on classes [5, 6, 7, 8, 9]" in printed and "labels per class" in printed

    from pipeline.results.report import write_report

    report = write_report(uri, "transfer-data", workdir / "report", log=False)
    assert any(p.name == "transfer.png" for p in report.images) and "## Labels per class" in report.markdown.read_text()

    again, _ = run_workflow(tree)  # unchanged: every unit cached
    assert {name: out["run_id"] for name, out in again.outputs["train"].items()} == \
        {name: out["run_id"] for name, out in outputs.items()}
    tree["models"][1] = {"id": "scratch-6", "name": "lenet5", "data": {"per_class": 8}}
    changed, _ = run_workflow(tree)
    assert changed.outputs["train"]["scratch-6"]["run_id"] != outputs["scratch-6"]["run_id"]
    assert all(changed.outputs["train"][n]["run_id"] == outputs[n]["run_id"] for n in outputs if n != "scratch-6")


def test_the_chart_bars_a_mean_over_seeds_with_its_standard_deviation():
    """A point averaged over seeds gets a bar of one standard deviation each way; a single run's point none."""
    from pipeline.results import transfer

    rows = [{"model": "resnet20", "kind": "train", "per_class": 10, "init": "scratch", "top1": 60.0, "runs": 3,
             "top1_err_std": 1.5},
            {"model": "resnet20", "kind": "train", "per_class": 100, "init": "scratch", "top1": 80.0, "runs": 3,
             "top1_err_std": 0.5},
            {"model": "resnet20", "kind": "train", "per_class": 10, "init": "models:/m-1", "top1": 62.0}]
    [table] = transfer.tables(rows)
    scratch, tuned = transfer.chart(table).axes[0].containers
    assert scratch.has_yerr and not tuned.has_yerr
    bars = [segment[:, 1] for segment in scratch.lines[2][0].get_segments()]
    assert [(round(low, 6), round(high, 6)) for low, high in bars] == [(58.5, 61.5), (79.5, 80.5)]


def test_labels_per_class_beyond_a_class_fail_in_one_line_before_anything_is_written(workdir):
    from conftest import run_cli

    spec = {"name": "too-many", "data": {"name": "fashion_mnist", "classes": [5, 6]}, "train": {"epochs": 1},
            "models": [{"name": "lenet5", "data": {"per_class": 6000}}], "resources": {"num_workers": 1},
            "stages": ["train"]}
    (workdir / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = run_cli("run", "spec.yaml", cwd=workdir)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1, lines
    assert "data.per_class 6000: class 'Sandal' has only " in lines[0] and "lower data.per_class" in lines[0]
    assert not (workdir / "mlflow.db").exists()


def test_rerunning_a_fine_tuned_entrys_run_keeps_the_entry_it_starts_from():
    from pipeline.engine.rerun import _with_sources

    tree = {"models": [{"id": "pretrain", "name": "lenet5"}, {"id": "probe-6", "name": "lenet5",
                                                                "init": "unit:train/pretrain", "freeze": "backbone"}]}
    assert _with_sources(tree, "probe-6") == ["probe-6", "pretrain"] and _with_sources(tree, "pretrain") == ["pretrain"]
