"""Planning a workflow (no Ray, no data): units per stage, their DAG and their content keys."""
import shutil

import pytest
from conftest import run_cli

from pipeline.data.fingerprint import data_fingerprint
from pipeline.engine import keys, registry
from pipeline.engine.context import RunContext
from pipeline.spec.loading import parse_spec


def spec_tree(**extra) -> dict:
    return {"name": "plan", "data": {"name": "synthetic"}, "models": ["lenet5", "resnet20"],
            "train": {"epochs": 1}, "stages": ["train", "leaderboard"], **extra}


def plan(tree: dict) -> dict:
    units = registry.plan(RunContext(parse_spec(tree)))
    for unit in units:
        if unit.identify is None:
            unit.resolve_key({})
    return {u.name: u for u in units}


def test_a_stage_fans_out_into_units_that_form_a_dag():
    units = plan(spec_tree(stages=["leaderboard", "retrain", "ensemble", "sweep", "train"],
                           sweep={"space": {"lr": {"type": "choice", "values": [0.01, 0.1]}}}))
    # Each stage after those it declares (retrain after sweep, ensemble after train and retrain, the leaderboard
    # after all), otherwise in the spec's order.
    assert list(units) == ["sweep/lenet5", "sweep/resnet20", "retrain/lenet5", "retrain/resnet20", "train/lenet5",
                           "train/resnet20", "ensemble", "leaderboard"]
    assert units["retrain/lenet5"].needs == ["sweep/lenet5"]  # its own sweep, not every sweep
    assert units["retrain/lenet5"].key is None  # known once the sweep's best config is
    assert set(units["ensemble"].after) == {"train/lenet5", "train/resnet20", "retrain/lenet5", "retrain/resnet20"}
    assert set(units["leaderboard"].after) == set(units) - {"leaderboard"}
    assert units["leaderboard"].resources is None and units["train/lenet5"].resources.num_workers == 2


def test_keys_change_with_what_decides_a_result_and_only_there():
    base = plan(spec_tree())
    assert {n: u.key for n, u in plan(spec_tree()).items()} == {n: u.key for n, u in base.items()}  # stable
    changed = plan(spec_tree(models=["lenet5", {"name": "resnet20", "train": {"lr": 0.01}}]))
    assert changed["train/lenet5"].key == base["train/lenet5"].key
    assert changed["train/resnet20"].key != base["train/resnet20"].key
    for change in ({"resources": {"num_workers": 4}}, {"data": {"name": "synthetic", "seed": 1}},
                   {"train": {"epochs": 1, "seed": 3}}):
        other = plan(spec_tree(**change))
        assert other["train/lenet5"].key != base["train/lenet5"].key, change
    # More CPUs per worker change nothing a result depends on.
    same = plan(spec_tree(resources={"num_workers": 2, "cpus_per_worker": 2}))
    assert same["train/lenet5"].key == base["train/lenet5"].key


