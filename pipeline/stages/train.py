"""The `train` stage: a unit per model, each its own Ray Train run with its own resources and MLflow run.

A model entry with `init:` starts from other weights: its key holds their digest, resolved on the driver
before anything is written (`pipeline.training.weights`); `init: unit:STAGE/NAME` (or
`init: clip:unit:clip_pretrain/MODEL`) makes it need that unit, an edge of the DAG like a retrain after its sweep."""
from __future__ import annotations

from pipeline.engine.context import RunContext
from pipeline.engine.registry import stage
from pipeline.engine.units import Unit
from pipeline.errors import PipelineError
from pipeline.hashing import digest
from pipeline.spec.sections import init_source
from pipeline.tracking.tags import ENTRY_TAG, RECIPE_TAG
from pipeline.training.model_checks import check_models
from pipeline.training.recipe import data_shape, training_code, training_identity
from pipeline.training.unit import finished_output, run_training


def recipe_key(spec, entry) -> str:
    """What the runs of one model entry share whatever their seed: the runs a leaderboard row averages."""
    identity = training_identity(spec, entry, spec.train_config(entry).model_copy(update={"seed": 0}),
                                 spec.data_config(entry))
    if entry.init != "scratch":
        identity["init_source"] = entry.init
    return digest(identity, 16)


def source_unit(name: str, entry, planned_names: set[str], earlier: set[str] = frozenset(),
                seed: int | None = None) -> list[str]:
    """The unit an `init: unit:...` or `init: clip:unit:...` entry needs (none for other sources), checked
    against the spec's units: the train units listed before it, the units of `earlier` stages. With seeds, the
    seed's own unit of the source (`train/pretrain` -> `train/pretrain@seed1`), so each seed of a fine-tuned
    entry starts from the same seed's source; a source named with its seed serves every seed."""
    kind, value = init_source(entry.init)
    if kind == "unit" and seed is not None and f"{value}@seed{seed}" in planned_names:
        value = f"{value}@seed{seed}"
    if kind == "clip" and value.startswith("unit:"):
        unit = value[len("unit:"):]
        if unit not in earlier:
            pretraining = sorted(u for u in earlier if u.startswith("clip_pretrain/"))
            raise PipelineError(f"models[{entry.name}].init {entry.init}: no unit {unit} in this spec (CLIP "
                                f"pretraining units: {', '.join(pretraining) or 'none'}): list stage clip_pretrain "
                                f"before train, with clip.model {unit.split('/', 1)[1]}")
        return [unit]
    if kind != "unit":
        return []
    if value == f"train/{name}" or value.startswith(f"train/{name}@seed"):
        raise PipelineError(f"models[{entry.id or entry.name}].init {entry.init}: a unit cannot start from itself: name another "
                            "unit of the spec")
    if value.startswith("train/") and value not in planned_names:
        raise PipelineError(f"models[{entry.id or entry.name}].init {entry.init}: no model listed before it trains in unit "
                            f"{value} (a source comes first in models:); units before it: "
                            f"{', '.join(sorted(planned_names)) or 'none'}")
    return [value]


@stage("train", after="clip_pretrain", per_model=True, preflight=check_models)
def plan(context: RunContext, planned: list[Unit]) -> list[Unit]:
    """A unit per model entry, or per entry and seed (`train/resnet20@seed1`) when the spec lists seeds."""
    spec = context.spec
    entries = spec.named_entries()
    units, names, earlier = [], set(), {u.name for u in planned}
    for name, entry in entries:
        data = spec.data_config(entry)
        kind = init_source(entry.init)[0]
        needs_of = {seed: source_unit(name, entry, names, earlier, seed)  # a unit of an entry listed before it:
                    for seed in spec.seeds or [None]}                     # no cycles
        names.update(f"train/{name}" if seed is None else f"train/{name}@seed{seed}" for seed in spec.seeds or [None])
        for seed in spec.seeds or [None]:
            train = spec.train_config(entry)
            label = name if seed is None else f"{name}@seed{seed}"
            if seed is not None:
                train = train.model_copy(update={"seed": seed})
            needs = needs_of[seed]
            source = needs[0] if kind == "unit" else None
            def identify(outputs, entry=entry, train=train, data=data, source=source):
                """The weights' digest is part of the key, known once they are resolved (before any run)."""
                from pipeline.training.weights import resolve_init

                init = resolve_init(context, entry, data_shape(context, data), outputs, source)
                return training_identity(spec, entry, train, data, init)
            units.append(Unit(
                name=f"train/{label}", stage="train", model=label, needs=list(needs),
                identify=identify if entry.init != "scratch" else None,
                code=training_code(entry.name, "pipeline/stages/train.py"), resources=spec.resources_for(entry),
                uses_data=True, identity=training_identity(spec, entry, train, data), from_run=finished_output,
                tags={RECIPE_TAG: recipe_key(spec, entry), **({ENTRY_TAG: entry.id} if entry.id else {})},
                run=lambda job, entry=entry, train=train, data=data, source=source:
                    run_training(job, entry, train, data, source=source)))
    return units
