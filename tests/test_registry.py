"""Every trained network is a LoggedModel; the registry's champion is the best on validation; inference on
image files the test writes. On runs made by the real train stage (the session's `trained` workflow)."""
import json

import mlflow
import pytest
import torch
from conftest import run_cli
from PIL import Image

from models._factory import build_model
from pipeline.errors import PipelineError
from pipeline.results import champion
from pipeline.results.serving import Classifier
from pipeline.tracking.logged_models import (
    classifier_files,
    log_model,
    model_of_run,
)
from pipeline.tracking.model_files import download_model_files
from pipeline.tracking.store import Tracker


@pytest.fixture(scope="module")
def images(trained):
    """The test set as PNG files: grey at the training size, every other one RGB at twice the size."""
    test = trained.context.data.test
    folder = trained.folder / "images"
    folder.mkdir(exist_ok=True)
    paths = []
    for i, (image, label) in enumerate(zip(test.images[:40], test.labels[:40])):
        picture = Image.fromarray(image[0].numpy(), mode="L")
        if i % 2:
            picture = picture.convert("RGB").resize((56, 56), Image.NEAREST)
        paths.append(str(folder / f"img{i}_{test.classes[label]}.png"))
        picture.save(paths[-1])
    return paths


def test_each_trained_run_is_a_logged_model_with_its_tags_params_and_test_metrics(trained):
    client = trained.tracker.client
    for name, run_id in trained.runs.items():
        run = client.get_run(run_id)
        model = client.get_logged_model(model_of_run(client, run_id))
        assert model.source_run_id == run_id and model.name == name
        for key in ("model", "family", "paper_year", "dataset", "stage", "kind", "unit_key"):
            assert model.tags[key], key
        assert model.tags["unit_key"] == run.data.tags["unit_key"] and model.tags["stage"] == "train"
        assert model.params["model"] == name and model.params["epochs"] == "2"
        linked = {m.key: m for m in model.metrics}
        assert linked["top1_err"].value == pytest.approx(run.data.metrics["top1_err"])
        assert linked["top1_err"].dataset_name == "synthetic-test"
        assert linked["val_top1_err"].dataset_name == "synthetic-val"
        assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
        # Its weights are a plain state dict: they load with weights_only=True.
        weights, meta = download_model_files(trained.tracker, model.model_id, trained.folder / f"dl-{name}")
        state = torch.load(weights, weights_only=True)
        assert json.loads(meta.read_text())["model"] == name and all(torch.is_tensor(v) for v in state.values())
    # The Models tab's query: every model of the experiment, sorted by top1_err.
    found = client.search_logged_models([trained.experiment_id], order_by=[{"field_name": "metrics.top1_err",
                                                                           "ascending": True}])
    errors = [{m.key: m.value for m in model.metrics}.get("top1_err") for model in found]
    assert len(found) >= 4 and errors == sorted(errors)


def test_predictions_from_files_match_the_training_loops_own(trained, images):
    """The pyfunc's preprocessing of PNG files gives the probabilities the training loop saved for the test set."""
    client, run_id = trained.tracker.client, trained.runs["lenet5"]
    saved = torch.load(client.download_artifacts(run_id, "predictions/test_probs.pt", str(trained.folder)),
                       weights_only=True).float()
    weights, meta = download_model_files(trained.tracker, model_of_run(client, run_id), trained.folder / "dl-cls")
    classifier = Classifier(weights, meta)
    grey = [p for i, p in enumerate(images) if i % 2 == 0]
    assert torch.allclose(classifier.probabilities(grey), saved[:40][0::2], atol=2e-3)
    rgb = [p for i, p in enumerate(images) if i % 2]  # RGB at twice the size: back to one channel at 28 px
    assert torch.equal(classifier.probabilities(rgb).argmax(1), saved[:40][1::2].argmax(1))


def test_champion_is_the_best_on_validation_and_predict_loads_it(trained, images):
    client = trained.tracker.client
    val = {m: client.get_run(r).data.metrics["val_top1_err"] for m, r in trained.runs.items()}
    best = min(val, key=lambda m: (val[m], client.get_run(trained.runs[m]).data.metrics["val_loss"]))
    done = champion.register_champion(trained.uri, trained.experiment, "tiny-classifier")
    assert done["run_id"] == trained.runs[best] and done["uri"] == "models:/tiny-classifier@champion"
    assert done["model_id"] == model_of_run(client, trained.runs[best])
    version = client.get_model_version_by_alias("tiny-classifier", "champion")
    assert version.tags["model_id"] == done["model_id"] and version.tags["source_run_id"] == done["run_id"]

    from_run = champion.predict(trained.uri, images, run_id=trained.runs[best], k=3)
    from_model = champion.predict(trained.uri, images, model_uri=f"models:/{done['model_id']}", k=3)
    from_alias = champion.predict(trained.uri, images, model_uri=done["uri"], k=3)
    assert from_run == from_model == from_alias
    assert all(len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1] for top in from_run)
    # mlflow.pytorch users load the same model with pyfunc, as MLflow documents.
    mlflow.set_tracking_uri(trained.uri)
    frame = mlflow.pyfunc.load_model(done["uri"]).predict(__import__("pandas").DataFrame({"image": images[:3]}))
    assert list(frame["label"]) == [top[0][0] for top in from_run[:3]]


