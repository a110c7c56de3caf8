"""Transfer: a model entry's `init:` (timm's pretrained path for weights files, LoggedModels and other units),
its fine-tuning options (freeze, layer_decay, head_lr), the unit key that holds the initial weights' digest,
and the lineage on runs, models and the leaderboard. Weights are made here: nothing is downloaded."""
import io
import json
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console
from safetensors.torch import save_file

import models  # noqa: F401  (the zoo in timm's registry)
from models._factory import build_model
from pipeline.engine import registry
from pipeline.engine.context import RunContext
from pipeline.errors import PipelineError
from pipeline.spec.loading import parse_spec
from pipeline.spec.sections import ModelEntry
from pipeline.training.config import Optimization
from pipeline.training.finetune import freeze
from pipeline.training.learning_rate import LearningRate
from pipeline.training.model_checks import check_finetune_options
from pipeline.training.weights import resolve_init

SHAPE = {"classes": ["a", "b", "c", "d"], "in_chans": 1}


def resolve(entry: ModelEntry, shape=SHAPE):
    return resolve_init(SimpleNamespace(weights={}, tracker=None), entry, shape)


def test_a_timm_format_file_loads_with_another_class_count_and_channel_count(tmp_path):
    """Saved for 10 classes on RGB, loaded for 4 classes on grey images through timm's pretrained path: the body
    as saved, the stem adapted by timm's adapt_input_conv (channels summed), the classifier reset to 4 classes."""
    for name in ("resnet20", "resnet18"):  # the zoo's CIFAR ResNet and timm's own ResNet
        source = build_model(name, 10, 3).state_dict()
        save_file(source, str(tmp_path / f"{name}.safetensors"))
        init = resolve(ModelEntry(name=name, init=str(tmp_path / f"{name}.safetensors")))
        stem, classifier = ("stem.0", "head.fc") if name == "resnet20" else ("conv1", "fc")
        assert init.source.startswith(f"file:{name}.safetensors#") and len(init.digest) == 16
        assert init.weights[f"{classifier}.weight"].shape[0] == 4
        assert torch.allclose(init.weights[f"{stem}.weight"], source[f"{stem}.weight"].sum(1, keepdim=True))
        body = [k for k in source if not k.startswith((stem, classifier))]
        assert all(torch.equal(init.weights[k], source[k]) for k in body)
        build_model(name, 4, 1).load_state_dict(init.weights)  # what a worker does, strictly


def test_a_vit_loads_at_another_image_size(tmp_path):
    """A ViT saved at 32 px (an 8x8 grid of 4 px patches) loads at 16 px: timm's checkpoint filter resamples
    its position embeddings to the 4x4 grid."""
    from timm.layers import resample_abs_pos_embed

    source = build_model("vit_tiny_patch4_32", 10, 3, depth=2).state_dict()
    torch.save(source, tmp_path / "vit.pt")
    init = resolve(ModelEntry(name="vit_tiny_patch4_32", kwargs={"depth": 2, "img_size": 16}, init=str(tmp_path / "vit.pt")))
    assert init.weights["pos_embed"].shape == (1, 1 + 16, 192)
    assert torch.allclose(init.weights["pos_embed"], resample_abs_pos_embed(source["pos_embed"], (4, 4), num_prefix_tokens=1))
    assert torch.equal(init.weights["blocks.1.mlp.fc1.weight"], source["blocks.1.mlp.fc1.weight"])
    build_model("vit_tiny_patch4_32", 4, 1, depth=2, img_size=16).load_state_dict(init.weights)


