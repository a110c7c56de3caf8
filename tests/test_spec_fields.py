"""Every field of the spec's schema is consumed: changing it from its default changes what a training worker
receives (the typed WorkerConfig the driver resolves) or the units the workflow plans, or it is refused in one
line on the data path where it cannot apply, or it is named below with the code that consumes it. A field
added to the schema later without a consumer and an entry here fails `test_every_field_is_accounted_for`.

No Ray and no training: worker configs are resolved on a small synthetic in-memory set and on a tiny
parquet set this test writes; Ray's object store is stood in for by a digest of the splits it would hold."""
import copy
import json
import typing

import pydantic
import pytest

import models  # noqa: F401  (the zoo in timm's registry, as in every run: the workers build from it)
from pipeline.data.stream import write_jpeg_shards
from pipeline.engine import registry
from pipeline.engine.context import RunContext
from pipeline.errors import PipelineError
from pipeline.spec.loading import parse_spec
from pipeline.spec.schema import Spec
from pipeline.training.recipe import worker_config

MEMORY = {"name": "fields", "data": {"name": "synthetic", "synthetic_size": 50}, "models": [{"name": "lenet5"}],
          "train": {"epochs": 1}, "resources": {"num_workers": 1}, "stages": ["train"]}
STREAM = {**MEMORY, "models": [{"name": "resnet20"}],
          "data": {"name": "huggingface", "path": "<shards>", "test_split": "validation", "streaming": True,
                   "image_size": 16}}
SWEEP = {**MEMORY, "stages": ["train", "sweep"],
         "sweep": {"space": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}, "num_samples": 2}}
CLIP = {"name": "fields", "data": {"name": "synthetic", "synthetic_size": 50}, "stages": ["clip_pretrain"],
        "clip": {"model": "clip-vit-28"}}
GRID = {"sweep.space{}.type": "choice", "sweep.space{}.values": [1e-3, 1e-2], "sweep.space{}.low": None,
        "sweep.space{}.high": None}

