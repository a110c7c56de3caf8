"""CLIP: the distributed contrastive loss, pretraining feeding zero-shot evaluation through MLflow,
caption data sets, and one-line errors on bad input. Real Ray Train workers, a real MLflow store."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from mlflow import MlflowClient
from PIL import Image
from rich.console import Console

from models.clip import create_model
from pipeline.clip.evaluation import classification_metrics, retrieval_recall
from pipeline.clip.loop import contrastive_loss
from pipeline.data.captions import pairs_from_dataset, pairs_from_labels
from pipeline.data.synthetic import make_synthetic
from pipeline.engine import workflow
from pipeline.errors import PipelineError
from pipeline.spec.loading import parse_spec

QUIET = Console(file=open(os.devnull, "w"))


# --- the loss: 2 workers with batch B equal 1 worker with batch 2B -------------------------------

B = 16
PARAMS = ("logit_scale", "visual.conv1.weight", "text_projection", "visual.proj")


def _fixed_batch():
    """2B image-text pairs, identical wherever they are made; some captions repeat."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2 * B, 3, 28, 28, generator=generator)
    caption_ids = torch.randint(0, 20, (2 * B,), generator=generator)
    return images, caption_ids


def _model_and_tokens():
    torch.manual_seed(0)
    model, tokenizer = create_model("clip-vit-28")  # LayerNorm only: no batch statistics per worker
    return model, tokenizer([f"caption number {i} of a thing" for i in range(20)])


def _loss_and_grads(model, loss_fn, images, tokens, caption_ids):
    model.zero_grad()
    loss, _ = contrastive_loss(model, loss_fn, images, tokens, caption_ids)
    loss.backward()
    named = dict(getattr(model, "module", model).named_parameters())
    return loss.detach(), {name: named[name].grad.clone() for name in PARAMS}


def _two_worker_loop(config):
    import ray.train
    import ray.train.torch
    import torch.distributed as dist
    from open_clip.loss import ClipLoss

    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    images, caption_ids = _fixed_batch()
    mine = slice(rank * B, (rank + 1) * B)
    model, tokens = _model_and_tokens()
    model = ray.train.torch.prepare_model(model)  # DDP over gloo: gradients averaged across workers
    results = {}
    for local_loss in (False, True):
        loss_fn = ClipLoss(local_loss=local_loss, gather_with_grad=True, rank=rank, world_size=world)
        loss, grads = _loss_and_grads(model, loss_fn, images[mine], tokens, caption_ids[mine])
        dist.all_reduce(loss)  # with local_loss each worker scores its own rows: the batch loss is the mean
        results[local_loss] = (loss / world, grads)
    if rank == 0:
        torch.save(results, config["out"])
    ray.train.report({"done": 1})


def test_two_workers_with_batch_b_match_one_worker_with_batch_2b(ray_cluster, tmp_path):
    import ray
    from open_clip.loss import ClipLoss
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # The workers cannot import this test module: ship its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    trainer = TorchTrainer(_two_worker_loop, train_loop_config={"out": str(tmp_path / "two.pt")},
                           scaling_config=ScalingConfig(num_workers=2), torch_config=TorchConfig(backend="gloo"),
                           run_config=RunConfig(name="clip-loss", storage_path=str(tmp_path / "ray")))
    assert trainer.fit().error is None
    two_workers = torch.load(tmp_path / "two.pt")

    images, caption_ids = _fixed_batch()
    model, tokens = _model_and_tokens()
    loss, grads = _loss_and_grads(model, ClipLoss(), images, tokens, caption_ids)
    assert loss.item() > 0.5  # a real loss, not a degenerate zero
    for local_loss, (loss_2, grads_2) in two_workers.items():
        assert loss_2.item() == pytest.approx(loss.item(), rel=1e-5), local_loss
        for name in PARAMS:
            assert grads[name].abs().max() > 0
            torch.testing.assert_close(grads_2[name], grads[name], rtol=1e-4, atol=1e-6)


# --- small pieces -------------------------------------------------------------------------------

