"""A classifier started from a CLIP image tower, its head the zero-shot classifier (`init: clip:...`), and
WiSE-FT after fine-tuning. Real Ray Train workers, a real MLflow store; small CLIP models, nothing downloaded."""
import os
from types import SimpleNamespace

import pytest
import torch
from conftest import run_cli
from mlflow import MlflowClient
from rich.console import Console

import models  # noqa: F401  (the zoo in timm's registry)
from models._factory import build_model
from pipeline.clip.evaluation import load_trained, zero_shot_classifier
from pipeline.data.captions import EVAL_TEMPLATES
from pipeline.engine import workflow
from pipeline.spec.loading import parse_spec
from pipeline.spec.sections import ModelEntry
from pipeline.training.weights import resolve_init

QUIET = Console(file=open(os.devnull, "w"))
ALPHAS = [0.0, 0.5, 1.0]


def transfer_spec(workdir, **entry) -> dict:
    """Tiny CLIP pretraining on synthetic 28 px grey images, its zero-shot row, then the classifier fine-tuned
    from it for one epoch, all on one worker."""
    return {"name": "clip-transfer", "data": {"name": "synthetic", "synthetic_size": 600, "val_fraction": 0.2,
                                              "limit_test": 200},
            "clip": {"model": "clip-rn-32",
                     "train": {"epochs": 3, "batch_size": 32, "lr": 0.004, "captions_per_group": 1,
                               "heldout_pairs": 50},
                     "zero_shot": {"linear_probe": False}},
            "models": [{"name": "clip_image_classifier", "kwargs": {"clip_model": "clip-rn-32"},
                        "init": "clip:unit:clip_pretrain/clip-rn-32", "wise_ft": ALPHAS,
                        "train": {"epochs": 1, "batch_size": 32, "lr": 1e-3, "warmup_epochs": 0}, **entry}],
            "resources": {"num_workers": 1},
            "tracking": {"uri": f"sqlite:///{workdir / 'mlflow.db'}", "experiment": "clip-transfer"},
            "storage_path": str(workdir / "checkpoints"),
            "stages": ["clip_pretrain", "zero_shot", "train", "leaderboard"]}


def test_the_classifier_starts_as_zero_shot_and_wise_ft_interpolates(ray_cluster, workdir):
    spec = parse_spec(transfer_spec(workdir))
    context = workflow.run(spec, QUIET)
    assert not context.failures
    client = MlflowClient(spec.tracking.uri)
    pretrain_id = context.outputs["clip_pretrain"]["run_id"]
    zero_shot = context.outputs["zero_shot"]["zero_shot"]["metrics"]
    train = context.outputs["train"]["clip_image_classifier"]
    run = client.get_run(train["run_id"])

    # The initial weights: the pretrained tower as it is, the head the zero-shot classifier times the logit scale.
    (init,) = context.weights.values()
    clip, tokenizer, image_input, _ = load_trained(client.download_artifacts(pretrain_id, "model", str(workdir)))
    for name, tensor in clip.state_dict().items():
        if name.startswith("visual."):
            assert torch.equal(init.weights[name], tensor), name
    head = zero_shot_classifier(clip, tokenizer, context.data.classes, list(EVAL_TEMPLATES), torch.device("cpu"))
    assert torch.allclose(init.weights["head.weight"], clip.logit_scale.exp() * head.T, atol=1e-5)
    assert not init.weights["head.bias"].any()
    # Pretrained on this data set's images: its normalisation is the classifier's, nothing to map.
    assert torch.allclose(init.weights["input_scale"], torch.ones(3)) and torch.allclose(init.weights["input_shift"], torch.zeros(3), atol=1e-6)

    # a = 0 is the initial weights before any step: they classify the test images as zero-shot does.
    metrics = run.data.metrics
    assert set(ALPHAS) == {a for a in ALPHAS if f"wise_ft_top1_a{a:.2f}" in metrics and f"wise_ft_val_top1_a{a:.2f}" in metrics}
    assert metrics["wise_ft_top1_a0.00"] == pytest.approx(zero_shot["top1"])
    assert zero_shot["top1"] > 15  # chance: 10%
    # a = 1 is the fine-tuned model: the test top-1 its workers measured.
    assert metrics["wise_ft_top1_a1.00"] == pytest.approx(metrics["top1"])
    assert 0 <= metrics["wise_ft_top1_a0.50"] <= 100
    # The leaderboard's row shows them, test top-1 per a.
    board = context.outputs["leaderboard"]["board"]
    row = next(r for r in board.rows if r["run_id"] == run.info.run_id)
    assert "wise_ft" in board.columns and row["wise_ft"] == " ".join(
        f"{a:.2f}:{metrics[f'wise_ft_top1_a{a:.2f}']:.2f}" for a in ALPHAS)

    # Lineage: the run names the CLIP pretraining run it started from; the unit key holds the weights' digest.
    tags = run.data.tags
    assert tags["init"] == f"clip:runs:/{pretrain_id}/model" and tags["init_run_id"] == pretrain_id
    assert tags["init_digest"] == init.digest and tags["family"] == "CLIP"
    assert run.data.params["wise_ft"] == str(ALPHAS)
    # The same spec again: the same initial weights, the same key, nothing runs.
    again = workflow.run(spec, QUIET)
    assert again.outputs["train"]["clip_image_classifier"]["run_id"] == train["run_id"]
    assert again.outputs["clip_pretrain"]["run_id"] == pretrain_id