# field: (what it changes, base spec, changed value, other fields set in both specs first)
# "worker": the typed WorkerConfig of the training units; "unit": the planned units (identity, resources...).
CHANGES = {
    "data.path": ("worker", STREAM, "<other shards>", {}),
    "data.train_split": ("worker", STREAM, "validation", {}),
    "data.test_split": ("worker", STREAM, "train", {}),
    "data.streaming": ("worker", STREAM, False, {}),
    "data.image_size": ("worker", MEMORY, 16, {}),
    "data.in_chans": ("worker", MEMORY, 3, {}),
    "data.val_fraction": ("worker", MEMORY, 0.3, {}),
    "data.limit_train": ("worker", MEMORY, 20, {}),
    "data.limit_test": ("worker", MEMORY, 5, {}),
    "data.augment": ("worker", MEMORY, False, {}),
    "data.max_shift": ("worker", MEMORY, 4, {}),
    "data.synthetic_size": ("worker", MEMORY, 60, {}),
    "data.seed": ("worker", MEMORY, 1, {}),
    "data.classes": ("worker", MEMORY, [3, 1], {}),
    "data.per_class": ("worker", MEMORY, 2, {}),
    "data.name": ("worker", {**MEMORY, "data": {"name": "huggingface", "path": "<shards>", "test_split": "validation",
                                                "image_column": "image"}}, "cifar10", {}),
    "models[].name": ("worker", MEMORY, "resnet20", {}),
    "models[].kwargs": ("worker", MEMORY, {"drop_rate": 0.1}, {}),
    "models[].train": ("worker", MEMORY, {"lr": 0.01}, {}),
    "models[].resources": ("worker", MEMORY, {"num_workers": 2}, {}),
    "models[].init": ("worker", MEMORY, "<weights>", {}),
    "models[].freeze": ("worker", MEMORY, "backbone", {}),
    "models[].layer_decay": ("worker", MEMORY, 0.7, {}),
    "models[].head_lr": ("worker", MEMORY, 0.01, {}),
    "models[].id": ("unit", MEMORY, "mine", {}),
    "models[].data": ("worker", MEMORY, {"per_class": 2}, {}),
    "train.epochs": ("worker", MEMORY, 2, {}),
    "train.batch_size": ("worker", MEMORY, 64, {}),
    "train.global_batch_size": ("worker", MEMORY, 512, {}),
    "train.grad_accum_steps": ("worker", MEMORY, 2, {}),
    "train.lr_base_size": ("worker", MEMORY, 256, {}),
    "train.lr_scale": ("worker", MEMORY, "linear", {"train.lr_base_size": 256}),
    "train.transforms.scale": ("worker", STREAM, [0.5, 1.0], {}),
    "train.transforms.ratio": ("worker", STREAM, [1.0, 1.0], {}),
    "train.transforms.hflip": ("worker", STREAM, 0.0, {}),
    "train.transforms.color_jitter": ("worker", STREAM, 0.4, {}),
    "train.transforms.auto_augment": ("worker", STREAM, "rand-m9-mstd0.5", {}),
    "train.transforms.interpolation": ("worker", STREAM, "nearest", {}),
    "train.transforms.crop_pct": ("worker", STREAM, 0.5, {}),
    "train.transforms.mean": ("worker", STREAM, [0.4, 0.4, 0.4], {}),
    "train.transforms.std": ("worker", STREAM, [0.2, 0.2, 0.2], {}),
    "train.mixup": ("worker", MEMORY, 0.2, {}),
    "train.cutmix": ("worker", MEMORY, 1.0, {}),
    "train.mixup_prob": ("worker", MEMORY, 0.5, {"train.mixup": 0.2}),
    "train.mixup_switch_prob": ("worker", MEMORY, 0.2, {"train.mixup": 0.2, "train.cutmix": 1.0}),
    "train.ema_decay": ("worker", MEMORY, 0.99, {}),
    "train.compile": ("worker", MEMORY, True, {}),
    "train.optimizer": ("worker", MEMORY, "sgd", {}),
    "train.lr": ("worker", MEMORY, 0.01, {}),
    "train.weight_decay": ("worker", MEMORY, 0.0, {}),
    "train.momentum": ("worker", MEMORY, 0.5, {}),
    "train.scheduler": ("worker", MEMORY, "step", {}),
    "train.warmup_epochs": ("worker", MEMORY, 0, {}),
    "train.min_lr": ("worker", MEMORY, 0.0, {}),
    "train.decay_epochs": ("worker", MEMORY, 30, {}),
    "train.decay_milestones": ("worker", MEMORY, [5], {}),
    "train.decay_rate": ("worker", MEMORY, 0.5, {}),
    "train.label_smoothing": ("worker", MEMORY, 0.0, {}),
    "train.grad_clip": ("worker", MEMORY, 1.0, {}),
    "train.precision": ("worker", MEMORY, "fp32", {}),
    "train.channels_last": ("worker", MEMORY, True, {}),
    "train.seed": ("worker", MEMORY, 1, {}),
    "train.eval_test_every_epoch": ("worker", MEMORY, True, {}),
    "resources.num_workers": ("worker", MEMORY, 2, {}),
    "resources.cpus_per_worker": ("worker", MEMORY, 2, {}),
    "resources.threads_per_worker": ("worker", MEMORY, 2, {}),
    "resources.gpus_per_worker": ("unit", MEMORY, 1, {}),
    "resources.max_failures": ("unit", MEMORY, 0, {}),
    "resources.max_wait_s": ("unit", MEMORY, 60, {}),
    "tracking.system_metrics": ("worker", MEMORY, False, {}),
    "stages": ("unit", MEMORY, ["train", "leaderboard"], {}),
    "sweep.space{}.type": ("unit", SWEEP, "uniform", {}),
    "sweep.space{}.values": ("unit", SWEEP, [1e-3], GRID),
    "sweep.space{}.low": ("unit", SWEEP, 1e-5, {}),
    "sweep.space{}.high": ("unit", SWEEP, 1e-1, {}),
    "sweep.num_samples": ("unit", SWEEP, 3, {}),
    "sweep.search": ("unit", SWEEP, "grid", GRID),
    "sweep.scheduler": ("unit", SWEEP, "none", {}),
    "sweep.grace_period": ("unit", SWEEP, 2, {}),
    "sweep.reduction_factor": ("unit", SWEEP, 3, {}),
    "sweep.metric": ("unit", SWEEP, "val_top1", {}),
    "sweep.mode": ("unit", SWEEP, "min", {"sweep.metric": "val_top1"}),
    "sweep.max_concurrent_trials": ("unit", SWEEP, 1, {}),
    "sweep.resources.num_workers": ("unit", SWEEP, 2, {}),
    "sweep.resources.cpus_per_worker": ("unit", SWEEP, 2, {}),
    "sweep.resources.gpus_per_worker": ("unit", SWEEP, 1, {}),
    "sweep.resources.threads_per_worker": ("unit", SWEEP, 2, {}),
    "sweep.resources.max_failures": ("unit", SWEEP, 1, {}),
    "sweep.resources.max_wait_s": ("unit", SWEEP, 60, {}),
    "sweep.retrain_epochs": ("unit", SWEEP, 3, {}),
    "sweep.models": ("unit", SWEEP, ["resnet20"], {"models": [{"name": "lenet5"}, {"name": "resnet20"}]}),
    "clip.model": ("unit", CLIP, "clip-rn-32", {}),
    "clip.pretrained": ("unit", CLIP, "weights.pt", {}),
    "clip.model_kwargs": ("unit", CLIP, {"init_logit_bias": 0.0}, {}),
    "clip.data": ("unit", CLIP, {"classes": [0, 1]}, {}),
    "clip.captions.limit": ("unit", CLIP, 10, {}),
    "clip.captions.descriptions": ("unit", CLIP, {"class0": ["zero"]}, {}),
    "clip.captions.train_templates": ("unit", CLIP, ["a {}"], {}),
    "clip.captions.eval_templates": ("unit", CLIP, ["the {}"], {}),
    "clip.train.epochs": ("unit", CLIP, 2, {}),
    "clip.train.batch_size": ("unit", CLIP, 32, {}),
    "clip.train.lr": ("unit", CLIP, 1e-3, {}),
    "clip.train.weight_decay": ("unit", CLIP, 0.0, {}),
    "clip.train.warmup_epochs": ("unit", CLIP, 1, {}),
    "clip.train.min_lr": ("unit", CLIP, 0.0, {}),
    "clip.train.init_temperature": ("unit", CLIP, 0.1, {}),
    "clip.train.local_loss": ("unit", CLIP, True, {}),
    "clip.train.captions_per_group": ("unit", CLIP, 1, {}),
    "clip.train.time_limit_min": ("unit", CLIP, 1.0, {}),
    "clip.train.heldout_pairs": ("unit", CLIP, 20, {}),
    "clip.train.grad_clip": ("unit", CLIP, 1.0, {}),
    "clip.train.precision": ("unit", CLIP, "fp32", {}),
    "clip.train.seed": ("unit", CLIP, 1, {}),
    "seeds": ("unit", MEMORY, [0, 1], {}),
}