def test_captions_from_labels_and_sampling():
    data = make_synthetic(40, num_classes=3)
    pairs = pairs_from_labels(data, ["a photo of a {}.", "{}"], {"class1": ["thing one"]})
    assert len(pairs.captions) == 2 + 4 + 2
    drawn = pairs.sample_captions(pairs.groups, torch.Generator().manual_seed(0))
    for group, caption in zip(pairs.groups.tolist(), drawn.tolist()):
        assert f"class{group}" in pairs.captions[caption] or (group == 1 and "thing one" in pairs.captions[caption])
    # One draw per class and step: the images of a class share it.
    shared = pairs.sample_captions(pairs.groups, torch.Generator().manual_seed(0), per_group=1)
    assert all(len(set(shared[pairs.groups == g].tolist())) == 1 for g in range(3))


def test_retrieval_and_classification_metrics():
    features = torch.eye(4)
    assert retrieval_recall(features, features, torch.arange(4))["i2t_r1"] == 100
    assert retrieval_recall(features, features.roll(1, 0), torch.arange(4))["t2i_r1"] == 0
    # Captions from labels: any caption of the same class is a correct match.
    assert retrieval_recall(features, features.roll(1, 0), torch.tensor([0, 0, 0, 0]))["i2t_r1"] == 100
    metrics = classification_metrics(torch.tensor([[2.0, 1, 0], [2.0, 1, 0], [0, 0, 1.0]]), torch.tensor([0, 1, 2]))
    assert metrics["top1"] == pytest.approx(200 / 3) and metrics["mean_class_recall"] == pytest.approx(200 / 3)


# --- pretraining feeding zero-shot, through MLflow ------------------------------------------------

def clip_spec(workdir: Path, **clip) -> dict:
    return {"name": "tiny-clip", "data": {"name": "synthetic", "synthetic_size": 2000, "val_fraction": 0.1},
            "clip": {"model": "clip-rn-32", **clip,
                     "train": {"epochs": 3, "batch_size": 32, "lr": 0.002, "captions_per_group": 1,
                               "heldout_pairs": 100, **clip.get("train", {})},
                     "zero_shot": {"probe_steps": 100, "probe_train_images": 500}},
            "resources": {"num_workers": 2}, "tracking": {"uri": f"sqlite:///{workdir / 'mlflow.db'}",
                                                           "experiment": "tiny-clip"},
            "storage_path": str(workdir / "checkpoints"), "stages": ["clip_pretrain", "zero_shot", "leaderboard"]}


def test_pretraining_feeds_zero_shot_through_mlflow(ray_cluster, workdir):
    spec = parse_spec(clip_spec(workdir))
    context = workflow.run(spec, QUIET)
    assert not context.failures
    client = MlflowClient(spec.tracking.uri)
    pretrain_id = context.outputs["clip_pretrain"]["run_id"]
    pretrain = client.get_run(pretrain_id)
    assert pretrain.data.tags["stage"] == "clip_pretrain" and pretrain.info.status == "FINISHED"
    for key in ("train_loss", "temperature", "i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"):
        assert sorted(m.step for m in client.get_metric_history(pretrain_id, key)) == [1, 2, 3], key
    losses = [m.value for m in sorted(client.get_metric_history(pretrain_id, "train_loss"), key=lambda m: m.step)]
    assert losses[-1] < losses[0]
    assert pretrain.data.metrics["temperature"] != pytest.approx(0.07)  # learned, not fixed
    # Its workers' nodes are sampled as a classification run's are.
    cpu = [v for k, v in pretrain.data.metrics.items() if k.startswith("system/") and k.endswith("/cpu_utilization_percentage")]
    assert cpu and all(0 <= v <= 100 for v in cpu)

    zero_shot = context.outputs["zero_shot"]["zero_shot"]["metrics"]
    assert zero_shot["top1"] > 30  # chance: 10%, with prompts never used in training
    rows = {row["model"]: row for row in context.outputs["leaderboard"]["board"].rows}
    assert rows["clip-rn-32 (zero-shot)"]["top1"] == pytest.approx(zero_shot["top1"])
    # The probe learns the classes from the pretrained features (chance: 10%; an untrained or mislabelled
    # probe stays near it): above the bound, and at least the zero-shot head's accuracy.
    assert rows["clip-rn-32 (linear probe)"]["top1"] > 90
    assert rows["clip-rn-32 (linear probe)"]["top1"] >= zero_shot["top1"] - 5
    # Both results are LoggedModels of their runs: the head's weights, model.json, test metrics linked.
    from pipeline.tracking.logged_models import run_models

    for name in ("clip-rn-32 (zero-shot)", "clip-rn-32 (linear probe)"):
        (model,) = run_models(client, rows[name]["run_id"])
        assert model.name == name and model.tags["family"] == "CLIP" and model.tags["kind"] == rows[name]["kind"]
        linked = {m.key: m for m in model.metrics}
        assert linked["top1_err"].value == pytest.approx(rows[name]["top1_err"])
        assert linked["top1_err"].dataset_name == "synthetic-test"
        assert {a.path for a in client.list_logged_model_artifacts(model.model_id)} >= {"head.pt", "model.json"}

    # A later invocation with only the zero_shot stage finds the pretrained model through MLflow.
    later = parse_spec({**clip_spec(workdir), "stages": ["zero_shot"]})
    context_2 = workflow.run(later, QUIET)
    run_2 = client.get_run(context_2.outputs["zero_shot"]["zero_shot"]["run_id"])
    assert run_2.data.tags["pretrain_run_id"] == pretrain_id
    assert run_2.data.tags["stage"] == "zero_shot" and run_2.data.tags["model"] == "clip-rn-32 (zero-shot)"
    assert run_2.data.metrics["top1"] == pytest.approx(zero_shot["top1"])
    assert {"top1", "top1_err", "top5", "top5_err", "mean_class_recall"} <= set(run_2.data.metrics)