@pytest.fixture
def project_copy(tmp_path, monkeypatch):
    """A copy of the project's source that unit keys are computed from, to edit without touching the checkout."""
    for folder in ("pipeline", "models"):
        shutil.copytree(keys.ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(keys, "ROOT", tmp_path)
    for cached in (keys._files, keys.code_digest, keys.model_code):
        cached.cache_clear()
    yield tmp_path
    for cached in (keys._files, keys.code_digest, keys.model_code):
        cached.cache_clear()


def test_a_unit_key_depends_on_the_code_its_result_depends_on_and_no_other(project_copy):
    tree = spec_tree(models=["lenet5", "resnet20", "vit_tiny_patch4_32"], stages=["train", "tables", "leaderboard"])

    def keys_after(edit: str | None) -> dict[str, str]:
        if edit:  # the file's content changes; clear what was hashed
            with open(project_copy / edit, "a") as handle:
                handle.write("\n# an edit\n")
        for cached in (keys._files, keys.code_digest, keys.model_code):
            cached.cache_clear()
        return {name: unit.key for name, unit in plan(tree).items() if unit.cacheable}

    before = keys_after(None)
    for unrelated in ("pipeline/cli/results.py", "pipeline/results/leaderboard.py", "pipeline/benchmarks/train.py",
                      "pipeline/engine/scheduler.py"):
        assert keys_after(unrelated) == before, unrelated
    catalogue = keys_after("models/catalogue.py")  # the tables read it; no network is built from it
    assert {n for n in before if catalogue[n] != before[n]} == {"tables"}
    before = catalogue
    loop = keys_after("pipeline/training/loop.py")  # every trained network, not the tables
    assert {n for n in before if loop[n] != before[n]} == {"train/lenet5", "train/resnet20", "train/vit_tiny_patch4_32"}
    resnet = keys_after("models/resnet.py")  # the ResNet's units only (the tables recompute every model)
    assert {n for n in loop if resnet[n] != loop[n]} == {"train/resnet20", "tables"}
    shared = keys_after("models/_common.py")  # what every zoo model is built on
    assert {n for n in resnet if shared[n] != resnet[n]} == {"train/lenet5", "train/resnet20",
                                                             "train/vit_tiny_patch4_32", "tables"}
    keys.CACHE_EPOCH += 1  # the documented way to rebuild everything
    try:
        everything = keys_after(None)
        assert all(everything[n] != shared[n] for n in shared)
    finally:
        keys.CACHE_EPOCH -= 1


def test_seeds_make_a_unit_per_model_and_seed_each_cached_on_its_own():
    tree = spec_tree(models=["lenet5", {"name": "lenet5", "train": {"lr": 0.01}}], seeds=[0, 1, 2])
    units = plan(tree)
    trained = [n for n in units if n.startswith("train/")]
    assert trained == ["train/lenet5@seed0", "train/lenet5@seed1", "train/lenet5@seed2",
                       "train/lenet5#1@seed0", "train/lenet5#1@seed1", "train/lenet5#1@seed2"]
    assert len({units[n].key for n in trained}) == 6  # another seed or another recipe: another unit
    assert units["train/lenet5@seed1"].identity["train"]["seed"] == 1
    assert {n: u.key for n, u in plan(tree).items()} == {n: u.key for n, u in units.items()}  # a re-run is cached
    fewer = plan({**tree, "seeds": [0, 1]})  # the seeds a spec keeps keep their keys
    assert fewer["train/lenet5@seed1"].key == units["train/lenet5@seed1"].key
    for bad, message in (({"seeds": [1, 1]}, "repeats a seed"),
                         ({"seeds": [0], "models": [{"name": "lenet5", "train": {"seed": 3}}]}, "both set the seed"),
                         ({"seeds": [0], "stages": ["sweep"], "sweep": {"space": {"lr": {"type": "choice",
                                                                                          "values": [0.1]}}}},
                          "selects one config per model")):
        with pytest.raises(Exception, match=message):
            parse_spec({**tree, **bad})


def test_two_entries_of_one_model_are_two_units_and_identical_ones_one():
    units = plan(spec_tree(models=[{"name": "lenet5", "train": {"lr": 0.003}}, {"name": "lenet5", "train": {"lr": 0.03}},
                                   {"name": "lenet5", "train": {"lr": 0.003}}]))
    assert [n for n in units if n.startswith("train/")] == ["train/lenet5", "train/lenet5#1"]
    assert units["train/lenet5"].key != units["train/lenet5#1"].key


def test_per_model_resources_override_the_spec_and_are_validated():
    units = plan(spec_tree(models=["lenet5", {"name": "resnet20", "resources": {"num_workers": 4, "gpus_per_worker": 1}}],
                           max_concurrent_units=3))
    assert units["train/lenet5"].resources.num_workers == 2
    assert units["train/resnet20"].resources.num_workers == 4 and units["train/resnet20"].resources.gpus_per_worker == 1
    with pytest.raises(Exception, match="models\\[resnet20\\].resources: .*num_workers"):
        parse_spec(spec_tree(models=[{"name": "resnet20", "resources": {"num_workers": 0}}]))


def test_the_data_fingerprint_is_cheap_and_names_the_data(tmp_path):
    idx = data_fingerprint(parse_spec(spec_tree(data={"name": "fashion_mnist"})).data)
    assert idx["files"]["train"][0].startswith("c59f468a")  # the checksum the IDX loader verifies
    (tmp_path / "train-0.parquet").write_bytes(b"x" * 10)
    local = data_fingerprint(parse_spec(spec_tree(data={"name": "huggingface", "path": str(tmp_path)})).data)
    assert local["files"] == [("train-0.parquet", 10)]


def test_status_plans_without_ray_or_data_and_writes_nothing(workdir):
    (workdir / "spec.yaml").write_text("name: s\ndata: {name: fashion_mnist}\nmodels: [lenet5]\n")
    result = run_cli("status", "spec.yaml", cwd=workdir, env={"FASHION_MNIST_DIR": str(workdir)})  # no data here
    assert result.returncode == 0, result.stderr
    assert "train/lenet5" in result.stdout and "pending" in result.stdout and "2 x (1 CPU)" in result.stdout
    assert not (workdir / "mlflow.db").exists()


class Planted:
    """Stands for a pickle planted in shared checkpoint storage: unpickling it would call a function."""

    def __reduce__(self):
        return (print, ("this ran while loading a checkpoint",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    import torch
    from ray.train import Checkpoint

    from pipeline.errors import PipelineError
    from pipeline.training.harness import STATE_FILE, read_state

    torch.save({"model": {}, "epoch": 1, "history": [{"epoch": 1.0}]}, tmp_path / STATE_FILE)
    assert read_state(Checkpoint.from_directory(str(tmp_path)))["epoch"] == 1  # tensors and plain containers load
    torch.save({"model": Planted()}, tmp_path / STATE_FILE)
    with pytest.raises(PipelineError, match="holds more than tensors and plain containers and is not loaded"):
        read_state(Checkpoint.from_directory(str(tmp_path)))
    assert "this ran" not in capsys.readouterr().out


def test_the_interrupt_line_says_how_to_resume_and_that_rerun_would_start_over():
    import signal

    from pipeline.engine.signals import Interrupted, interrupt_line

    line = interrupt_line(Interrupted(signal.SIGINT), ["train/lenet5", "train/resnet20"])
    assert "interrupted (SIGINT):[/] stopped unit(s) train/lenet5, train/resnet20" in line
    assert "Run the same command again to resume." in line
    # A unit that --rerun named would train again from the start: the line says to drop --rerun to resume it.
    line = interrupt_line(Interrupted(signal.SIGTERM), ["train/lenet5", "train/resnet20"], ["train/lenet5"])
    assert "interrupted (SIGTERM)" in line and "same command again" not in line
    assert "without --rerun to resume train/lenet5 (with it, they train again from the start)" in line