# Fields refused in one line where they cannot apply: (base spec, value, other fields, words of the error).
REFUSED = {
    "data.image_column": (STREAM, "absent", {}, "data.image_column"),
    "data.label_column": (STREAM, "absent", {}, "data.label_column"),
    "data.skip_unreadable": (STREAM, True, {}, "data.skip_unreadable applies to in-memory data sets"),
}

# Fields whose consumer is not a planned unit or a worker: where each one is read.
ELSEWHERE = {
    "name": "engine/workflow.py: the workflow run's name and `spec` tag; stages/sweep.py: the Tune experiment",
    "description": "engine/workflow.py: the workflow run's MLflow description and the run's first line",
    "tracking.uri": "engine/context.py and tracking/store.py: the MLflow store every run is written to",
    "tracking.experiment": "spec/schema.py experiment_name: the MLflow experiment of every run",
    "storage_path": "engine/context.py storage_of: where Ray Train and Tune keep checkpoints",
    "max_concurrent_units": "engine/scheduler.py: how many units run at once",
    # Needs a clip init (tests/test_clip_transfer.py); in the unit's identity through recipe.py finetune_options.
    "models[].wise_ft": "training/unit.py run_training, training/clip_transfer.py wise_ft: evaluated after fine-tuning",
    "ensemble.top_k": "stages/ensemble.py: members chosen from the leaderboard when the unit runs",
    "ensemble.members": "stages/ensemble.py: named members, resolved to runs when the unit runs",
    "ensemble.name": "stages/ensemble.py: the ensemble's model name on the leaderboard",
    # The zero-shot unit's identity is computed when it starts, from the pretraining run it reads.
    "clip.zero_shot.model": "stages/zero_shot.py plan/identify: which CLIP model is evaluated",
    "clip.zero_shot.pretrained": "stages/zero_shot.py run_unit: open_clip's pretrained tag",
    "clip.zero_shot.linear_probe": "stages/zero_shot.py run_unit: whether the linear probe is trained",
    "clip.zero_shot.probe_train_images": "stages/zero_shot.py run_unit: the probe's training images",
    "clip.zero_shot.probe_steps": "stages/zero_shot.py run_unit: clip/evaluation.py linear_probe's steps",
    "clip.zero_shot.probe_lr": "stages/zero_shot.py run_unit: clip/evaluation.py linear_probe's lr",
    # Image-caption sets: read by pipeline/data/captions.py when the pretraining unit runs (its identity
    # fingerprints the caption set's path; these name what is read in it).
    "clip.captions.path": "stages/clip_pretrain.py clip_identity and data/captions.py: the image-caption set",
    "clip.captions.image_column": "data/captions.py pairs_from_dataset: the caption set's image column",
    "clip.captions.text_column": "data/captions.py pairs_from_dataset: the caption set's text column",
    "clip.captions.split": "data/captions.py open_caption_set: the caption set's split",
    # Published figures: read from the workflow run's spec.yaml by `pipeline leaderboard --reference` and
    # `pipeline report` (results/reproduction.py spec_reference), never by a unit.
    "reference.table": "spec/reference.py ReferenceConfig.resolved: the catalogue table compared against",
    "reference.rows[].model": "results/reproduction.py compare: the leaderboard row a reference row is matched to",
    "reference.rows[].dataset": "results/reproduction.py _budget_difference: not comparable on another data set",
    "reference.rows[].metric": "results/reproduction.py verdict: which of our figures is compared",
    "reference.rows[].value": "results/reproduction.py verdict: the published figure (and its printed spread)",
    "reference.rows[].source": "results/reproduction.py: the source column of the comparison",
    "reference.rows[].budget.epochs": "results/reproduction.py _budget_difference: epochs differ",
    "reference.rows[].budget.train_images": "results/reproduction.py _budget_difference: training images differ",
    "reference.rows[].budget.augmentation": "results/reproduction.py _budget_difference: augmentation differs",
    "reference.rows[].budget.crop": "results/reproduction.py published_budget: the published budget column",
    "reference.rows[].budget.ensemble": "results/reproduction.py _budget_difference: ensemble against one model",
    "reference.rows[].budget.split": "results/reproduction.py _budget_difference: another evaluation split",
    "reference.rows[].budget.notes": "results/reproduction.py published_budget: the published budget column",
    "reference.tolerance": "results/reproduction.py verdict: how far from published still counts as reproduced",
}


