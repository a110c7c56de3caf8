import pytest

from pipeline.errors import PipelineError
from pipeline.spec.loading import load_spec, parse_spec

BASE = {"name": "t", "data": {"name": "synthetic"}, "models": ["lenet5"]}


def test_defaults_and_model_shorthand():
    spec = parse_spec(dict(BASE))
    assert spec.models[0].name == "lenet5"
    assert spec.train.epochs == 10 and spec.resources.num_workers == 2
    assert spec.stages == ["train", "leaderboard"]
    assert spec.experiment_name == "synthetic"


def test_overrides_from_the_command_line():
    spec = parse_spec(dict(BASE), overrides=["train.epochs=1", "resources.num_workers=1", "models.0.name=resnet20",
                                             "tracking.experiment=my-exp"])
    assert spec.train.epochs == 1 and spec.resources.num_workers == 1
    assert spec.models[0].name == "resnet20" and spec.experiment_name == "my-exp"


def test_per_model_training_overrides():
    spec = parse_spec({**BASE, "models": [{"name": "lenet5", "train": {"lr": 0.1, "epochs": 3}}]})
    merged = spec.train_config(spec.models[0])
    assert merged.lr == 0.1 and merged.epochs == 3 and merged.batch_size == spec.train.batch_size



def test_override_of_one_model_leaves_models_sharing_a_yaml_anchor_alone(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: t\ndata: {name: synthetic}\n"
                    "models:\n  - {name: vgg11_cifar, train: &vgg {lr: 0.01}}\n  - {name: vgg13_cifar, train: *vgg}\n")
    spec = load_spec(path, overrides=["models.0.train.lr=0.5"])
    assert [spec.train_config(m).lr for m in spec.models] == [0.5, 0.01]

def test_override_of_models_by_name_or_pattern():
    tree = {**BASE, "models": ["vit_tiny_patch4_32", {"name": "hvt_tiny_patch4_32", "train": {"lr": 0.1}}, "lenet5"]}
    spec = parse_spec(tree, overrides=["models.*_patch4_32.train.warmup_epochs=0", "models.lenet5.train.lr=0.5",
                                       "models.-1.kwargs={drop_rate: 0.1}"])
    assert [spec.train_config(m).warmup_epochs for m in spec.models] == [0, 0, spec.train.warmup_epochs]
    assert [spec.train_config(m).lr for m in spec.models] == [spec.train.lr, 0.1, 0.5]
    assert spec.models[2].kwargs == {"drop_rate": 0.1}
    with pytest.raises(PipelineError, match=r"override 'models.vgg\*.train.lr=1': 'vgg\*' matches no model of the "
                                            r"spec; its models: vit_tiny_patch4_32, hvt_tiny_patch4_32, lenet5"):
        parse_spec(tree, overrides=["models.vgg*.train.lr=1"])

def test_model_selection_keeps_each_models_recipe():
    tree = {**BASE, "models": ["resnet20", {"name": "vgg11_cifar", "train": {"lr": 0.01}}, "vgg11_bn_cifar", "lenet5"]}
    spec = parse_spec(dict(tree), only=["vgg*"], skip=["*_bn_cifar"])
    assert [m.name for m in spec.models] == ["vgg11_cifar"]
    assert spec.train_config(spec.models[0]).lr == 0.01
    # Overrides address the file's list before selection.
    spec = parse_spec(dict(tree), overrides=["models.3.train.epochs=2"], skip=["resnet20", "vgg*"])
    assert [(m.name, spec.train_config(m).epochs) for m in spec.models] == [("lenet5", 2)]


@pytest.mark.parametrize("only, skip, message", [
    (["resnet2"], [], "--model 'resnet2' matches no model of the spec; its models: resnet20, lenet5"),
    ([], ["vgg*"], "--skip 'vgg*' matches no model"),
    (["lenet5"], ["lenet*"], "leave no model to run"),
])
def test_model_selection_errors(only, skip, message):
    with pytest.raises(PipelineError, match=message.replace("*", r"\*")):
        parse_spec({**BASE, "models": ["resnet20", "lenet5"]}, only=only, skip=skip)

@pytest.mark.parametrize("tree, message", [
    ({**BASE, "trian": {}}, "unknown key 'trian'"),
    ({**BASE, "train": {"epochs": "many"}}, "train.epochs"),
    ({**BASE, "train": {"lr": -1}}, "greater than 0"),
    ({**BASE, "models": ["resnet2O"]}, "did you mean"),
    ({**BASE, "data": {"name": "cifar"}}, "unknown data set 'cifar'"),
    ({**BASE, "models": [{"name": "lenet5", "train": {"epochz": 1}}]}, "unknown key 'epochz'"),
    ({**BASE, "stages": ["train", "deploy"]}, "unknown stage 'deploy'"),
    ({**BASE, "models": []}, "models"),
    ({**BASE, "train": {"optimizer": "adamm"}}, "unknown optimizer 'adamm'"),
    ([1, 2], "must be a YAML mapping"),
])
def test_bad_specs_give_one_line_errors(tree, message):
    with pytest.raises(PipelineError) as error:
        parse_spec(tree)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_model_suggests_close_names():
    with pytest.raises(PipelineError, match="resnet20"):
        parse_spec({**BASE, "models": ["resnet2"]})


def test_override_of_a_field_that_does_not_exist():
    with pytest.raises(PipelineError, match="unknown key"):
        parse_spec(dict(BASE), overrides=["train.nonsense=1"])
    with pytest.raises(PipelineError, match="KEY=VALUE"):
        parse_spec(dict(BASE), overrides=["train.epochs"])


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmodels: [lenet5\ntrain: {epochs: 1}\n")
    with pytest.raises(PipelineError, match=r"malformed YAML at line \d+"):
        load_spec(path)


def test_every_shipped_experiment_validates():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml")):
        load_spec(path)