def test_the_ensembles_model_averages_its_members(trained, images):
    result = trained.context.outputs["ensemble"]
    members = [Classifier(*download_model_files(trained.tracker, model_of_run(trained.tracker.client,
                                                                                       trained.runs[m]),
                                                         trained.folder / f"ens-{m}")) for m in result["members"]]
    expected = torch.stack([m.probabilities(images[:6]) for m in members]).mean(0)
    got = champion.predict(trained.uri, images[:6], model_uri=f"models:/{result['model_id']}", k=1)
    assert [top[0][0] for top in got] == [members[0].classes[i] for i in expected.argmax(1)]
    assert [top[0][1] for top in got] == pytest.approx(expected.max(1).values.tolist(), abs=1e-5)


def test_predict_command_and_its_errors(trained, images):
    uri, cwd = trained.uri, trained.folder
    result = run_cli("predict", *images[:2], "--run", trained.runs["lenet5"], "--top", "2", "--tracking-uri", uri,
                     cwd=cwd)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{images[0]}: class") and lines[0].count("%") == 2
    for args, message in ((["--run", trained.runs["lenet5"], str(cwd / "missing.png")], "not found"),
                          ([images[0]], "give either --run")):
        failed = run_cli("predict", *args, "--tracking-uri", uri, cwd=cwd)
        assert failed.returncode == 2 and message in failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1
    with pytest.raises(PipelineError, match="no run nope"):
        champion.predict(uri, images[:1], run_id="nope")
    with pytest.raises(PipelineError, match="cannot load models:/absent@champion"):
        champion.predict(uri, images[:1], model_uri="models:/absent@champion")


def test_a_diverged_or_unvalidated_run_is_never_the_champion(tmp_path):
    """The rule on hand-made runs: a diverged run with the lowest errors, and one without validation."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = tracker.experiment_id("nan")
    meta = {"model": "lenet5", "model_kwargs": {}, "num_classes": 10, "classes": [str(i) for i in range(10)],
            "in_chans": 1, "image_size": 28, "mean": [0.5], "std": [0.25]}
    files = classifier_files(tmp_path, build_model("lenet5", 10, 1).state_dict(), meta)

    def run(model, top1_err, **extra):
        run_id = tracker.start_run(experiment, model, tags={"model": model, "stage": "train"},
                                   metrics={"top1_err": top1_err, "top5_err": 0.0, **extra})
        log_model(tracker, run_id, model, files, {}, {"model": model}, {})
        tracker.finish(run_id)
        return run_id

    run("nan_lenet", 1.0, val_top1_err=1.0, diverged=1.0)
    run("unvalidated", 2.0)
    with pytest.raises(PipelineError, match="validation error without having diverged"):
        champion.champion_row(tracker.uri, "nan")
    worse_on_test = run("lenet5", 20.0, val_top1_err=5.0)
    run("better_on_test", 10.0, val_top1_err=9.0)
    assert champion.champion_row(tracker.uri, "nan")["run_id"] == worse_on_test


def test_predict_on_the_test_images_reproduces_the_reported_top1_of_an_in_memory_model(trained):
    """Every test image as a PNG file, through the logged model's pyfunc: its top-1 is the run's, exactly."""
    client, run_id = trained.tracker.client, trained.runs["lenet5"]
    test = trained.context.data.test
    folder = trained.folder / "all-test-images"
    folder.mkdir(exist_ok=True)
    paths = []
    for i, image in enumerate(test.images):
        paths.append(str(folder / f"{i}.png"))
        Image.fromarray(image[0].numpy(), mode="L").save(paths[-1])
    weights, meta = download_model_files(trained.tracker, model_of_run(client, run_id), trained.folder / "dl-all")
    assert json.loads(meta.read_text())["preprocessing"] == {"kind": "resize", "in_chans": 1, "size": 28}
    predicted = Classifier(weights, meta).probabilities(paths).argmax(1)
    top1 = 100 * (predicted == test.labels).sum().item() / len(test.labels)
    assert top1 == pytest.approx(client.get_run(run_id).data.metrics["top1"], abs=1e-9)