def schema_fields(model=Spec, prefix=""):
    """Dotted paths of every leaf field of the schema: `models[].x` for list items, `space{}.x` for dict values."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        args = typing.get_args(annotation)
        origin = typing.get_origin(annotation)
        if origin is list and args and isinstance(args[0], type) and issubclass(args[0], pydantic.BaseModel):
            yield from schema_fields(args[0], f"{prefix}{name}[].")
        elif origin is dict and len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], pydantic.BaseModel):
            yield from schema_fields(args[1], f"{prefix}{name}{{}}.")
        elif nested := [a for a in (args or (annotation,)) if isinstance(a, type) and issubclass(a, pydantic.BaseModel)]:
            yield from schema_fields(nested[0], f"{prefix}{name}.")
        else:
            yield prefix + name


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fields")
    for name, images in (("shards", 40), ("other", 60)):
        write_jpeg_shards(root / name, "train", images, 1, (24, 20), 4)
        write_jpeg_shards(root / name, "validation", 20, 1, (24, 20), 4)
    import torch

    from models._factory import build_model

    torch.save(build_model("lenet5", 10, 1).state_dict(), root / "lenet5.pt")  # weights for `init:`
    return {"<shards>": str(root / "shards"), "<other shards>": str(root / "other"), "<weights>": str(root / "lenet5.pt")}


def with_field(tree: dict, path: str, value) -> dict:
    tree = copy.deepcopy(tree)
    node, parts = tree, path.split(".")
    for part in parts[:-1]:
        if part.endswith("[]"):
            node = node[part[:-2]][0]
        elif part.endswith("{}"):
            node = next(iter(node[part[:-2]].values()))
        else:
            node = node.setdefault(part, {})
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
    return tree


def digest(splits):
    """What Ray's object store would hold for the workers, as a comparable value."""
    return None if splits is None else tuple((tuple(s.images.shape), int(s.images.long().sum()), s.labels.tolist(),
                                               tuple(s.classes)) for s in (splits.train, splits.val, splits.test))


def received(tree: dict):
    """(the training units' WorkerConfigs, the planned units) of a spec tree, as the driver builds them."""
    spec = parse_spec(tree)
    context = RunContext(spec)
    context.splits_ref = lambda data=None: digest(context.splits(data))
    units = registry.plan(context)
    entries = dict(spec.named_entries())
    entry_of = {u.name: entries[u.model.partition("@seed")[0]] for u in units if u.stage == "train"}
    workers = [worker_config(context, entry_of[u.name], spec.train_config(entry_of[u.name]),
                             spec.data_config(entry_of[u.name]),
                             u.resources.threads, u.name, resources=u.resources)[0]
               for u in units if u.stage == "train"]
    planned = [(u.name, u.stage, json.dumps(u.identity, sort_keys=True, default=str), repr(u.resources), u.parallel,
                tuple(u.needs)) for u in units]
    return workers, planned


