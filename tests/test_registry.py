"""Model Registry and inference on image files the test writes, against a real MLflow store."""
import json

import pytest
import torch
from PIL import Image

from conftest import run_cli
from pipeline import registry
from pipeline.complexity import build_model
from pipeline.data.augment import normalize
from pipeline.data.synthetic import make_synthetic
from pipeline.errors import PipelineError
from pipeline.tracking import Tracker


def train_lenet(train, steps: int = 60):
    """A few hundred plain PyTorch steps: enough for LeNet-5 on the synthetic templates."""
    torch.manual_seed(0)
    model = build_model("lenet5", train.num_classes, train.in_chans)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    mean, std = torch.tensor(train.mean), torch.tensor(train.std)
    for step in range(steps):
        index = torch.randint(len(train), (64,), generator=torch.Generator().manual_seed(step))
        loss = torch.nn.functional.cross_entropy(model(normalize(train.images[index], mean, std)), train.labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def log_model_run(tracker, experiment, model, test, tmp_path, name):
    """A training run with its weights and model.json, as the train stage saves them."""
    with torch.no_grad():
        logits = model(normalize(test.images, torch.tensor(test.mean), torch.tensor(test.std)))
    top1 = 100 * (logits.argmax(1) == test.labels).float().mean().item()
    run_id = tracker.start_run(experiment, name, tags={"model": name, "stage": "train"},
                               metrics={"top1": top1, "top1_err": 100 - top1, "top5": 100.0, "top5_err": 0.0})
    folder = tmp_path / name
    folder.mkdir()
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "model.json").write_text(json.dumps({
        "model": "lenet5", "model_kwargs": {}, "num_classes": 10, "classes": test.classes, "in_chans": 1,
        "image_size": 28, "mean": list(test.mean), "std": list(test.std)}))
    tracker.log_artifact(run_id, folder / "model.pt", "model")
    tracker.log_artifact(run_id, folder / "model.json", "model")
    tracker.finish(run_id)
    return run_id, top1


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    experiment = tracker.experiment_id("synthetic")
    train, test = make_synthetic(2000, seed=1), make_synthetic(40, seed=2)
    trained = train_lenet(train)
    best, best_top1 = log_model_run(tracker, experiment, trained, test, tmp_path, "lenet5")
    untrained = build_model("lenet5", 10, 1).eval()
    worse, _ = log_model_run(tracker, experiment, untrained, test, tmp_path, "lenet5_untrained")
    # The test images as files: grey PNGs at the training size, and RGB JPEG-free PNGs at twice the size.
    paths = []
    for i, (image, label) in enumerate(zip(test.images, test.labels)):
        picture = Image.fromarray(image[0].numpy(), mode="L")
        if i % 2:
            picture = picture.convert("RGB").resize((56, 56), Image.NEAREST)
        paths.append(str(tmp_path / f"img{i}_{test.classes[label]}.png"))
        picture.save(paths[-1])
    return uri, tracker, test, trained, best, best_top1, worse, paths, tmp_path


def test_preprocessing_matches_training(store):
    uri, tracker, test, trained, best, *_ , paths, tmp_path = store
    assert store[5] > 80  # the fixture's model learned the templates
    with torch.no_grad():
        expected = trained(normalize(test.images, torch.tensor(test.mean), torch.tensor(test.std))).softmax(1)
    folder = tmp_path / "lenet5"
    classifier = registry.Classifier(folder / "model.pt", folder / "model.json")
    grey = [p for i, p in enumerate(paths) if i % 2 == 0]
    assert torch.allclose(classifier.probabilities(grey), expected[0::2], atol=1e-5)
    # RGB at twice the size comes back to one channel at 28 px: the same predictions.
    rgb = [p for i, p in enumerate(paths) if i % 2]
    assert torch.equal(classifier.probabilities(rgb).argmax(1), expected[1::2].argmax(1))


def test_predict_with_a_run_and_with_the_registered_champion(store):
    uri, tracker, test, trained, best, best_top1, worse, paths, tmp_path = store
    from_run = registry.predict(uri, paths, run_id=best, k=3)
    hits = sum(top[0][0] == test.classes[label] for top, label in zip(from_run, test.labels))
    assert hits / len(paths) == pytest.approx(best_top1 / 100, abs=0.051)
    assert all(len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1] for top in from_run)

    done = registry.register_champion(uri, "synthetic", "synthetic-classifier")
    assert done["run_id"] == best and done["uri"] == "models:/synthetic-classifier@champion"
    version = tracker.client.get_model_version_by_alias("synthetic-classifier", "champion")
    assert str(version.version) == done["version"] and version.tags["source_run_id"] == best
    from_registry = registry.predict(uri, paths, model_uri=done["uri"], k=3)
    assert [[label for label, _ in top] for top in from_registry] == [[label for label, _ in top] for top in from_run]
    assert from_registry[0][0][1] == pytest.approx(from_run[0][0][1], abs=1e-5)


def test_predict_command_and_its_errors(store):
    uri, tracker, test, trained, best, best_top1, worse, paths, tmp_path = store
    result = run_cli("predict", *paths[:2], "--run", best, "--top", "2", "--tracking-uri", uri, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{paths[0]}: class")
    assert lines[0].count("%") == 2
    for args, message in ((["--run", best, str(tmp_path / "missing.png")], "not found"),
                          ([paths[0]], "give either --run")):
        failed = run_cli("predict", *args, "--tracking-uri", uri, cwd=tmp_path)
        assert failed.returncode == 2 and message in failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1
    with pytest.raises(PipelineError, match="no run nope"):
        registry.predict(uri, paths[:1], run_id="nope")
    with pytest.raises(PipelineError, match="cannot load models:/absent@champion"):
        registry.predict(uri, paths[:1], model_uri="models:/absent@champion")


def test_a_diverged_run_is_never_the_champion(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = tracker.experiment_id("nan")
    (tmp_path / "model.pt").write_bytes(b"weights")

    def run(model, top1_err, weights, **extra):
        run_id = tracker.start_run(experiment, model, tags={"model": model, "stage": "train"},
                                   metrics={"top1_err": top1_err, "top5_err": 0.0, **extra})
        if weights:
            tracker.log_artifact(run_id, tmp_path / "model.pt", "model")
        tracker.finish(run_id)
        return run_id

    run("nan_lenet", 1.0, weights=True, diverged=1.0)
    run("no_weights", 10.0, weights=False)
    with pytest.raises(PipelineError, match="without having diverged"):
        registry.champion_row(tracker.uri, "nan")
    sound = run("lenet5", 20.0, weights=True)
    assert registry.champion_row(tracker.uri, "nan")["run_id"] == sound