def test_the_pretraining_learns_from_its_own_classes_and_zero_shot_names_the_data_sections(ray_cluster, workdir):
    """clip.data: the pretraining's images and captions are six classes of the data set; zero-shot evaluates on
    the data section's three others (relabelled 0..2), whose names the pretraining never saw."""
    from pipeline.stages.clip_pretrain import clip_identity

    tree = clip_spec(workdir, data={"classes": [4, 5, 6, 7, 8, 9]}, train={"epochs": 1})
    tree["data"]["classes"] = [0, 1, 2]
    tree["clip"]["zero_shot"]["linear_probe"] = False
    tree["stages"] = ["clip_pretrain", "zero_shot"]
    spec = parse_spec(tree)
    context = workflow.run(spec, QUIET)
    assert not context.failures
    source, target = context.splits(spec.clip_data()), context.data
    assert source.classes == [f"class{i}" for i in range(4, 10)] and target.classes == ["class0", "class1", "class2"]
    client = MlflowClient(spec.tracking.uri)
    pretrain = client.get_run(context.outputs["clip_pretrain"]["run_id"])
    assert int(pretrain.data.params["pairs"]) == len(source.train) != len(target.train)
    zero_shot = client.get_run(context.outputs["zero_shot"]["zero_shot"]["run_id"])
    assert zero_shot.data.tags["pretrain_run_id"] == pretrain.info.run_id
    assert zero_shot.data.params["classes"] == str(target.classes)
    # Other classes for the pretraining are another pretraining unit; without clip.data it learns the data section.
    assert clip_identity(spec) != clip_identity(parse_spec({**tree, "clip": {**tree["clip"], "data": {"classes": [3, 4]}}}))
    assert parse_spec({**tree, "clip": {k: v for k, v in tree["clip"].items() if k != "data"}}).clip_data().classes == [0, 1, 2]


def _write_caption_set(root: Path, n: int = 300, text_column: str = "text") -> None:
    """An image-caption data set on disk: synthetic class images, two free-text captions each."""
    import datasets

    data = make_synthetic(n, num_classes=4, seed=3)
    images = [Image.fromarray(img[0].numpy()) for img in data.images]
    texts = [[f"a picture of pattern {label}", f"pattern {label} seen up close"] for label in data.labels.tolist()]
    root.mkdir(parents=True)
    datasets.Dataset.from_dict({"image": images, text_column: texts}).to_parquet(str(root / "train-0.parquet"))


def test_pretraining_on_an_image_caption_data_set(ray_cluster, workdir):
    _write_caption_set(workdir / "captions")
    pairs = pairs_from_dataset(str(workdir / "captions"), "train", "image", "text", 1, 28)
    assert len(pairs) == 300 and len(pairs.captions) == 600 and pairs.group_captions.shape == (300, 2)
    # A time limit of 3 s ends the run long before its 50 epochs.
    tree = clip_spec(workdir, captions={"path": str(workdir / "captions")},
                     train={"heldout_pairs": 50, "epochs": 50, "time_limit_min": 0.05})
    tree["stages"] = ["clip_pretrain"]
    spec = parse_spec(tree)
    context = workflow.run(spec, QUIET)
    assert not context.failures
    client = MlflowClient(spec.tracking.uri)
    run = client.get_run(context.outputs["clip_pretrain"]["run_id"])
    assert run.data.params["pairs"] == "250" and run.data.params["distinct_captions"] == "600"  # 50 held out
    assert run.data.tags["dataset"] == str(workdir / "captions")
    epochs = int(run.data.metrics["epochs"])
    assert 1 <= epochs < 50
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"):  # exact pairs: each image has its own captions
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(1, epochs + 1)), key
        assert 0 <= run.data.metrics[key] <= 100
    assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} == {"model/model.pt", "model/model.json"}