def resolved(tree, folders):
    text = json.dumps(tree)
    for marker, path in folders.items():
        text = text.replace(json.dumps(marker), json.dumps(path))
    return json.loads(text)


def test_every_field_is_accounted_for():
    fields = set(schema_fields())
    accounted = set(CHANGES) | set(REFUSED) | set(ELSEWHERE)
    assert not fields - accounted, f"fields with no consumer shown here: {sorted(fields - accounted)}"
    assert not accounted - fields, f"entries for fields the schema no longer has: {sorted(accounted - fields)}"


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_a_changed_field_changes_what_the_workers_or_units_receive(field, folders, monkeypatch, tmp_path):
    monkeypatch.setattr("pipeline.data.huggingface.CACHE_DIR", tmp_path / "cache")
    level, base, value, others = CHANGES[field]
    for path, other in others.items():
        base = with_field(base, path, other)
    default = received(resolved(base, folders))
    changed = received(resolved(with_field(base, field, value), folders))
    workers, units = (0, 1) if level == "worker" else (1, 0)
    assert default[workers] != changed[workers], f"{field}={value!r} changes nothing the {level}s receive"


@pytest.mark.parametrize("field", sorted(REFUSED))
def test_a_field_that_cannot_apply_is_refused_in_one_line(field, folders):
    base, value, others, words = REFUSED[field]
    for path, other in others.items():
        base = with_field(base, path, other)
    received(resolved(base, folders))  # the default applies
    with pytest.raises(PipelineError) as error:
        received(resolved(with_field(base, field, value), folders))
    assert words in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("tree, words", [
    (with_field(MEMORY, "train.transforms", {"crop_pct": 0.9}), "train.transforms applies to streamed data sets"),
    (with_field(STREAM, "data.max_shift", 4), "data.max_shift applies to in-memory data sets"),
    (with_field(with_field(STREAM, "data.in_chans", 1), "train.transforms", {"color_jitter": 0.4}),
     "train.transforms.color_jitter needs 3-channel images"),
    (with_field(with_field(STREAM, "data.in_chans", 1), "train.transforms", {"auto_augment": "rand-m9"}),
     "train.transforms.auto_augment needs 3-channel images"),
    (with_field(MEMORY, "data", {"name": "fashion_mnist", "image_size": 32}), "data.image_size does not apply"),
    (with_field(MEMORY, "data", {"name": "fashion_mnist", "in_chans": 3}), "data.in_chans does not apply"),
    (with_field(with_field(MEMORY, "train.scheduler", "plateau"), "data.val_fraction", 0.0),
     "train.scheduler plateau"),
    (with_field(SWEEP, "sweep.space", {"transforms": {"type": "choice", "values": [{}]}}),
     "cannot search train.transforms"),
    (with_field(MEMORY, "data.path", "/somewhere"), "data.path does not apply to data set 'synthetic'"),
    (with_field(MEMORY, "data.test_split", "validation"), "data.test_split does not apply"),
    (with_field(MEMORY, "data.streaming", True), "data.streaming does not apply"),
    (with_field(STREAM, "data.synthetic_size", 100), "data.synthetic_size does not apply"),
])
def test_options_a_data_path_would_ignore_are_refused_at_validation(tree, words, folders):
    with pytest.raises(PipelineError) as error:
        parse_spec(resolved(tree, folders))
    assert words in str(error.value) and "\n" not in str(error.value)


def test_augment_false_on_a_streamed_set_trains_on_the_evaluation_transform(folders):
    plain = received(resolved(STREAM, folders))[0][0].stream.transforms
    off = received(resolved(with_field(STREAM, "data.augment", False), folders))[0][0].stream.transforms
    assert plain["train"] != plain["eval"] and off["train"] == off["eval"] == plain["eval"]


def test_pipeline_validate_prints_the_refusal_as_one_error_line(tmp_path):
    import yaml
    from conftest import run_cli

    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(with_field(with_field(MEMORY, "train.scheduler", "plateau"),
                                                                  "data.val_fraction", 0.0)))
    result = run_cli("validate", "spec.yaml", cwd=tmp_path)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:"), lines
    assert "train.scheduler plateau" in lines[0] and "data.val_fraction" in lines[0]