def test_the_head_matches_zero_shot_on_an_open_clip_model_with_the_data_normalisation():
    """`clip:NAME` (an open_clip model, here untrained: nothing is downloaded): the classifier's logits on grey
    images normalised by the data's statistics are the zero-shot logits (image features @ class embeddings) of
    the CLIP model on the images it expects, times the logit scale."""
    from models.clip import create_model
    from pipeline.clip.data import ImageInput

    torch.manual_seed(0)
    classes = ["circle", "square", "triangle"]
    shape = {"classes": classes, "in_chans": 1, "mean": (0.3,), "std": (0.2,), "stream": {}}
    context = SimpleNamespace(weights={}, tracker=None, spec=SimpleNamespace(clip=None))
    entry = ModelEntry(name="clip_image_classifier", kwargs={"clip_model": "clip-vit-28"}, init="clip:clip-vit-28")
    init = resolve_init(context, entry, shape)
    assert init.source == "clip:clip-vit-28" and len(init.digest) == 16
    model = build_model("clip_image_classifier", 3, 1, clip_model="clip-vit-28")
    model.load_state_dict(init.weights)  # what a worker does, strictly
    model.eval()

    torch.manual_seed(0)  # the same random CLIP model as the source
    clip, tokenizer = create_model("clip-vit-28")
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        logits = model((images.float() / 255 - 0.3) / 0.2)
        features = clip.encode_image(ImageInput.of_model(clip)(images), normalize=True)
        expected = clip.logit_scale.exp() * features @ zero_shot_classifier(clip, tokenizer, classes,
                                                                            list(EVAL_TEMPLATES), torch.device("cpu"))
    assert torch.allclose(logits, expected, atol=1e-4)


@pytest.mark.parametrize("change, words", [
    ({"name": "resnet20", "kwargs": {}}, "starts a clip_image_classifier (a CLIP image tower and a head), not a resnet20"),
    ({"init": "clip:clip-rn-32", "kwargs": {"clip_model": "clip-vit-28"}, "stages": ["train"]},
     "the CLIP model is a clip-rn-32, the entry's tower a clip-vit-28: set kwargs.clip_model: clip-rn-32"),
    ({"init": "clip:unit:clip_pretrain/clip-vit-28", "kwargs": {"clip_model": "clip-vit-28"}},
     "no unit clip_pretrain/clip-vit-28 in this spec (CLIP pretraining units: clip_pretrain/clip-rn-32)"),
    ({"init": "clip:unit:train/x"}, "name the CLIP pretraining unit"),
    ({"init": "clip:clip-rn-23"}, "unknown CLIP model 'clip-rn-23'"),
    ({"init": "scratch"}, "wise_ft mixes the fine-tuned weights with the zero-shot ones of a clip init"),
    ({"wise_ft": [0.5, 1.5]}, "give mixing weights a between 0 and 1"),
])
def test_bad_clip_sources_and_options_fail_in_one_line_before_anything_is_written(change, words, workdir):
    import yaml
    from test_cli import assert_one_line_error

    stages = change.pop("stages", None)
    tree = transfer_spec(workdir, **change)
    if stages:
        tree["stages"] = stages
    (workdir / "spec.yaml").write_text(yaml.safe_dump(tree))
    result = run_cli("run", "spec.yaml", cwd=workdir)
    assert_one_line_error(result, words)
    assert not (workdir / "checkpoints").exists()
    if (workdir / "mlflow.db").exists():
        client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
        assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_freeze_layer_decay_and_head_lr_apply_to_the_clip_classifier():
    """timm's get_classifier() names the head and the group_matcher orders the tower: stem, stages, head."""
    from pipeline.training.finetune import coarse_groups, freeze, head_names
    from pipeline.training.model_checks import check_finetune_options

    check_finetune_options(ModelEntry(name="clip_image_classifier", freeze=4, layer_decay=0.7, head_lr=0.01))
    model = build_model("clip_image_classifier", 3, 1, clip_model="clip-rn-32")
    assert head_names(model) == {"head.weight", "head.bias"}
    groups = coarse_groups(model)
    assert groups[0][0].startswith("visual.conv1") and set(groups[-1]) == {"head.weight", "head.bias"}
    freeze(model, "backbone")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