# --- bad input: one line naming the problem -------------------------------------------------------

def test_bad_clip_specs_are_rejected_in_one_line(workdir):
    from test_cli import assert_one_line_error

    with pytest.raises(PipelineError, match="unknown CLIP model 'clip-vit-82'.*did you mean clip-vit-28"):
        parse_spec(clip_spec(workdir, model="clip-vit-82"))
    with pytest.raises(PipelineError, match=r"eval_templates: template 'a photo' needs exactly one '\{\}'"):
        parse_spec(clip_spec(workdir, captions={"eval_templates": ["a photo of a {}.", "a photo"]}))
    with pytest.raises(PipelineError, match="stage 'zero_shot' needs a clip: section"):
        parse_spec({"name": "x", "stages": ["zero_shot"]})
    with pytest.raises(PipelineError, match="clip.data: classes: 'synthetic' has classes 0..9, not 12"):
        parse_spec(clip_spec(workdir, data={"classes": [1, 12]}))
    with pytest.raises(PipelineError, match="data applies to captions made from the data set's labels.*remove one"):
        parse_spec(clip_spec(workdir, data={"classes": [1, 2]}, captions={"path": str(workdir / "captions")}))
    with pytest.raises(PipelineError, match="no pretrained weights 'laion9000' for CLIP model 'ViT-B-32'"):
        create_model("ViT-B-32", "laion9000")

    _write_caption_set(workdir / "captions", n=20, text_column="caption")
    (workdir / "spec.yaml").write_text(
        "name: t\ndata: {name: synthetic, synthetic_size: 100}\nstages: [clip_pretrain]\n"
        f"clip: {{model: clip-vit-28, captions: {{path: {workdir / 'captions'}}}}}\n")
    result = run_cli("run", "spec.yaml", cwd=workdir)
    assert_one_line_error(result, "has no text column 'text'", "columns: image, caption", "clip.captions.text_column")
    (workdir / "spec.yaml").write_text("name: t\nstages: [zero_shot]\nclip: {zero_shot: {model: RN50x}}\n")
    assert_one_line_error(run_cli("validate", "spec.yaml", cwd=workdir), "unknown CLIP model 'RN50x'")


def test_missing_pretrained_weights_offline_are_one_line(workdir):
    from test_cli import assert_one_line_error

    (workdir / "spec.yaml").write_text(
        "name: t\ndata: {name: synthetic, synthetic_size: 100}\nstages: [zero_shot]\n"
        "clip: {zero_shot: {model: RN50, pretrained: openai}}\n")
    # Offline: the hub is never contacted, the weights are not in the cache.
    result = run_cli("run", "spec.yaml", cwd=workdir,
                     env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(workdir / "hf"), "XDG_CACHE_HOME": str(workdir)})
    assert_one_line_error(result, "pretrained weights 'openai' of CLIP model 'RN50' cannot be fetched")


def test_threads_building_clip_models_at_once_neither_fail_nor_log_an_untrained_start():
    """A workflow builds CLIP models in several threads at once (a zero-shot unit beside a classifier starting
    from the same tower): the small models are registered once, and open_clip's "initialized randomly" warning,
    which every pipeline start from a trained tower would print, stays out of the output. A fresh interpreter:
    the registration happens once per process."""
    code = ("import logging, threading\nlogging.basicConfig()\nfrom models.clip import create_model\n"
            "threads = [threading.Thread(target=create_model, args=(name,)) for name in ['clip-rn-32', 'clip-vit-28'] * 3]\n"
            "[t.start() for t in threads]\n[t.join() for t in threads]\n"
            "logging.warning('the root logger still logs')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "initialized randomly" not in done.stderr, done.stderr[-2000:]
    assert "the root logger still logs" in done.stderr