@pytest.mark.parametrize("case, words", [
    ("missing", "no such weights file"),
    ("not weights", "is not a safetensors file or a state dict"),
    ("architecture", "the weights have no features.0.weight that lenet5 needs"),
    ("shape", "layer cls_token does not fit"),
    ("hub", "timm could not load the pretrained weights"),
])
def test_a_bad_source_is_one_line_naming_it(case, words, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 sets it: no network here
    torch.save(build_model("resnet20", 10, 1).state_dict(), tmp_path / "resnet20.pt")
    torch.save(build_model("vit_tiny_patch4_32", 10, 1, depth=2).state_dict(), tmp_path / "vit.pt")
    (tmp_path / "notes.pt").write_text("not weights")
    entry = {"missing": ModelEntry(name="lenet5", init=str(tmp_path / "nowhere.pt")),
             "not weights": ModelEntry(name="lenet5", init=str(tmp_path / "notes.pt")),
             "architecture": ModelEntry(name="lenet5", init=str(tmp_path / "resnet20.pt")),
             "shape": ModelEntry(name="vit_tiny_patch4_32", kwargs={"depth": 2, "embed_dim": 96}, init=str(tmp_path / "vit.pt")),
             "hub": ModelEntry(name="resnet18", init="timm:a1_in1k")}[case]
    with pytest.raises(PipelineError) as error:
        resolve(entry)
    message = str(error.value)
    assert words in message and "\n" not in message and message.startswith(f"models[{entry.name}].init "), message


@pytest.mark.parametrize("entry, words", [
    ({"name": "resnet20", "layer_decay": 0.7}, "models[resnet20].layer_decay: model 'resnet20' has no timm group_matcher"),
    ({"name": "resnet20", "freeze": 2}, "models[resnet20].freeze: model 'resnet20' has no timm group_matcher"),
    ({"name": "resnet18", "freeze": 6}, "would freeze its classifier: give at most 4"),
])
def test_a_finetuning_option_the_model_cannot_take_is_refused_in_one_line(entry, words):
    with pytest.raises(PipelineError) as error:
        check_finetune_options(ModelEntry(**entry))
    assert words in str(error.value) and "\n" not in str(error.value)


def test_layer_decay_and_head_lr_give_the_optimizer_decayed_groups():
    """timm's layer-wise decay: each layer's group carries lr_scale = decay ** (depth from the top), which timm's
    scheduler turns into its lr; the classifier's groups carry head_lr / lr."""
    model = build_model("vit_tiny_patch4_32", 4, 1, depth=2)
    optim = Optimization(optimizer="adamw", lr=0.01, weight_decay=0.05, momentum=0.9, scheduler="cosine",
                         warmup_epochs=0, min_lr=0.0, decay_epochs=1, decay_milestones=(1,), decay_rate=0.1,
                         grad_clip=None, micro_batch=8, grad_accum_steps=1, global_batch=8, layer_decay=0.5,
                         head_lr_scale=3.0)
    groups = LearningRate(model, optim, 1, 10).optimizer.param_groups
    head = {id(p) for p in model.get_classifier().parameters()}
    body = sorted({g["lr_scale"] for g in groups if not any(id(p) in head for p in g["params"])})
    assert body == [0.5 ** 3, 0.5 ** 2, 0.5]  # the embeddings, block 0, block 1; the top layer is the head's
    assert all(g["lr_scale"] == 3.0 for g in groups if any(id(p) in head for p in g["params"]))
    assert {round(g["lr"] / g["lr_scale"], 9) for g in groups} == {0.01}  # the schedule's lr times each scale
    unscheduled = LearningRate(model, optim.__class__(**{**optim.__dict__, "scheduler": "none"}), 1, 10)
    assert all(g["lr"] == pytest.approx(0.01 * g["lr_scale"]) for g in unscheduled.optimizer.param_groups)
    plain = LearningRate(model, optim.__class__(**{**optim.__dict__, "layer_decay": None, "head_lr_scale": None}), 1, 10)
    assert {g["lr"] for g in plain.optimizer.param_groups} == {0.01}


def test_freezing_leaves_the_classifier_or_the_later_groups_trainable():
    model = build_model("resnet18", 4, 1)
    norms = freeze(model, "backbone")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"} and len(norms) == 20  # every batch norm stays in eval mode
    model = build_model("resnet18", 4, 1)
    freeze(model, 2)  # the stem and the first stage
    frozen = {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1"}


def plan_keys(tree):
    context = RunContext(parse_spec(tree))
    return {u.name: u.resolve_key({}) for u in registry.plan(context) if u.stage == "train"}


def test_other_initial_weights_make_another_unit(tmp_path):
    """The key holds the initial weights' digest and the fine-tuning options: the same file gives the same key,
    other weights (even under the same name) or another option give another."""
    path = tmp_path / "lenet5.pt"
    torch.manual_seed(0)
    torch.save(build_model("lenet5", 10, 1).state_dict(), path)
    tree = {"name": "keys", "data": {"name": "synthetic", "synthetic_size": 50}, "train": {"epochs": 1},
            "models": [{"name": "lenet5", "init": str(path)}], "resources": {"num_workers": 1}, "stages": ["train"]}
    first = plan_keys(tree)
    assert plan_keys(tree) == first
    scratch = plan_keys({**tree, "models": ["lenet5"]})
    frozen = plan_keys({**tree, "models": [{"name": "lenet5", "init": str(path), "freeze": "backbone"}]})
    torch.save(build_model("lenet5", 10, 1).state_dict(), path)  # other weights in the same file
    assert len({first["train/lenet5"], plan_keys(tree)["train/lenet5"], scratch["train/lenet5"],
                frozen["train/lenet5"]}) == 4


def test_a_unit_source_must_come_before_it():
    tree = {"name": "keys", "data": {"name": "synthetic", "synthetic_size": 50}, "stages": ["train"],
            "models": [{"name": "lenet5", "init": "unit:train/resnet20"}, "resnet20"]}
    with pytest.raises(PipelineError) as error:
        registry.plan(RunContext(parse_spec(tree)))
    assert "no model listed before it trains in unit train/resnet20" in str(error.value)


SEEDED = {"name": "seeded", "data": {"name": "synthetic", "synthetic_size": 100, "val_fraction": 0.2},
          "models": [{"id": "pretrain", "name": "lenet5"}, {"id": "tuned", "name": "lenet5", "init": "unit:train/pretrain"},
                     {"id": "from-seed0", "name": "lenet5", "init": "unit:train/pretrain@seed0", "freeze": "backbone"}],
          "train": {"epochs": 1, "batch_size": 32, "warmup_epochs": 0}, "seeds": [0, 1],
          "resources": {"num_workers": 1}, "stages": ["train"]}


def test_with_seeds_each_seed_fine_tunes_from_the_same_seeds_source():
    """`init: unit:train/pretrain` under seeds: seed k needs train/pretrain@seedk; a source named with its seed
    serves every seed; the weights come from the unit needed (a missing output names that unit)."""
    context = RunContext(parse_spec(SEEDED))
    needs = {u.name: u.needs for u in registry.plan(context) if u.stage == "train"}
    assert needs["train/tuned@seed0"] == ["train/pretrain@seed0"] and needs["train/tuned@seed1"] == ["train/pretrain@seed1"]
    assert needs["train/from-seed0@seed1"] == ["train/pretrain@seed0"]
    entry = context.spec.named_entries()[1][1]
    with pytest.raises(PipelineError) as error:
        resolve_init(SimpleNamespace(weights={}), entry, SHAPE, {"train/pretrain@seed1": {}}, "train/pretrain@seed1")
    assert "unit train/pretrain@seed1 left no LoggedModel" in str(error.value)


def run_workflow(tree):
    from pipeline.engine import workflow

    output = io.StringIO()
    context = workflow.run(parse_spec(tree), Console(file=output, width=200))
    assert not context.failures, context.failure_summary() + output.getvalue()[-3000:]
    return context


def model_files(tracker, model_id, folder):
    from pipeline.tracking.model_files import download_model_files

    weights, meta = download_model_files(tracker, model_id, folder)
    return torch.load(weights, weights_only=True), json.loads(meta.read_text())


def test_a_unit_fine_tunes_from_another_unit_and_from_its_logged_model(ray_cluster, workdir):
    """train/lenet5 trains; train/lenet5#1 starts from its LoggedModel (a DAG edge) with a frozen backbone; a
    second spec on another data set (4 classes, RGB) starts from the registered champion (models:/NAME@alias). The
    backbone is the source's, the classifier is trained (and has the new class count), the runs' and models'
    tags and model.json name the source, the leaderboard shows the init column, and the same spec again is cached."""
    from pipeline.data.stream import write_jpeg_shards
    from pipeline.results.champion import register_champion
    from pipeline.results.leaderboard import build
    from pipeline.tracking.store import Tracker

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    tree = {"name": "transfer", "data": {"name": "synthetic", "synthetic_size": 200, "val_fraction": 0.2},
            "models": ["lenet5", {"name": "lenet5", "init": "unit:train/lenet5", "freeze": "backbone", "head_lr": 0.05,
                                   "resources": {"num_workers": 2}}],  # DDP over a frozen backbone
            "train": {"epochs": 1, "batch_size": 32, "lr": 0.01, "warmup_epochs": 0},
            "resources": {"num_workers": 1}, "tracking": {"uri": uri, "experiment": "transfer"},
            "storage_path": str(workdir / "checkpoints"), "stages": ["train", "leaderboard"]}
    context = run_workflow(tree)
    tracker = Tracker(uri)
    source, tuned = context.outputs["train"]["lenet5"], context.outputs["train"]["lenet5#1"]
    run = tracker.client.get_run(tuned["run_id"])
    assert run.data.tags["init"] == f"models:/{source['model_id']}" and run.data.tags["init_model_id"] == source["model_id"]
    assert run.data.params["init"] == run.data.tags["init"] and run.data.params["freeze"] == "backbone"
    assert run.data.params["head_lr"] == "0.05"
    assert tracker.client.get_logged_model(tuned["model_id"]).tags["init"] == run.data.tags["init"]
    before, _ = model_files(tracker, source["model_id"], workdir / "source")
    after, meta = model_files(tracker, tuned["model_id"], workdir / "tuned")
    assert meta["init"]["init_model_id"] == source["model_id"] and meta["init"]["init_digest"] == run.data.tags["init_digest"]
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("fc."))  # frozen: as it started
    assert not torch.equal(before["fc.weight"], after["fc.weight"])  # the classifier trained on
    board = build(uri, "transfer")
    assert "init" in board.columns and {r["init"] for r in board.rows} == {"scratch", run.data.tags["init"]}

    again = run_workflow(tree)  # unchanged: both cached
    assert {again.outputs["train"][m]["run_id"] for m in ("lenet5", "lenet5#1")} == {source["run_id"], tuned["run_id"]}
    # `pipeline status` resolves the fine-tuned unit's key through its cached source: cached, not pending.
    from pipeline.engine import workflow

    engine = workflow.prepare(parse_spec(tree), Console(file=io.StringIO()))
    workflow.resolve_through_cache(engine)
    states = {row["unit"]: row["state"] for row in workflow.unit_table(engine)}
    assert states["train/lenet5#1"].startswith(f"cached (run {tuned['run_id'][:12]}"), states

    write_jpeg_shards(workdir / "rgb", "train", 60, 1, (28, 28), 4)
    write_jpeg_shards(workdir / "rgb", "test", 20, 1, (28, 28), 4)
    champion = register_champion(uri, "transfer")  # a registered model by its alias (either lenet5: same backbone)
    other = {**tree, "name": "transfer-rgb", "data": {"name": "huggingface", "path": str(workdir / "rgb"), "val_fraction": 0.2},
             "models": [{"name": "lenet5", "init": "models:/transfer@champion", "freeze": "backbone"}]}
    moved = run_workflow(other).outputs["train"]["lenet5"]
    rgb, meta = model_files(tracker, moved["model_id"], workdir / "rgb-model")
    assert meta["num_classes"] == 4 and rgb["fc.weight"].shape == (4, 84) and rgb["features.0.weight"].shape[1] == 3
    assert all(torch.equal(before[k], rgb[k]) for k in before if not k.startswith(("fc.", "features.0.")))
    assert tracker.client.get_run(moved["run_id"]).data.tags["init_model_id"] == champion["model_id"]


def test_seeded_fine_tuned_units_start_from_their_own_seeds_source(ray_cluster, workdir):
    """The seeded spec above (its source and the entry fine-tuned from it), run: each fine-tuned seed's run names
    its own seed's source model, and the spec again is cached."""
    from pipeline.tracking.store import Tracker

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    tree = {**SEEDED, "models": SEEDED["models"][:2], "tracking": {"uri": uri, "experiment": "seeded"},
            "storage_path": str(workdir / "checkpoints")}
    outputs = run_workflow(tree).outputs["train"]
    client = Tracker(uri).client
    for unit, source in (("tuned@seed0", "pretrain@seed0"), ("tuned@seed1", "pretrain@seed1")):
        tags = client.get_run(outputs[unit]["run_id"]).data.tags
        assert tags["init_model_id"] == outputs[source]["model_id"], (unit, source)
    assert outputs["pretrain@seed0"]["model_id"] != outputs["pretrain@seed1"]["model_id"]
    again = run_workflow(tree).outputs["train"]
    assert {u: o["run_id"] for u, o in again.items()} == {u: o["run_id"] for u, o in outputs.items()}


def test_a_bad_source_fails_in_one_line_before_anything_is_written(workdir):
    """A missing weights file: `pipeline run` prints one error line, and the tracking store holds no run."""
    import yaml
    from conftest import run_cli

    spec = {"name": "bad-init", "data": {"name": "synthetic", "synthetic_size": 50}, "train": {"epochs": 1},
            "models": [{"name": "lenet5", "init": "weights/lenet5.safetensors"}], "resources": {"num_workers": 1},
            "stages": ["train"]}
    (workdir / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = run_cli("run", "spec.yaml", cwd=workdir)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1 and "no such weights file" in lines[0], lines
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlartifacts").exists()


def test_a_swept_model_with_transfer_options_is_refused_in_one_line():
    tree = {"name": "swept", "data": {"name": "synthetic"}, "stages": ["sweep"],
            "models": [{"name": "lenet5", "freeze": "backbone"}],
            "sweep": {"space": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}, "num_samples": 2}}
    with pytest.raises(PipelineError) as error:
        parse_spec(tree)
    assert "models[lenet5].freeze applies to the train stage" in str(error.value) and "\n" not in str(error.value)
