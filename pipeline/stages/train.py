"""The `train` stage: a unit per model, each its own Ray Train run with its own resources and MLflow run."""
from __future__ import annotations

from pipeline.engine.context import RunContext
from pipeline.engine.registry import stage
from pipeline.engine.units import Unit
from pipeline.hashing import digest
from pipeline.tracking.tags import RECIPE_TAG
from pipeline.training.model_checks import check_models
from pipeline.training.recipe import named_entries, training_code, training_identity
from pipeline.training.unit import finished_output, run_training


def recipe_key(spec, entry) -> str:
    """What the runs of one model entry share whatever their seed: the runs a leaderboard row averages."""
    identity = training_identity(spec, entry, spec.train_config(entry).model_copy(update={"seed": 0}), spec.data)
    return digest(identity, 16)


@stage("train", per_model=True, preflight=check_models)
def plan(context: RunContext, planned: list[Unit]) -> list[Unit]:
    """A unit per model entry, or per entry and seed (`train/resnet20@seed1`) when the spec lists seeds."""
    spec = context.spec
    units = []
    for name, entry in named_entries(spec):
        for seed in spec.seeds or [None]:
            train = spec.train_config(entry)
            label = name if seed is None else f"{name}@seed{seed}"
            if seed is not None:
                train = train.model_copy(update={"seed": seed})
            units.append(Unit(
                name=f"train/{label}", stage="train", model=label,
                code=training_code(entry.name, "pipeline/stages/train.py"), resources=spec.resources_for(entry),
                uses_data=True, identity=training_identity(spec, entry, train, spec.data), from_run=finished_output,
                tags={RECIPE_TAG: recipe_key(spec, entry)},
                run=lambda job, entry=entry, train=train: run_training(job, entry, train, job.spec.data)))
    return units
